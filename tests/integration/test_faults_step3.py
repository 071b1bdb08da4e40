"""Faults an operator meets during `playbooks/step3.yml` on a real 3-host SSH test cluster
(network namespaces, real sshd, real tmpfs), beyond the fan-out's own fault tests
(tests/integration/test_fanout_cluster.py).

A host that restarts mid-run comes back with an empty /dev/shm: the step's verified inputs
are gone there. Before the fix its agent ran the probe job anyway, the worker failed on the
missing file with exit 2 (an input error), and that one host stopped the whole run
(`input error on victim: ... file not found`, exit 2) although every input was fine (i29,
i31). Now the agent checks the step's ramdisk manifest before each batch: the host counts
as lost (its jobs go to the others) and the run completes, exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def _survivors(path: Path, copies: int) -> set[int]:
    """The demo survivors, `copies` times with shifted seeds: enough chunks to act mid-run."""
    demo = json.loads((REPO / "demo" / "survivors.json").read_text())
    rows = [dict(r, seed=r["seed"] + k * 10**7) for k in range(copies) for r in demo]
    path.write_text(json.dumps(rows))
    return {r["seed"] for r in rows}


def _journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_with_fault(c: Any, tmp_path: Path, copies: int, fault: Callable[[], None]) -> tuple[Path, set[int]]:
    """Step 3 over `copies` x the demo survivors; `fault()` once host victim has done a job;
    the run's output, exit 0 and complete asserted. Returns the run folder and the seeds."""
    seeds = _survivors(tmp_path / "survivors.json", copies)
    run_dir = tmp_path / "step3"
    extra = {
        "step3_run_dir": str(run_dir),
        "step3_chunk_size": 200,
        "step3_survivors": str(tmp_path / "survivors.json"),
        "fanout_settings": {"host_retry_seconds": 1, "progress_interval": 2, "target_dispatch_seconds": 2},
    }
    log = tmp_path / "step3.log"
    proc = c.playbook_popen("playbooks/step3.yml", log, extra)
    try:
        deadline = time.time() + 240
        while not any(r["ev"] == "done" and r.get("host") == "victim" for r in _journal(run_dir)):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        fault()
        proc.wait(400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]
    return run_dir, seeds


def _assert_every_seed_scored_once(run_dir: Path, seeds: set[int]) -> dict[str, Any]:
    """Every job done once in the journal, every seed once in the scores; the manifest."""
    fan = json.loads((run_dir / "fanout_manifest.json").read_text())
    assert fan["complete"] and fan["stopped"] is None, fan["stopped"]
    done = Counter(r["job"] for r in _journal(run_dir) if r["ev"] == "done")
    assert len(done) == fan["jobs"]["expected"] and max(done.values()) == 1
    counts = Counter(r["seed"] for r in json.loads((run_dir / "survivors_with_scores.json").read_text()))
    assert set(counts) == seeds and max(counts.values()) == 1
    return fan


def test_i29_host_restarted_with_an_empty_ramdisk_does_not_stop_the_run(
    make_cluster: Any, tmp_path: Path
) -> None:
    c = make_cluster([HostSpec("a"), HostSpec("b"), HostSpec("victim")])

    def restart() -> None:  # every process on the host ends, and its tmpfs comes back empty
        c.kill_sshd("victim")
        c.exec("victim", ["rm", "-rf", "/dev/shm/prng"], check=True)
        c.restart_sshd("victim")

    run_dir, seeds = _run_with_fault(c, tmp_path, 8, restart)  # 16,000 seeds, 80 chunks
    fan = _assert_every_seed_scored_once(run_dir, seeds)
    assert "inputs are gone" in fan["hosts"]["victim"]["last_error"], fan["hosts"]["victim"]
    assert not [r for r in _journal(run_dir) if r["ev"] == "fail"], (
        "a job failed on the host without its inputs"
    )


def test_hosts_down_from_the_start_or_lost_for_good_leave_a_finished_step3_green(
    make_cluster: Any, tmp_path: Path
) -> None:
    """One host does not answer from the start, another is lost for good mid-run: the step
    finishes on the third, exit 0 (before: Ansible's exit 4, as the preflight and the
    end-of-step plays found the hosts unreachable), the summary names both, every seed once."""
    c = make_cluster([HostSpec("a"), HostSpec("gone"), HostSpec("victim")])
    c.link_down("gone")
    run_dir, seeds = _run_with_fault(c, tmp_path, 4, lambda: c.link_down("victim"))  # never back
    fan = _assert_every_seed_scored_once(run_dir, seeds)
    assert "ssh: unreachable" in fan["left_out"]["gone"], fan["left_out"]
    assert fan["hosts"]["victim"]["last_error"], fan["hosts"]["victim"]
    assert "victim did not answer at the end of step3" in (tmp_path / "step3.log").read_text()
