"""Steps 2 and 5 through `playbooks/run_jobs.yml`: a jobs file in the old scripts_coordinator
format (job_id, script, args with --output, gpu_id; seed 002 §5.4) runs on a real 2-host SSH
test cluster with the step's files preloaded into each host's ramdisk, every job reading them
there; what the old format carries and we do not use is said."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prng_workers.formats import write_survivors
from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster

TRIAL = """
import argparse, json, os
import numpy as np
p = argparse.ArgumentParser()
p.add_argument("--survivors"); p.add_argument("--train-history"); p.add_argument("--trial", type=int)
p.add_argument("--output")
a = p.parse_args()
with np.load(a.survivors) as z:
    seeds = z["seeds"]
train = json.load(open(a.train_history))
json.dump({"trial": a.trial, "survivors": os.path.realpath(a.survivors), "n_seeds": int(seeds.size),
           "train": os.path.realpath(a.train_history), "train_len": len(train),
           "script": os.path.realpath(__file__), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")},
          open(a.output, "w"))
"""


def test_old_format_step2_jobs_run_with_their_files_on_the_ramdisk(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(
        [
            HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
            HostSpec("b", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        ]
    )
    data = tmp_path / "data"
    data.mkdir()
    survivors = data / "bidirectional_survivors_binary.npz"
    write_survivors(survivors, {"seeds": np.arange(5, 305, dtype=np.uint64)}, {"family": "java_lcg"})
    (data / "train_history.json").write_text(json.dumps(list(range(400))))
    (data / "scorer_trial_worker.py").write_text(TRIAL)
    jobs = [
        {
            "job_id": f"scorer_trial_{i:04d}",
            "script": "scorer_trial_worker.py",
            "args": [
                "--survivors",
                "/dev/shm/prng/bidirectional_survivors_binary.npz",  # the old ramdisk path
                "--train-history",
                "train_history.json",
                "--trial",
                str(i),
                "--output",
                f"scorer_trial_results/trial_{i:04d}.json",
            ],
            "gpu_id": i % 12,
        }
        for i in range(6)
    ]
    (tmp_path / "scorer_jobs.json").write_text(json.dumps({"jobs": jobs}))
    run_dir = tmp_path / "step2"
    inputs = [str(survivors), str(data / "train_history.json"), str(data / "scorer_trial_worker.py")]
    proc = c.playbook(
        "playbooks/run_jobs.yml",
        timeout=600,
        extra_vars={
            "jobs_file": str(tmp_path / "scorer_jobs.json"),
            "jobs_step": "step2",
            "jobs_inputs": inputs,
            "run_dir": str(run_dir),
        },
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-2000:]
    # what the old format carries and the fan-out does not use, or rewrites, is said
    assert "6 jobs" in out and "ignored gpu_id in 6 jobs" in out
    assert "6 output paths given as --output arguments" in out
    assert "18 arguments naming the step's files now read the host's ramdisk copy" in out
    m = json.loads((run_dir / "fanout_manifest.json").read_text())
    assert m["complete"] and m["jobs"]["completed"] == 6
    assert set(m["inputs"]) == {
        "jobs_file",
        "file:bidirectional_survivors_binary.npz",
        "file:train_history.json",
        "file:scorer_trial_worker.py",
    }
    hosts = set()
    for rec in m["outputs"]:
        res = json.loads((run_dir / rec["path"]).read_text())
        # every job read the survivors, the history and even its script from the host's ramdisk
        for key in ("survivors", "train", "script"):
            assert res[key].startswith("/dev/shm/prng/step2/"), res
        assert res["n_seeds"] == 300 and res["train_len"] == 400
        # the job's GPU is its slot's (gpu_id 0..5 in the file was ignored)
        assert res["gpu"] == rec["binding"]["CUDA_VISIBLE_DEVICES"] == str(rec["slot"])
        hosts.add(rec["host"])
    assert hosts == {"a", "b"}
    # each host holds the step's files once, verified (the manifest sentinel), not per job
    for name in ("a", "b"):
        step = c.hosts[name].shm / "prng" / "step2"
        assert (step / ".manifest.json").exists()
        assert sorted(p.name for p in step.iterdir() if not p.name.startswith(".")) == sorted(
            [
                "bidirectional_survivors_binary.npz",
                "bidirectional_survivors_binary.npz.meta.json",
                "scorer_jobs.json",
                "scorer_trial_worker.py",
                "train_history.json",
            ]
        )
