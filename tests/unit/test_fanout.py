"""Unit tests of the fan-out's controller side: journal, planning, batch sizing, output
validation; and of the gpu_job module run for real through `ansible localhost`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.module_utils import fanout_protocol as proto  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (  # noqa: E402
    OutputInvalid,
    seeds_digest,
    validate_output,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import manifest as manifest_mod  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import DispatchResult  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import (  # noqa: E402
    Job,
    Journal,
    ResumeRefused,
    hash_inputs,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import ListPlan, ScorePlan  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.scheduler import (  # noqa: E402
    FanOut,
    Settings,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.sizing import (  # noqa: E402
    pick_chunk_size,
    predict_peak_mb,
    slots_for,
)

BIN = Path(sys.executable).parent


# -- output validation (i3, i4) ---------------------------------------------------------
def test_i4_truncated_json_output_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    text = json.dumps([{"seed": s} for s in range(100)])
    path.write_text(text)
    spec = {
        "path": str(path),
        "kind": "json_list",
        "records": 100,
        "seeds_sha256": seeds_digest(list(range(100))),
    }
    assert validate_output(spec)["records"] == 100
    path.write_text(text[: len(text) - 1])  # one byte short: a check of the first byte passes
    with pytest.raises(OutputInvalid, match="does not parse"):
        validate_output(spec)


def test_i3_missing_wrong_count_or_wrong_seeds_are_invalid(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(OutputInvalid, match="missing"):
        validate_output({"path": str(path), "kind": "json_list"})
    path.write_text(json.dumps([{"seed": s} for s in range(10)]))
    with pytest.raises(OutputInvalid, match="holds 10 records, expected 11"):
        validate_output({"path": str(path), "kind": "json_list", "records": 11})
    with pytest.raises(OutputInvalid, match="other seeds"):
        validate_output(
            {
                "path": str(path),
                "kind": "json_list",
                "records": 10,
                "seeds_sha256": seeds_digest(list(range(1, 11))),
            }
        )


def test_npz_output_validated_whole_with_uint64_seeds(tmp_path: Path) -> None:
    path = tmp_path / "out.npz"
    seeds = np.array([2**47 + 5, 3, 2**40], dtype=np.uint64)  # above uint32 (i27)
    with open(path, "wb") as fh:
        np.savez(fh, seeds=seeds, score=np.ones(3))
    spec = {
        "path": str(path),
        "kind": "npz",
        "records": 3,
        "seeds_sha256": seeds_digest([int(s) for s in seeds]),
    }
    assert validate_output(spec)["records"] == 3
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(OutputInvalid):
        validate_output(spec)
    with zipfile.ZipFile(path, "w") as zf:  # a zip whose member bytes were damaged
        zf.writestr("seeds.npy", b"\x93NUMPY" + b"\x00" * 30)
    with pytest.raises(OutputInvalid):
        validate_output(spec)


# -- journal and resume (i15, i17, i22) -------------------------------------------------
def test_journal_replays_states_and_ignores_a_torn_line(tmp_path: Path) -> None:
    jobs = [Job(id=f"j{i}", argv=["x"], range=[i * 10, i * 10 + 10], units=10) for i in range(4)]
    j = Journal(str(tmp_path))
    j.create({"run_id": "r1", "inputs": {}}, jobs)
    j.append("start", job="j0", host="a")
    j.append("done", job="j0", host="a", duration_s=1.5, result={"outputs": []})
    j.append("start", job="j1", host="a")
    j.append("fail", job="j1", host="a", reason="exit 1", final=False)
    j.append("start", job="j2", host="b")
    j.append(
        "split",
        job="j3",
        children=[
            Job(id="j3.a", argv=["x"], range=[30, 35], units=5).spec(),
            Job(id="j3.b", argv=["x"], range=[35, 40], units=5).spec(),
        ],
    )
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(b'{"t": 1, "ev": "done", "job": "j2"')  # crash mid-write
    state = Journal(str(tmp_path)).load()
    assert state["j0"].state == "done" and state["j0"].duration_s == 1.5
    assert state["j1"].state == "queued" and state["j1"].attempts == 1 and state["j1"].avoid == ["a"]
    assert state["j2"].state == "queued"  # was running when the controller died: requeued
    assert state["j3"].state == "split" and state["j3.a"].range == [30, 35]
    j2 = Journal(str(tmp_path))
    j2.append("done", job="j2", host="b")  # the torn line is closed off, not glued onto
    j2.close()
    assert Journal(str(tmp_path)).load()["j2"].state == "done"


def test_i22_resume_refuses_changed_inputs(tmp_path: Path) -> None:
    src = tmp_path / "survivors.json"
    src.write_text("[1, 2, 3]")
    j = Journal(str(tmp_path / "run"))
    j.create({"run_id": "r1", "inputs": hash_inputs({"survivors": str(src)})}, [])
    j.check_inputs(hash_inputs({"survivors": str(src)}))  # same content: fine
    src.write_text("[1, 2, 4]")
    with pytest.raises(ResumeRefused, match="changed since run r1"):
        j.check_inputs(hash_inputs({"survivors": str(src)}))


# -- planning ---------------------------------------------------------------------------
MODEL = {"version": 1, "models": {"numpy": {"base_mb": 100.0, "bytes_per_seed_draw": 256.0}}}


def test_i11_slots_are_the_min_of_gpus_limit_and_memory() -> None:
    assert slots_for(HostSpec("a", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=4), 0) == 4
    assert slots_for(HostSpec("a", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12), 0) == 12
    assert slots_for(HostSpec("a", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=16), 0) == 12
    assert slots_for(HostSpec("c", gpu_type="cpu", gpu_count=0, max_concurrent_jobs=3), 0) == 3
    # i10: a 7.7 GB rig with ~4.8 GB available and 600 MB workers fits 6 with a 20 % margin
    rig = HostSpec("rig", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12, memory_available_mb=4800)
    assert slots_for(rig, 600) == 6 and "memory_fit=6" in rig.slot_reason


def test_i10_chunk_size_shrinks_until_every_slot_fits() -> None:
    rig = HostSpec("rig", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12, memory_available_mb=4800)
    chunk = pick_chunk_size([rig], MODEL, "numpy", 5000, 500)
    assert chunk < 5000
    assert 12 * predict_peak_mb(MODEL, "numpy", chunk, 500) <= 4800 * 0.8
    assert slots_for(rig, predict_peak_mb(MODEL, "numpy", chunk, 500)) == 12


def test_score_plan_chunks_cover_every_survivor_once_and_split_in_halves(tmp_path: Path) -> None:
    recs = [{"seed": 2**40 + i * 7} for i in range(1003)]
    (tmp_path / "s.json").write_text(json.dumps(recs))
    (tmp_path / "t.json").write_text("[1, 2, 3]")
    plan = ScorePlan(
        {
            "survivors": str(tmp_path / "s.json"),
            "train_history": str(tmp_path / "t.json"),
            "family": "java_lcg",
            "chunk_size": 250,
        }
    )
    jobs = plan.make_jobs()
    assert [j.range for j in jobs] == [[0, 250], [250, 500], [500, 750], [750, 1000], [1000, 1003]]
    exp = plan.expect(jobs[4])
    assert exp["records"] == 3 and exp["seeds_sha256"] == seeds_digest([r["seed"] for r in recs[1000:]])
    a, b = plan.split(jobs[0])
    assert (a.range, b.range, a.parent) == ([0, 125], [125, 250], jobs[0].id)
    assert "{start}" in a.argv and "--survivors" in a.argv


def test_list_plan_needs_an_output_per_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [{"id": "a", "script": "x.py", "args": ["--n", 1]}]}))
    with pytest.raises(ValueError, match="names no output"):
        ListPlan({"jobs_file": str(path)}).make_jobs()


# -- batch sizing: free slots pull, enough work per dispatch, fair tail (i18) ------------------
def _fan(tmp_path: Path, n_jobs: int, hosts: list[HostSpec], **job_fields: dict[str, Any]) -> FanOut:
    """job_fields: {field: {job id: value}} set before the fan-out indexes the jobs."""
    jobs = {f"j{i:03d}": Job(id=f"j{i:03d}", argv=["x"], units=100) for i in range(n_jobs)}
    for name, values in job_fields.items():
        for job_id, value in values.items():
            setattr(jobs[job_id], name, value)
    for h in hosts:
        slots_for(h, 0)
    return FanOut(
        str(tmp_path),
        ListPlan({}),
        hosts,
        jobs,
        Journal(str(tmp_path)),
        lambda *a: None,
        Settings(target_dispatch_seconds=10),
        lambda s: None,
    )  # type: ignore[arg-type]


def test_batch_sizing_from_measured_throughput(tmp_path: Path) -> None:
    fan = _fan(
        tmp_path,
        200,
        [
            HostSpec("fast", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("slow", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ],
    )
    fast, slow = fan.hosts["fast"], fan.hosts["slow"]
    assert len(fan.take_batch(fast, 0.0)) == 1  # no measurement yet: one job probes the host
    fast.rate, slow.rate = 100.0, 20.0  # units per second per slot
    assert len(fan.take_batch(fast, 0.0)) == 10  # 10 s of work at 100 units/s
    assert len(fan.take_batch(slow, 0.0)) == 2
    for job in list(fan.jobs.values())[:190]:
        fan.index.set(job, "done")
    # Tail: 1000 units left, 240 units/s over all slots: each slot's share of ~4.2 s, half
    # of it per batch (Settings.fair_share_fraction).
    assert len(fan.take_batch(fast, 0.0)) == 2
    assert len(fan.take_batch(slow, 0.0)) == 1


def test_longest_jobs_go_first(tmp_path: Path) -> None:
    fan = _fan(tmp_path, 3, [HostSpec("a", max_concurrent_jobs=1)], units={"j001": 500})
    assert [j.id for j in fan.take_batch(fan.hosts["a"], 0.0)] == ["j001"]


def test_failed_job_prefers_another_host(tmp_path: Path) -> None:
    fan = _fan(
        tmp_path,
        1,
        [HostSpec("a", max_concurrent_jobs=1), HostSpec("b", max_concurrent_jobs=1)],
        avoid={"j000": ["a"]},
    )
    assert fan.take_batch(fan.hosts["a"], 0.0) == []
    assert [j.id for j in fan.take_batch(fan.hosts["b"], 0.0)] == ["j000"]
    fan.hosts["b"].excluded = True  # the only other host is gone: run it where we can
    assert [j.id for j in fan.take_batch(fan.hosts["a"], 0.0)] == ["j000"]


# -- the gpu_job module, run for real ---------------------------------------------------
def _gpu_job(tmp_path: Path, jobs: list[dict[str, Any]], **args: Any) -> dict[str, Any]:
    jobs_file = tmp_path / "d1" / "jobs.json"
    jobs_file.parent.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps({"jobs": jobs}))
    module_args = {"jobs_file": str(jobs_file), "state_dir": str(tmp_path / "state"), **args}
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-m",
            "prng.cluster.gpu_job",
            "-a",
            json.dumps(module_args),
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])  # "localhost | CHANGED => {...}"


def test_gpu_job_binding_validation_timeout_and_oom(tmp_path: Path) -> None:
    report = (
        "import json,os;print(json.dumps({k: os.environ.get(k) for k in "
        "('CUDA_VISIBLE_DEVICES','HIP_VISIBLE_DEVICES','ROCR_VISIBLE_DEVICES','FROM_ENV_FILE')}))"
    )
    out = str(tmp_path / "o.json")
    writer = f"import json;json.dump([{{'seed': 1}}], open({out!r}, 'w'))"
    marker = f"prng-test-sleep-{os.getpid()}"
    env_file = tmp_path / "worker.env"
    # The env file tries to point the worker at other GPUs: the slot's binding must win (i1).
    env_file.write_text(
        "export FROM_ENV_FILE=yes\nexport CUDA_VISIBLE_DEVICES=7\nexport ROCR_VISIBLE_DEVICES=5\n"
    )
    res = _gpu_job(
        tmp_path,
        [
            {"id": "bind", "argv": [sys.executable, "-c", report]},
            {
                "id": "ok",
                "argv": [sys.executable, "-c", writer],
                "outputs": [{"path": out, "kind": "json_list", "records": 1}],
            },
            {
                "id": "noout",
                "argv": ["true"],
                "outputs": [{"path": str(tmp_path / "never.json"), "kind": "json"}],
            },
            {
                "id": "slow",
                "argv": ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(300)' {marker} & wait"],
                "timeout": 1,
            },
            {"id": "oom", "argv": ["sh", "-c", "exit 137"]},
        ],
        gpu_type="rocm",
        gpu_index=2,
        env_file=str(env_file),
        kill_grace_seconds=0.5,
    )
    jobs = {j["id"]: j for j in res["jobs"]}
    assert jobs["bind"]["summary"] == {
        "CUDA_VISIBLE_DEVICES": "2",
        "HIP_VISIBLE_DEVICES": "2",
        "ROCR_VISIBLE_DEVICES": None,
        "FROM_ENV_FILE": "yes",
    }
    assert jobs["ok"]["status"] == "ok" and res["fetch"] == [{"src": out, "job_id": "ok"}]
    assert (
        jobs["noout"]["status"] == "invalid" and "missing" in jobs["noout"]["reason"]
    )  # exit 0 is not success (i3)
    assert jobs["slow"]["status"] == "timeout"
    assert jobs["oom"]["status"] == "oom"
    # i16: the timeout killed the job's whole process group, not only its first process.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps


def test_gpu_job_stagger_spaces_worker_starts(tmp_path: Path) -> None:
    """Two slots of one host starting at once are spaced by start_stagger_seconds (i9)."""
    results: list[dict[str, Any]] = []

    def slot(i: int) -> None:
        d = tmp_path / f"s{i}"
        d.mkdir()
        results.append(
            _gpu_job(
                d,
                [{"id": f"j{i}", "argv": ["true"]}],
                gpu_type="rocm",
                gpu_index=i,
                start_stagger_seconds=1.5,
                state_dir=str(tmp_path / "state"),
            )
        )

    threads = [threading.Thread(target=slot, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = sorted(r["jobs"][0]["started"] for r in results)
    assert starts[1] - starts[0] >= 1.4


# -- host loss (i38) and failure classes (i31), the scheduler driven by a fake transport ----
# The fake stands in for the dispatcher only (SSH is exercised by the cluster tests): each
# dispatch "runs" its jobs for a few ms and hands back what a real one would.
def _sim(
    tmp_path: Path,
    n_jobs: int,
    hosts: list[HostSpec],
    dispatch: Any,
    journal_cls: type[Journal] = Journal,
    **settings: Any,
) -> FanOut:
    jobs = [
        Job(id=f"c{i:04d}", argv=["x"], outputs=[{"path": "{out}/r.json", "kind": "json"}])
        for i in range(n_jobs)
    ]
    for h in hosts:
        slots_for(h, 0)
    journal = journal_cls(str(tmp_path / "run"))
    journal.create({"run_id": "sim", "inputs": {}}, jobs)
    knobs = dict(
        poll_seconds=0.005,
        progress_interval=60,
        retry_backoff_seconds=0.01,
        target_dispatch_seconds=0.05,
        max_jobs_per_dispatch=2,
    )
    knobs.update(settings)
    said: list[str] = []
    fan = FanOut(
        str(tmp_path / "run"),
        ListPlan({}),
        hosts,
        {j.id: j for j in jobs},
        journal,
        _threaded(dispatch),
        Settings(**knobs),
        said.append,
    )
    fan.said = said  # type: ignore[attr-defined]
    return fan


def _threaded(dispatch: Any) -> Any:
    """The transport's non-blocking send() over a fake that answers in a thread of its own."""

    def send(dispatch_id: str, host: HostSpec, slot: int, jobs: list[Job], expect: Any, reply: Any) -> None:
        threading.Thread(
            target=lambda: reply(dispatch(dispatch_id, host, slot, jobs, expect)), daemon=True
        ).start()

    return send


def _transport(tmp_path: Path, reachable: Any, result: Any = None, seconds: float = 0.02) -> Any:
    """reachable(host, slot) -> bool decides per dispatch (may block); result(host, job)
    -> dict overrides a job's result (None: ok, with a valid output pulled)."""

    def dispatch(dispatch_id: str, host: HostSpec, slot: int, jobs: list[Job], expect: Any) -> DispatchResult:
        started = time.time()
        if not reachable(host.name, slot):
            return DispatchResult(
                dispatch_id, host.name, slot, jobs, status="unreachable", error="ssh: connect timed out"
            )
        incoming = tmp_path / "incoming" / dispatch_id
        results = {}
        for job in jobs:
            time.sleep(seconds)
            jr = {"id": job.id, "status": "ok", "rc": 0, "reason": "", "duration_s": seconds}
            jr.update((result(host.name, job) if result else None) or {})
            if jr["status"] == "ok":
                (incoming / job.id).mkdir(parents=True)
                (incoming / job.id / "r.json").write_text(json.dumps({"job": job.id}))
            results[job.id] = jr
        return DispatchResult(
            dispatch_id,
            host.name,
            slot,
            jobs,
            job_results=results,
            incoming=str(incoming),
            started=started,
            wall_s=time.time() - started,
        )

    return dispatch


def _run(fan: FanOut, limit: float = 30.0) -> None:
    worker = threading.Thread(target=fan.run, daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        fan.cancel.set()
        raise AssertionError("the fan-out hung")


def _records(fan: FanOut) -> list[dict[str, Any]]:
    return fan.journal.records()


def _assert_each_done_once(fan: FanOut) -> None:
    done = Counter(r["job"] for r in _records(fan) if r["ev"] == "done")
    assert sorted(done) == sorted(fan.jobs) and set(done.values()) == {1}, done
    replayed = Journal(fan.run_dir).load()
    assert {j.state for j in replayed.values()} == {"done"}


def test_i38_two_slot_host_whose_two_dispatches_are_lost_counts_one_outage(tmp_path: Path) -> None:
    gate = threading.Barrier(2, timeout=5)
    cut = {"a": 2}  # the link is down for host a's first two dispatches, one per slot
    lock = threading.Lock()

    def reachable(host: str, slot: int) -> bool:
        with lock:
            lost = cut.get(host, 0) > 0
            if lost:
                cut[host] -= 1
        if lost:
            gate.wait()  # both slots' dispatches are in flight when the link goes
        return not lost

    fan = _sim(
        tmp_path,
        40,
        [
            HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("b", max_concurrent_jobs=1),
        ],
        _transport(tmp_path, reachable, seconds=0.03),
        max_host_failures=2,  # the old count (one per slot) left the host out for good
        host_retry_seconds=0.2,
    )
    _run(fan)
    a = fan.hosts["a"]
    assert not a.excluded and a.done > 1, fan.said  # type: ignore[attr-defined]
    assert (a.outages, a.epoch, a.state(), a.rejoins) == (1, 1, "up", 1)
    recs = _records(fan)
    assert sum(1 for r in recs if r["ev"] == "requeue") == 2  # the two lost jobs, requeued once each
    back = next(i for i, r in enumerate(recs) if r["ev"] == "host" and r["state"] == "up")
    probe = [r for r in recs if r["ev"] == "start" and r.get("probe")]
    assert len(probe) == 1 and probe[0]["host"] == "a"  # one job tried it again
    slots_after = {r["slot"] for r in recs[back:] if r["ev"] == "start" and r["host"] == "a"}
    assert slots_after == {0, 1}, "all of the host's slots are back"
    _assert_each_done_once(fan)
    m = manifest_mod.build({"run_id": "sim"}, fan, fan.started)
    assert m["complete"] and m["stopped"] is None
    assert {k: m["hosts"]["a"][k] for k in ("outages", "losses", "rejoined", "state")} == {
        "outages": 1,
        "losses": 1,
        "rejoined": True,
        "state": "up",
    }
    assert m["hosts"]["a"]["down_s"] > 0.15


def test_i38_excluded_host_is_probed_and_rejoins_when_it_answers(tmp_path: Path) -> None:
    calls = {"a": 0}

    def reachable(host: str, slot: int) -> bool:
        if host != "a":
            return True
        calls["a"] += 1
        return calls["a"] > 2  # lost, the first probe finds it still down, the second answers

    fan = _sim(
        tmp_path,
        40,
        [HostSpec("a", max_concurrent_jobs=1), HostSpec("b", max_concurrent_jobs=1)],
        _transport(tmp_path, reachable, seconds=0.03),
        max_host_failures=1,  # left out at the first loss ...
        host_retry_seconds=0.05,  # ... and still probed every 0.4 s (8x) while b works
    )
    _run(fan)
    said = "\n".join(fan.said)  # type: ignore[attr-defined]
    assert "host a left out" in said and "host a answers again" in said, said
    a = fan.hosts["a"]
    assert (a.outages, a.epoch, a.state(), a.excluded) == (1, 2, "up", False)
    assert a.done > 1  # more than the probe job
    _assert_each_done_once(fan)
    m = manifest_mod.build({"run_id": "sim"}, fan, fan.started)
    assert m["hosts"]["a"]["rejoined"] and m["hosts"]["a"]["outages"] == 1


def test_host_loss_every_host_gone_fails_the_rest_without_hanging(tmp_path: Path) -> None:
    fan = _sim(
        tmp_path,
        6,
        [
            HostSpec("a", max_concurrent_jobs=1),
            HostSpec("b", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ],
        _transport(tmp_path, lambda host, slot: False),
        max_host_failures=2,
        host_retry_seconds=0.02,
    )
    _run(fan)
    assert all(h.excluded and h.outages == 1 and h.epoch == 2 for h in fan.hosts.values())
    assert {(j.state, j.reason) for j in fan.jobs.values()} == {("failed", "no reachable host left")}
    # Requeues by a failed probe are not the job's fault: none ran out of requeues.
    assert not any("requeued" in r.get("reason", "") for r in _records(fan))


def test_i31_input_error_stops_the_run_without_retry(tmp_path: Path) -> None:
    line = "error: train history /data/train.json holds 3 draws, at least 10 are needed"

    def result(host: str, job: Job) -> dict[str, Any] | None:
        if job.id == "c0002":
            return {"status": "failed", "rc": 2, "reason": "exit 2: " + line, "stderr_tail": line + "\n"}
        return None

    fan = _sim(
        tmp_path,
        12,
        [HostSpec("a", max_concurrent_jobs=1), HostSpec("b", max_concurrent_jobs=1)],
        _transport(tmp_path, lambda host, slot: True, result, seconds=0.03),
        max_jobs_per_dispatch=1,
    )
    _run(fan)
    recs = _records(fan)
    assert [r["ev"] for r in recs if r.get("job") == "c0002"] == ["start", "fail"]  # one attempt, no retry
    failed_on = next(r["host"] for r in recs if r["ev"] == "fail")
    assert fan.stopped == f"job c0002: input error on {failed_on}: {line}"
    states = Counter(j.state for j in fan.jobs.values())
    assert states["failed"] == 1 and states["running"] == 0
    assert states["queued"] >= 6, states  # not failed: a corrected rerun resumes them
    assert not any(r["ev"] == "fail" and r["job"] != "c0002" for r in recs)
    replayed = Journal(fan.run_dir).load()
    assert sum(1 for j in replayed.values() if j.state == "queued") == states["queued"]
    m = manifest_mod.build({"run_id": "sim"}, fan, fan.started)
    assert m["stopped"] == fan.stopped and not m["complete"]
    assert any(f["action"] == "run stopped" for f in m["failures"])


def test_i31_crash_is_retried_elsewhere_and_does_not_stop_the_run(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def result(host: str, job: Job) -> dict[str, Any] | None:
        with lock:
            seen[job.id] += 1
            first = seen[job.id] == 1
        if first and job.id == "c0002":  # a crash: exit 1
            tail = "error: RuntimeError: CUDA error: an illegal memory access was encountered\n"
            return {"status": "failed", "rc": 1, "reason": "exit 1: crash", "stderr_tail": tail}
        if first and job.id == "c0003":  # exit 2, but not the worker's verdict on its input
            tail = "python3: can't open file '/opt/w/job.py': [Errno 2] No such file or directory\n"
            return {"status": "failed", "rc": 2, "reason": "exit 2: can't open", "stderr_tail": tail}
        return None

    fan = _sim(
        tmp_path,
        8,
        [HostSpec("a", max_concurrent_jobs=1), HostSpec("b", max_concurrent_jobs=1)],
        _transport(tmp_path, lambda host, slot: True, result),
        max_jobs_per_dispatch=1,
    )
    _run(fan)
    assert fan.stopped is None
    _assert_each_done_once(fan)
    for job_id in ("c0002", "c0003"):
        hosts = [r["host"] for r in _records(fan) if r["ev"] == "start" and r["job"] == job_id]
        assert len(hosts) == 2 and hosts[0] != hosts[1], hosts  # retried, on the other host


# -- small at every size (issue 14) ----------------------------------------------------------
def test_decision_cost_does_not_grow_with_finished_jobs(tmp_path: Path) -> None:
    """Picking a batch looks at the queue's head, not at every job: with 40,000 jobs done
    it costs what it costs with 100 done (the old scan-and-sort took ~60x longer)."""
    host = HostSpec("a", gpu_type="cuda", gpu_count=8, max_concurrent_jobs=8)

    def fan_with(done: int) -> FanOut:
        fan = _fan(tmp_path / f"d{done}", done + 400, [host])
        for job in list(fan.jobs.values())[:done]:
            fan.index.set(job, "done")
        fan.hosts["a"].rate = 100.0  # 10 jobs of 100 units per batch
        return fan

    def cost(fan: FanOut) -> int:
        """Python lines executed (sys.settrace): a deterministic count where a clock would
        flake under load; a scan over every job shows up as lines per job."""
        lines = 0

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            nonlocal lines
            lines += event == "line"
            return tracer

        sys.settrace(tracer)
        try:
            for _ in range(30):
                assert len(fan.take_batch(fan.hosts["a"], 0.0)) == 10
        finally:
            sys.settrace(None)
        return lines

    few, many = fan_with(100), fan_with(40_000)
    cost(few), cost(many)  # the first pick drops the finished jobs' stale heap entries, once
    assert cost(many) < 1.5 * cost(few), (cost(few), cost(many))


class _SyncSpy(Journal):
    """The real journal, noting what was durable (fsynced) and how often it synced."""

    syncs = 0
    synced_bytes = 0

    def sync(self) -> None:
        if self._fh is not None and self._unsynced:
            type(self).syncs += 1
        super().sync()
        if self._fh is not None:
            type(self).synced_bytes = self._fh.tell()


def test_journal_fsyncs_grouped_and_durable_before_each_batch_is_sent(tmp_path: Path) -> None:
    unsynced_at_send: list[str] = []
    journal_path = tmp_path / "run" / "journal.jsonl"
    base = _transport(tmp_path, lambda host, slot: True, seconds=0.01)

    def dispatch(dispatch_id: str, host: HostSpec, slot: int, jobs: list[Job], expect: Any) -> DispatchResult:
        return base(dispatch_id, host, slot, jobs, expect)

    fan = _sim(
        tmp_path,
        60,
        [
            HostSpec("a", gpu_type="cuda", gpu_count=3, max_concurrent_jobs=3),
            HostSpec("b", max_concurrent_jobs=2),
        ],
        dispatch,
        journal_cls=_SyncSpy,
    )
    send = fan.send

    def checked_send(dispatch_id: str, *args: Any) -> None:
        # Everything journaled so far, this batch's start lines included, is on disk.
        if journal_path.stat().st_size != _SyncSpy.synced_bytes:
            unsynced_at_send.append(dispatch_id)
        send(dispatch_id, *args)

    fan.send = checked_send  # type: ignore[method-assign]
    _run(fan)
    _assert_each_done_once(fan)
    assert not unsynced_at_send, unsynced_at_send
    lines = len(_records(fan))
    # not one per line (120): a round's done lines and the start lines of the batches its
    # freed slots take go under one sync, so at most one sync per batch; only the tail's
    # rounds (one per slot, 5, at most) sync done lines alone, and the final sync
    assert lines >= 120 and _SyncSpy.syncs <= lines // 2 + 5 + 1, (lines, _SyncSpy.syncs)


# -- the host agent, run for real as a local process -------------------------------------------
def _agent(tmp_path: Path, run_id: str) -> subprocess.Popen[bytes]:
    """The agent as fanout_host starts it (BOOT, then its source over stdin), without SSH."""
    from ansible_collections.prng.cluster.plugins.action.fanout_host import AGENT_MODULES

    source = proto.agent_source(AGENT_MODULES)  # the modules fanout_host sends
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", proto.BOOT, proto.AGENT_TAG, run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(str(len(source)).encode() + b"\n" + source)
    proto.write(proc.stdin, proto.hello(run_id=run_id, dispatch_root=str(tmp_path / "dispatch")))
    hello = proto.read(proc.stdout)
    assert hello is not None and hello["op"] == proto.HELLO and hello["pid"] == proc.pid
    return proc


def _sleep_batch(tmp_path: Path, run_id: str, dispatch_id: str, slot: int, seconds: float, tag: str) -> Any:
    out = f"{tmp_path}/dispatch/{run_id}/{dispatch_id}/out/r.json"
    code = f"import json,os,time;time.sleep({seconds});json.dump([{{'seed': {slot}}}], open({out!r}, 'w'))"
    job = {
        "id": f"job-{dispatch_id}",
        "argv": ["sh", "-c", f'{sys.executable} -c "$0" {tag}', code],
        "outputs": [{"path": out, "kind": "json_list", "records": 1}],
    }
    run = {
        "gpu_type": "cuda",
        "gpu_index": slot,
        "state_dir": str(tmp_path / "state"),
        "inline_max_bytes": 1 << 20,
    }
    return proto.batch(dispatch_id, slot, f"{tmp_path}/dispatch/{run_id}/{dispatch_id}", [job], run)


def _running(tag: str) -> bool:
    return tag in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def _start_sleeper(agent: subprocess.Popen[bytes], tmp_path: Path, run_id: str, tag: str) -> None:
    """A 300 s job on slot 0, returned once its process runs."""
    assert agent.stdin is not None
    proto.write(agent.stdin, _sleep_batch(tmp_path, run_id, "d-long", 0, 300, tag))
    deadline = time.time() + 10
    while not _running(tag):
        assert time.time() < deadline
        time.sleep(0.05)


def test_agent_runs_its_hosts_slots_at_once_and_the_session_end_kills_its_jobs(tmp_path: Path) -> None:
    proc = _agent(tmp_path, "r1")
    assert proc.stdin is not None and proc.stdout is not None
    for slot in (0, 1):
        proto.write(proc.stdin, _sleep_batch(tmp_path, "r1", f"d{slot}", slot, 1.0, f"prng-t-{os.getpid()}"))
    results = [proto.read(proc.stdout) for _ in range(2)]
    jobs = {r["dispatch_id"]: r["jobs"][0] for r in results if r}
    assert {d: (j["status"], j["binding"]) for d, j in jobs.items()} == {
        "d0": ("ok", {"CUDA_VISIBLE_DEVICES": "0"}),
        "d1": ("ok", {"CUDA_VISIBLE_DEVICES": "1"}),
    }
    assert abs(jobs["d0"]["started"] - jobs["d1"]["started"]) < 0.8  # side by side, not in turn
    assert all(r and r["fetch"][0]["content"] for r in results)  # small outputs ride inline
    # The session ends while a job runs (controller gone, link cut): its group dies (i16).
    tag = f"prng-t-end-{os.getpid()}"
    _start_sleeper(proc, tmp_path, "r1", tag)
    proc.stdin.close()
    assert proc.wait(20) == 0
    time.sleep(0.3)
    assert not _running(tag)


def test_agent_of_a_rerun_replaces_the_old_one_and_its_jobs(tmp_path: Path) -> None:
    """Two agents of one run never race on a host: the newer stops the older (a rerun after
    a controller crash, or a host reconnecting after its link was cut)."""
    old = _agent(tmp_path, "r2")
    tag = f"prng-t-old-{os.getpid()}"
    _start_sleeper(old, tmp_path, "r2", tag)
    new = _agent(tmp_path, "r2")
    assert old.wait(20) != 0 and new.poll() is None
    time.sleep(0.3)
    assert not _running(tag)
    assert (tmp_path / "dispatch" / "r2" / "agent.pid").read_text() == str(new.pid)
    assert new.stdin is not None
    proto.write(new.stdin, proto.stop([str(tmp_path / "dispatch" / "r2")]))
    assert new.wait(20) == 0 and not (tmp_path / "dispatch" / "r2").exists()  # one cleanup


def test_protocol_refuses_what_is_not_a_message() -> None:
    assert proto.decode(proto.encode(proto.stop(["/x"]))) == {"op": "stop", "remove": ["/x"]}
    for line, why in (
        (b"{}", "not a fan-out message"),
        (b'{"op": "batch", "dispatch_id": "d1"}', "batch message without slot, work_dir, jobs, run"),
        (b'{"op": "result", "dispatch_id": "d1", "status": "fine"}', "result status 'fine'"),
        (b"garbage", "not a fan-out message"),
    ):
        with pytest.raises(proto.ProtocolError, match=why):
            proto.decode(line)
