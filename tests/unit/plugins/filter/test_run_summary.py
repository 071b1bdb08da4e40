"""prng.cluster.run_summary on recorded fan-out results (tests/fixtures/fanout: the demo
on the local inventory; Step 3 on the SSH test cluster with a host left out): a short
aligned table instead of dict reprs, the efficiency explained in words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.filter.run_summary import FilterModule, run_summary  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "fanout"


def recorded(name: str) -> dict:
    return json.loads((FIX / f"{name}.json").read_text())


def test_cluster_run_with_a_host_left_out() -> None:
    text = run_summary(recorded("step3_cluster_left_out"))
    assert text.splitlines() == [
        "run 20261201-220948-ec9ea7 (new run, /tmp/rs/run3): complete, 8 of 8 jobs done, 0 failed",
        "  host   slots    done  failed",
        "  rig1       2       4       0",
        "  rig2       2       4       0",
        "  total      4       8       0",
        "left out: rig3: did not complete the step3 preflight (unreachable or stopped)",
        "wall 3.7 s, 2.18 jobs/s",
        "efficiency 46%: share of the slots' time spent running jobs (6.8 of 4 slots x 3.7 s = 14.7 slot-s)",
        "  lost to: only 8 jobs for 4 slots, start-up and the wait for the last job weigh heavily"
        " (a smaller chunk_size spreads the work)",
        "  lost to: 0.72 s to start each job against 0.85 s of work per job"
        " (larger chunks pay it less often)",
        "outputs: 8 files under /tmp/rs/run3/outputs",
        "manifest: /tmp/rs/run3/fanout_manifest.json",
    ]
    assert "{" not in text and "'" not in text.replace("slots' time", "")  # no dict reprs


def test_demo_run_table_columns_align() -> None:
    lines = run_summary(recorded("step3_demo_local")).splitlines()
    table = lines[1:4]
    assert [ln.split() for ln in table] == [
        ["host", "slots", "done", "failed"],
        ["localhost", "2", "4", "0"],
        ["total", "2", "4", "0"],
    ]
    assert len({len(ln) for ln in table}) == 1  # right-aligned numbers end in the same column
    assert lines[5].startswith("efficiency 49%: share of the slots' time spent running jobs")


def test_incomplete_resumed_run_with_failures_units_and_a_busy_cluster() -> None:
    result = recorded("step3_cluster_left_out")
    result.update(
        complete=False,
        resumed=True,
        stopped="input error in c0003: history too short",
        jobs={"expected": 8, "completed": 6, "failed": 2, "split": 0},
        units={"completed": 1_500_000},
        failures=[
            {"job": "c0003", "host": "rig2", "reason": "exit 2: history too short", "action": "failed"}
        ],
        left_out={},
    )
    result["hosts"]["rig2"]["jobs_failed"] = 2
    result["timings"].update(scheduling_efficiency=0.91, busy_slot_s=13.4)
    lines = run_summary(result).splitlines()
    assert lines[0].endswith("(resumed run, /tmp/rs/run3): INCOMPLETE, 6 of 8 jobs done, 2 failed")
    assert lines[1] == "stopped: input error in c0003: history too short"
    assert "wall 3.7 s, 1.63 jobs/s, 408,274 seeds/s" in lines
    assert lines[-1] == "failure: c0003 on rig2: exit 2: history too short"
    assert not any(ln.startswith(("left out", "  lost to")) for ln in lines)  # 91%: kept busy


def test_no_result_and_the_filter_is_registered() -> None:
    assert run_summary(None) == "run summary: no fan-out result (NoneType)"
    assert FilterModule().filters()["run_summary"] is run_summary
    assert run_summary({"jobs": {}, "timings": {}}).splitlines()[-1] == "efficiency -: no slot ran a job"


def test_through_ansible() -> None:
    """The lead's playbooks call it as prng.cluster.run_summary: it resolves from the checkout."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)
    fixture = FIX / "step3_demo_local.json"
    proc = subprocess.run(
        [
            shutil.which("ansible", path=env["PATH"]) or "ansible",  # ansible-test puts its own on PATH
            "localhost",
            "-m",
            "ansible.builtin.debug",
            "-a",
            "msg={{ lookup('file', '" + str(fixture) + "') | from_json | prng.cluster.run_summary }}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "        localhost      2       4       0" in proc.stdout  # a block, not a repr
