"""`playbooks/pipeline.yml` on a real 3-host SSH test cluster: the planted history goes
through Step 1 (bidirectional sieve) and Step 3 (scoring) and the planted seed comes out
ranked first; the controller killed during Step 3 and the same command run again: Step 1
is not redone, Step 3 resumes at its unfinished jobs; the ramdisk holds each step's files
only while they are needed, on every host at every transition."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, HostSpec

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
HOSTS = ("n1", "n2", "n3")


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loaded(c: Cluster, host: str) -> set[str]:
    """Step folders of ours in a host's ramdisk (the folder holds our manifest)."""
    root = c.hosts[host].shm / "prng"
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if (p / ".manifest.json").exists()}


def test_pipeline_planted_seed_first_resume_after_controller_kill_and_ramdisk_lifecycle(
    make_cluster: Any, tmp_path: Path
) -> None:
    # the test hosts have no GPU: the NumPy backend, GPU binding still real; the start stagger
    # spaces job starts on a host so that Step 3 lasts long enough to be interrupted
    slow = {"worker_backend": "numpy", "start_stagger_seconds": 0.4}
    c = make_cluster(
        [
            HostSpec("n1", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2, vars=slow),
            HostSpec("n2", gpu_type="rocm", gpu_count=3, max_concurrent_jobs=2, groups=("rocm",), vars=slow),
            HostSpec("n3", gpu_type="cpu", gpu_count=0, max_concurrent_jobs=1, vars=slow),
        ]
    )
    run_dir = tmp_path / "pipeline"
    extra = {"run_dir": str(run_dir), "step3_chunk_size": 100}
    step1_run, step3_run = run_dir / "step1" / "bidirectional", run_dir / "step3"
    first_log = tmp_path / "first-run.log"
    proc = c.playbook_popen("playbooks/pipeline.yml", first_log, extra)
    try:
        # wait until Step 3 has finished some of its 20 jobs, then kill the controller
        deadline = time.time() + 400
        while time.time() < deadline:
            assert proc.poll() is None, (
                "the pipeline ended before Step 3 could be interrupted:\n" + first_log.read_text()[-4000:]
            )
            if sum(1 for r in journal(step3_run) if r["ev"] == "done") >= 3:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("Step 3 never started")
        # during Step 3 every host holds Step 3's files, and no longer Step 1's
        during = {h: loaded(c, h) for h in HOSTS}
        os.killpg(proc.pid, signal.SIGKILL)  # a controller crash: no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # every host passed Step 1's preflight and got its share (else the ramdisk checks below
    # cannot hold): the reason of any host left out, with the first run's output
    step1_left_out = json.loads((step1_run / "fanout_manifest.json").read_text())["left_out"]
    assert step1_left_out == {}, f"{step1_left_out}\n{first_log.read_text()[-6000:]}"
    assert during == {h: {"step3"} for h in HOSTS}, during
    done_step3 = {r["job"] for r in journal(step3_run) if r["ev"] == "done"}
    assert 3 <= len(done_step3) < 20, len(done_step3)
    assert (run_dir / "step1" / "step.done.json").exists()
    assert not (run_dir / "step3" / "step.done.json").exists()
    step1_starts = Counter(r["job"] for r in journal(step1_run) if r["ev"] == "start")

    rerun = c.playbook("playbooks/pipeline.yml", extra_vars=extra, timeout=600)
    out = rerun.stdout
    assert rerun.returncode == 0, out[-5000:] + rerun.stderr[-2000:]
    # Step 1 not redone: its contract ran, its jobs did not
    assert "Step 1 already finished" in out and "(already finished, not redone)" in out
    assert Counter(r["job"] for r in journal(step1_run) if r["ev"] == "start") == step1_starts
    # Step 3 resumed: finished jobs were kept and never started again
    assert "resuming run" in out
    starts = Counter(r["job"] for r in journal(step3_run) if r["ev"] == "start")
    assert all(starts[j] == 1 for j in done_step3), starts
    assert sum(1 for r in journal(step3_run) if r["ev"] == "done") >= 20

    # the planted seed ranked first, every survivor of Step 1 scored once
    planted = json.loads((REPO / "demo" / "README.json").read_text())["planted_seed"]
    scored = json.loads((run_dir / "step3" / "survivors_with_scores.json").read_text())
    assert scored[0]["seed"] == planted and scored[0]["holdout_hits"] == 1.0
    assert len(scored) == 2000 and len({r["seed"] for r in scored}) == 2000
    assert len({r["metadata"]["host"] for r in scored}) >= 2  # spread over the cluster
    train = json.loads((run_dir / "train_history.json").read_text())
    holdout = json.loads((run_dir / "holdout_history.json").read_text())
    assert (len(train), len(holdout)) == (400, 100)

    # the ramdisk at every transition, on every host (one record per transition and run)
    lines = (run_dir / "ramdisk" / "transitions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["transition"] for r in records] == [
        "start",
        "after-step1",  # the first run, killed during Step 3
        "start",
        "after-step1",
        "after-step3",  # the rerun
    ]
    assert all(r["no_answer"] == [] for r in records)
    after1 = records[1]
    assert after1["no_answer"] == []
    assert after1["before"] == {h: ["step1"] for h in HOSTS}  # Step 1's files, loaded for Step 1
    assert all(s == {"step1": "valid"} for s in after1["states_before"].values())
    assert after1["after"] == {h: [] for h in HOSTS}  # cleared: no later step reads them
    # the rerun did not load Step 1 again; the interrupted Step 3's files stayed (still needed)
    assert records[3]["before"] == {h: ["step3"] for h in HOSTS}
    after3 = records[4]
    assert after3["before"] == {h: ["step3"] for h in HOSTS}
    assert after3["after"] == {h: [] for h in HOSTS}
    assert {h: loaded(c, h) for h in HOSTS} == {h: set() for h in HOSTS}
    assert "ramdisk after-step3, cleared step3" in out
