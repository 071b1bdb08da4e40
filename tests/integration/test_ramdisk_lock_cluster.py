"""The ramdisk in-use lock on the SSH test cluster (real hosts, real /dev/shm, real
transfers): a run's lease makes a standalone preload and a clear refuse, naming the run,
with the step's files untouched; two preloads of one step at once end with one
consistent manifest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import Cluster, HostSpec

pytestmark = pytest.mark.cluster


def step_files(c: Cluster, host: str, step: str) -> dict[str, tuple[int, bytes]]:
    d = c.hosts[host].shm / "prng" / step
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in d.iterdir()} if d.is_dir() else {}


def fatal_messages(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """{host: msg} of the failed tasks (json result format)."""
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("fatal: [") and "=> {" in line:
            out[line[len("fatal: [") : line.index("]")]] = json.loads(line.split("=> ", 1)[1])["msg"]
    return out


def write_sources(folder: Path, seed: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rnd = __import__("random").Random(seed)
    files = {
        "survivors.npz": rnd.randbytes(5_000_000),
        "train_history.json": json.dumps([seed] * 5000).encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {n: folder / n for n in files}


def preload_vars(step: str, srcs: dict[str, Path], **extra: object) -> dict[str, object]:
    return {"ramdisk_step": step, "ramdisk_files": [str(p) for p in srcs.values()], **extra}


JSON = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def test_standalone_preload_and_clear_refuse_while_a_run_holds_the_step(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = make_cluster(2, shm_mb=64)
    step3 = write_sources(tmp_path / "step3", 3)
    # Run R's preload (orchestrated, as the step playbooks do) takes its lease on both hosts.
    res = c.playbook(
        "playbooks/ramdisk_preload.yml",
        extra_vars=preload_vars(
            "step3", step3, ramdisk_run_id="20240610-140211-ab12cd", ramdisk_orchestrated=True
        ),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    before = {h: step_files(c, h, "step3") for h in c.hosts}
    assert all(".lease-20240610-140211-ab12cd.json" in files for files in before.values())

    # While R runs: a standalone preload of Step 1 (which clears the other steps first) refuses
    # on every host and names R; Step 3's files are untouched, Step 1 is not loaded.
    step1 = write_sources(tmp_path / "step1", 1)
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars("step1", step1), **JSON)
    assert res.returncode != 0
    msgs = fatal_messages(res)
    assert sorted(msgs) == sorted(c.hosts), res.stdout[-3000:]
    for msg in msgs.values():
        assert msg.startswith("refusing to preload step1 (standalone: it removes the other steps): ")
        assert "step step3 is in use by run 20240610-140211-ab12cd" in msg and "nothing removed" in msg
    assert {h: step_files(c, h, "step3") for h in c.hosts} == before
    assert all(step_files(c, h, "step1") == {} for h in c.hosts)

    # A clear refuses the same way, and says so in its last line.
    res = c.playbook("playbooks/ramdisk_clear.yml", **JSON)
    assert res.returncode != 0
    assert all("in use by run 20240610-140211-ab12cd" in m for m in fatal_messages(res).values())
    assert {h: step_files(c, h, "step3") for h in c.hosts} == before

    # R ends: its end-of-step policy gives the lease back and clears the step.
    res = c.ansible(
        "all",
        "-m",
        "prng.cluster.ramdisk",
        "-a",
        "state=release step=step3 run_id=20240610-140211-ab12cd clear_unused=true",
    )
    assert res.returncode == 0, res.stdout[-2000:]
    assert all(step_files(c, h, "step3") == {} for h in c.hosts)
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars("step1", step1))
    assert res.returncode == 0, res.stdout[-3000:]


def test_a_crashed_runs_lease_ends_by_itself(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = make_cluster(1, shm_mb=64)
    step3 = write_sources(tmp_path / "step3", 3)
    res = c.playbook(
        "playbooks/ramdisk_preload.yml",
        extra_vars=preload_vars("step3", step3, ramdisk_run_id="crashed", ramdisk_lease_seconds=20),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert c.playbook("playbooks/ramdisk_clear.yml").returncode != 0  # held
    lease = c.hosts["node1"].shm / "prng" / "step3" / ".lease-crashed.json"
    time.sleep(
        max(0.0, lease.stat().st_mtime + 20.5 - time.time())
    )  # nobody renews it: the controller is gone
    res = c.playbook("playbooks/ramdisk_clear.yml")
    assert res.returncode == 0 and step_files(c, "node1", "step3") == {}, res.stdout[-2000:]


def test_two_concurrent_preloads_of_one_step_end_with_one_consistent_manifest(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = make_cluster(1, shm_mb=64)
    c.throttle("node1", 16)  # ~2.5 s per load: the second one starts while the first copies
    a = write_sources(tmp_path / "a", 10)
    b = write_sources(tmp_path / "b", 20)
    step = c.hosts["node1"].shm / "prng" / "step3"
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(name: str, srcs: dict[str, Path]) -> None:
        results[name] = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars("step3", srcs))

    first = threading.Thread(target=run, args=("a", a))
    first.start()
    deadline = time.monotonic() + 60
    while not (step.is_dir() and any(p.stat().st_size > 0 for p in step.glob(".incoming-*"))):
        assert time.monotonic() < deadline, "the first preload never started copying"
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("b", b))
    second.start()
    first.join()
    second.join()
    for name, res in results.items():
        assert res.returncode == 0, (name, res.stdout[-3000:])
    c.unthrottle("node1")

    names = sorted(p.name for p in step.iterdir())
    assert names == [".manifest.json", "survivors.npz", "train_history.json"]  # no half copies, no claim
    manifest = json.loads((step / ".manifest.json").read_text())
    on_host = {
        n: hashlib.sha256((step / n).read_bytes()).hexdigest()
        for n in ("survivors.npz", "train_history.json")
    }
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == on_host
    # one whole load, the later one's: never a mix of the two
    digests = {
        k: {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in v.items()}
        for k, v in (("a", a), ("b", b))
    }
    assert on_host == digests["b"]
    assert os.path.getsize(step / "survivors.npz") == 5_000_000


def test_a_running_step3_holds_its_inputs_a_standalone_preload_refuses_and_the_run_completes(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Step 3 on 2 hosts, slow enough to be caught running (NumPy, job starts spaced), with a
    # lease of 8 s: only the agent's renewal keeps it alive while the run goes on.
    slow = {"worker_backend": "numpy", "start_stagger_seconds": 0.5}
    c = make_cluster([HostSpec(f"node{i}", max_concurrent_jobs=2, vars=slow) for i in (1, 2)])
    run_dir = tmp_path / "step3"
    log = tmp_path / "step3.log"
    extra = {"step3_run_dir": str(run_dir), "step3_chunk_size": 40, "ramdisk_lease_seconds": 8}
    proc = c.playbook_popen("playbooks/step3.yml", log, extra)
    try:
        step = {h: c.hosts[h].shm / "prng" / "step3" for h in c.hosts}
        deadline = time.time() + 300
        while not all(list(d.glob(".lease-score-*.json")) for d in step.values()):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-4000:]
            time.sleep(0.1)
        leases = {h: next(d.glob(".lease-score-*.json")) for h, d in step.items()}
        run_id = leases["node1"].name[len(".lease-") : -len(".json")]
        taken = max(p.stat().st_mtime for p in leases.values())
        # past the lease's first life: still held only because the running agents renew it
        while time.time() < taken + 10:
            assert proc.poll() is None, "Step 3 ended too early for the test:\n" + log.read_text()[-4000:]
            time.sleep(0.2)
        inputs = {
            h: {n: v for n, v in step_files(c, h, "step3").items() if not n.startswith(".lease")}
            for h in c.hosts
        }
        res = c.playbook(
            "playbooks/ramdisk_preload.yml",
            extra_vars=preload_vars("step1", write_sources(tmp_path / "step1", 1)),
            **JSON,
        )
        assert proc.poll() is None, "Step 3 ended before the standalone preload was refused"
        assert res.returncode != 0
        msgs = fatal_messages(res)
        assert sorted(msgs) == sorted(c.hosts), res.stdout[-3000:]
        assert all(
            f"step step3 is in use by run {run_id}" in m and "nothing removed" in m for m in msgs.values()
        )
        proc.wait(400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    # the run's inputs were never touched, the run completed, and its end gave the lease back
    after = {
        h: {n: v for n, v in step_files(c, h, "step3").items() if not n.startswith(".lease")} for h in c.hosts
    }
    assert after == inputs
    assert all(not list(d.glob(".lease-*")) for d in step.values())
    scored = json.loads((run_dir / "survivors_with_scores.json").read_text())
    assert len(scored) == 2000 and len({r["seed"] for r in scored}) == 2000
    # nothing holds Step 3 now: the standalone preload goes ahead (and removes it)
    res = c.playbook(
        "playbooks/ramdisk_preload.yml", extra_vars=preload_vars("step1", write_sources(tmp_path / "s1", 1))
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert all(step_files(c, h, "step3") == {} for h in c.hosts)


def test_a_step3_that_cannot_start_its_fan_out_gives_its_lease_back(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # The preflight loads the inputs and takes the run's lease on both hosts; then no worker
    # fits anywhere (a memory model of 10 TB per worker), so the fan-out cannot start. The
    # run fails with that one line, and its hosts still give the lease back (they would
    # otherwise keep the step for lease_seconds, 6 h by default).
    c = make_cluster([HostSpec(f"node{i}") for i in (1, 2)])
    model = json.loads((Path(__file__).resolve().parents[2] / "data" / "memory_model.json").read_text())
    for m in model["models"].values():
        m["base_mb"] = 1e7
    (tmp_path / "model.json").write_text(json.dumps(model))
    extra = {"step3_run_dir": str(tmp_path / "step3"), "step3_memory_model": str(tmp_path / "model.json")}
    res = c.playbook("playbooks/step3.yml", extra_vars=extra, **JSON)
    assert res.returncode != 0, res.stdout[-3000:]
    msgs = fatal_messages(res)
    assert list(msgs) == ["localhost"], res.stdout[-4000:]
    assert msgs["localhost"].startswith("fanout: no host can run this step: node1: no worker fits"), msgs
    step = {h: c.hosts[h].shm / "prng" / "step3" for h in c.hosts}
    assert all(list(d.glob("survivors*")) for d in step.values())  # not finished: not cleared
    left = {h: [n for n in os.listdir(d) if n.startswith(".lease-")] for h, d in step.items()}
    assert left == {h: [] for h in c.hosts}, left
