"""The fan-out on a real 3-host SSH test cluster (network namespaces): every job exactly
once whatever the slot limits, GPU binding, failures, host loss and controller restarts.

Jobs are tests/integration/fanout_job.py: one JSON record per seed of the job's range, so
"exactly once" is checked by counting seeds across all pulled outputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, HostSpec

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("fanout_job.py")


def write_jobs(path: Path, n_jobs: int, per_job: int, *extra: str) -> int:
    jobs = []
    for i in range(n_jobs):
        start = i * per_job
        jobs.append(
            {
                "id": f"j{i:03d}",
                "argv": [
                    "{worker_bin}/python",
                    str(JOB),
                    "--out",
                    "{out}/r.json",
                    "--start",
                    "{start}",
                    "--stop",
                    "{stop}",
                    *extra,
                ],
                "range": [start, start + per_job],
                "outputs": [{"path": "{out}/r.json", "kind": "json_list", "records_from_range": True}],
                "timeout": 120,
            }
        )
    path.write_text(json.dumps({"jobs": jobs}))
    return n_jobs * per_job


def run_jobs(c: Cluster, jobs: Path, run_dir: Path, **extra: Any) -> subprocess.CompletedProcess[str]:
    ev = {
        "jobs_file": str(jobs),
        "run_dir": str(run_dir),
        "fanout_settings": {"progress_interval": 2, "retry_backoff_seconds": 0.5},
        **extra,
    }
    return c.playbook("playbooks/run_jobs.yml", extra_vars=ev, timeout=400)


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "fanout_manifest.json").read_text())


def seeds_pulled(run_dir: Path) -> Counter[int]:
    seen: Counter[int] = Counter()
    for out in manifest(run_dir)["outputs"]:
        for rec in json.loads((run_dir / out["path"]).read_text()):
            seen[rec["seed"]] += 1
    return seen


def journal(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def assert_exactly_once(run_dir: Path, total: int) -> None:
    seen = seeds_pulled(run_dir)
    assert sorted(seen) == list(range(total)), "seeds missing or extra"
    assert max(seen.values()) == 1, f"seeds pulled twice: {[s for s, n in seen.items() if n > 1][:10]}"
    done = Counter(r["job"] for r in journal(run_dir) if r["ev"] == "done")
    assert max(done.values()) == 1, "a job was recorded done twice"


@pytest.fixture(scope="module")
def limits_cluster() -> Any:
    """gpu_count 3 everywhere; limits below (2), equal (3) and above (5) it (i11)."""
    from tests.cluster import missing_requirements

    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    hosts = [
        HostSpec("below", gpu_type="cuda", gpu_count=3, max_concurrent_jobs=2),
        HostSpec(
            "equal",
            gpu_type="rocm",
            gpu_count=3,
            max_concurrent_jobs=3,
            groups=("rocm",),
            vars={"start_stagger_seconds": 0.2},
        ),
        HostSpec("above", gpu_type="cuda", gpu_count=3, max_concurrent_jobs=5),
    ]
    with Cluster(hosts) as c:
        yield c


@pytest.fixture(scope="module")
def limits_run(limits_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    tmp = tmp_path_factory.mktemp("limits")
    total = write_jobs(tmp / "jobs.json", 24, 5, "--sleep", "0.1")
    proc = run_jobs(limits_cluster, tmp / "jobs.json", tmp / "run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return tmp / "run", total


def test_i11_every_job_once_with_limits_below_equal_above_gpu_count(limits_run: tuple[Path, int]) -> None:
    run_dir, total = limits_run
    m = manifest(run_dir)
    assert m["complete"] and m["jobs"] == {"expected": 24, "completed": 24, "failed": 0, "split": 0}
    assert {h: v["slots"] for h, v in m["hosts"].items()} == {"below": 2, "equal": 3, "above": 3}
    assert_exactly_once(run_dir, total)
    # Work reached every host, and never a slot beyond the host's slot count.
    per_host = Counter(o["host"] for o in m["outputs"])
    assert set(per_host) == {"below", "equal", "above"}
    for out in m["outputs"]:
        assert out["slot"] < m["hosts"][out["host"]]["slots"]


def test_i1_each_slot_binds_one_gpu_and_the_worker_sees_it(limits_run: tuple[Path, int]) -> None:
    run_dir, _ = limits_run
    m = manifest(run_dir)
    slots_seen: dict[str, set[int]] = {}
    for out in m["outputs"]:
        summary = next(r for r in journal(run_dir) if r["ev"] == "done" and r["job"] == out["job"])["result"][
            "summary"
        ]
        assert summary["host"] == out["host"]  # the worker ran on the host the manifest names
        assert summary["visible_devices"] == str(out["slot"])  # slot i binds GPU i
        assert summary["rocr_visible_devices"] is None  # never a second mask (i1)
        if out["host"] == "equal":  # ROCm host: HIP mask with the same index
            assert summary["hip_visible_devices"] == str(out["slot"])
        slots_seen.setdefault(out["host"], set()).add(out["slot"])
    assert slots_seen["above"] <= {0, 1, 2}


@pytest.fixture
def cluster2(make_cluster: Any) -> Cluster:
    return make_cluster(
        [
            HostSpec("fast", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("slow", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ]
    )


def test_i18_free_slots_pull_work_so_a_fast_host_does_more(cluster2: Cluster, tmp_path: Path) -> None:
    # 2 s per job on "fast", 10 s on "slow": slots that free up sooner take more jobs.
    total = write_jobs(
        tmp_path / "jobs.json", 16, 4, "--sleep", "0.5", "--slow-host", "slow", "--slow-factor", "5"
    )
    proc = run_jobs(cluster2, tmp_path / "jobs.json", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = manifest(tmp_path / "run")
    assert_exactly_once(tmp_path / "run", total)
    assert m["hosts"]["fast"]["jobs_done"] > 2 * m["hosts"]["slow"]["jobs_done"], m["hosts"]


def test_i10_job_killed_for_memory_is_split_and_completes(cluster2: Cluster, tmp_path: Path) -> None:
    total = write_jobs(tmp_path / "jobs.json", 4, 8, "--oom-above", "3")
    proc = run_jobs(cluster2, tmp_path / "jobs.json", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = manifest(tmp_path / "run")
    assert m["complete"]
    assert m["jobs"]["split"] == 4 + 8  # 8 -> 4 + 4 -> 2 + 2 each
    assert any("split into" in f["action"] for f in m["failures"])
    assert_exactly_once(tmp_path / "run", total)


def test_i4_truncated_output_is_not_counted(cluster2: Cluster, tmp_path: Path) -> None:
    total = write_jobs(tmp_path / "jobs.json", 3, 50, "--truncate-once", str(tmp_path / "marker"))
    proc = run_jobs(cluster2, tmp_path / "jobs.json", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = manifest(tmp_path / "run")
    assert m["complete"]
    bad = [f for f in m["failures"] if "does not parse" in f["reason"]]
    assert len(bad) == 1 and bad[0]["action"] == "retry 2", m["failures"]
    assert_exactly_once(tmp_path / "run", total)


def _wait_done(run_dir: Path, count: int, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended early"
        path = run_dir / "journal.jsonl"
        if path.exists() and sum(1 for r in journal(run_dir) if r["ev"] == "done") >= count:
            return
        time.sleep(0.3)
    raise AssertionError("jobs did not finish in time")


def _popen(c: Cluster, jobs: Path, run_dir: Path, **settings: Any) -> subprocess.Popen[str]:
    knobs = {"host_retry_seconds": 2, **settings}
    ev = {"jobs_file": str(jobs), "run_dir": str(run_dir), "fanout_settings": knobs}
    return c.playbook_popen("playbooks/run_jobs.yml", run_dir.with_suffix(".log"), ev)


def _finish(proc: subprocess.Popen[str], run_dir: Path, timeout: float = 400) -> str:
    """Wait for the run to end; its output."""
    proc.wait(timeout)
    return run_dir.with_suffix(".log").read_text()


@pytest.mark.parametrize("fault", ["sshd_killed", "link_cut"])
def test_host_lost_mid_run_completes_on_the_others(make_cluster: Any, tmp_path: Path, fault: str) -> None:
    c = make_cluster(
        [
            HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("b", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("victim", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ]
    )
    total = write_jobs(tmp_path / "jobs.json", 18, 4, "--sleep", "0.3")
    proc = _popen(c, tmp_path / "jobs.json", tmp_path / "run")
    try:
        _wait_done(tmp_path / "run", 2, proc)
        if fault == "sshd_killed":
            c.kill_sshd("victim")  # sshd and every session and worker on the host
        else:
            c.link_down("victim")  # packets dropped: connections hang until SSH gives up
        out = _finish(proc, tmp_path / "run")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    m = manifest(tmp_path / "run")
    assert m["complete"]
    assert m["hosts"]["victim"]["last_error"], "the host loss was not noticed"
    assert any(r["ev"] == "requeue" for r in journal(tmp_path / "run"))
    assert_exactly_once(tmp_path / "run", total)


def test_controller_interrupted_resumes_without_redoing_finished_jobs(
    cluster2: Cluster, tmp_path: Path
) -> None:
    total = write_jobs(tmp_path / "jobs.json", 16, 4, "--sleep", "0.3")
    run_dir = tmp_path / "run"
    proc = _popen(cluster2, tmp_path / "jobs.json", run_dir)
    try:
        _wait_done(run_dir, 4, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # a controller crash: no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = {r["job"] for r in journal(run_dir) if r["ev"] == "done"}
    assert 4 <= len(done_before) < 16
    proc2 = run_jobs(cluster2, tmp_path / "jobs.json", run_dir)
    assert proc2.returncode == 0, proc2.stdout[-4000:]
    assert "resuming run" in proc2.stdout
    starts = Counter(r["job"] for r in journal(run_dir) if r["ev"] == "start")
    for job in done_before:  # finished jobs were never started again
        assert starts[job] == 1, job
    assert_exactly_once(run_dir, total)
    # A changed input makes resume refuse (i22).
    write_jobs(tmp_path / "jobs.json", 16, 5)
    proc3 = run_jobs(cluster2, tmp_path / "jobs.json", run_dir)
    assert proc3.returncode != 0 and "started with other settings: input jobs_file changed" in proc3.stdout


def _wait_journal(run_dir: Path, proc: subprocess.Popen[str], what: Any, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended early"
        if (run_dir / "journal.jsonl").exists() and any(what(r) for r in journal(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError("the journal never showed it")


def test_i38_cut_link_of_a_two_slot_host_counts_once_and_the_host_rejoins(
    make_cluster: Any, tmp_path: Path
) -> None:
    c = make_cluster(
        [
            HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("victim", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ]
    )
    # 1 s per job on the victim, 2 s on "a": work is left when the victim is back.
    total = write_jobs(
        tmp_path / "jobs.json", 60, 4, "--sleep", "0.25", "--slow-host", "a", "--slow-factor", "2"
    )
    run_dir = tmp_path / "run"
    proc = _popen(
        c,
        tmp_path / "jobs.json",
        run_dir,
        host_retry_seconds=12,  # the first probe comes once the link is back
        # Counted per slot, one outage of this 2-slot host was 2 losses: left out for good.
        max_host_failures=2,
        target_dispatch_seconds=2,  # small batches
        max_jobs_per_dispatch=2,
        retry_backoff_seconds=0.5,
        progress_interval=2,
    )

    def lost_slots() -> set[int]:
        """Victim slots whose dispatch came back unreachable (its jobs requeued)."""
        recs, slot_of, lost = journal(run_dir), {}, set()
        for r in recs:
            if r["ev"] == "start" and r["host"] == "victim":
                slot_of[r["job"]] = r["slot"]
            elif r["ev"] == "requeue" and "victim" in r["reason"] and r["job"] in slot_of:
                lost.add(slot_of[r["job"]])
        return lost

    try:
        _wait_journal(run_dir, proc, lambda r: r["ev"] == "done" and r["host"] == "victim")
        c.link_down("victim")  # both of its slots are running jobs
        # Restored once both slots' dispatches were lost (SSH keepalives: 15-25 s): each
        # slot's loss was counted by the old scheduler, and it left the host out for good.
        deadline = time.time() + 90
        while lost_slots() != {0, 1}:
            assert time.time() < deadline and proc.poll() is None, lost_slots()
            time.sleep(0.2)
        c.link_up("victim")
        restored = time.time()
        out = _finish(proc, run_dir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    m = manifest(run_dir)
    recs = journal(run_dir)
    started_after = {
        r["job"] for r in recs if r["ev"] == "start" and r["host"] == "victim" and r["t"] > restored
    }
    done_after = [
        r for r in recs if r["ev"] == "done" and r["host"] == "victim" and r["job"] in started_after
    ]
    assert len(done_after) >= 2, ("the host did no work after its link came back", m["hosts"]["victim"])
    victim = m["hosts"]["victim"]
    assert (victim["outages"], victim["rejoined"], victim["state"]) == (1, True, "up"), victim
    assert victim["down_s"] > 1
    assert m["complete"] and m["stopped"] is None
    assert_exactly_once(run_dir, total)


def test_stock_sshd_24_slots_exactly_once(make_cluster: Any, tmp_path: Path) -> None:
    """A 24-GPU rig on an sshd left at OpenSSH's defaults (MaxSessions 10, MaxStartups
    10:30:100; the other test hosts raise both, which would hide this): every slot works,
    every job runs exactly once, and the host is never lost. One SSH session per host
    (issue 14); a session per slot would pass MaxSessions here."""
    c = make_cluster(
        [
            HostSpec(
                "rig24",
                gpu_type="rocm",
                gpu_count=24,
                max_concurrent_jobs=24,
                groups=("rocm",),
                stock_sshd=True,
            )
        ]
    )
    assert "MaxSessions" not in (c.hosts["rig24"].home / "sshd_config").read_text()
    total = write_jobs(tmp_path / "jobs.json", 48, 5, "--sleep", "0.1")  # ~0.5 s each
    proc = run_jobs(c, tmp_path / "jobs.json", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = manifest(tmp_path / "run")
    assert m["complete"] and m["jobs"]["completed"] == 48
    assert_exactly_once(tmp_path / "run", total)
    assert {o["slot"] for o in m["outputs"]} == set(range(24)), "every slot ran jobs"
    rig = m["hosts"]["rig24"]
    assert (rig["slots"], rig["outages"], rig["last_error"]) == (24, 0, ""), rig
    assert m["timings"]["agents_started"] == 1, "one agent, over one SSH session, ran all 24 slots"
