"""`ansible-playbook playbooks/pipeline.yml` with no variables but the run folder (and a
private ramdisk root): the demo history goes through Step 1 and Step 3 on the embedded
local inventory, the planted seed is ranked first, and Step 1 reproduces the committed
demo survivors (scripts/make-demo-data) seed for seed; a rerun redoes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prng_workers.formats import read_survivors, survivors_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def shm_root() -> object:
    root = Path(f"/dev/shm/prng-pipeline-demo-{os.getpid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_pipeline_demo_ranks_the_planted_seed_first(tmp_path: Path, shm_root: Path) -> None:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)  # the checkout's ansible.cfg, as a user gets it
    run_dir = tmp_path / "pipeline"
    argv = [
        str(BIN / "ansible-playbook"),
        "playbooks/pipeline.yml",
        "-e",
        json.dumps({"run_dir": str(run_dir), "ramdisk_root": str(shm_root)}),
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    demo = json.loads((REPO / "demo" / "README.json").read_text())
    scored = json.loads((run_dir / "step3" / "survivors_with_scores.json").read_text())
    assert scored[0]["seed"] == demo["planted_seed"] and scored[0]["holdout_hits"] == 1.0
    # Step 1 on the demo is what the committed demo survivors claim to be
    step1 = read_survivors(run_dir / "step1" / "bidirectional_survivors.npz")
    committed = read_survivors(REPO / "demo" / "survivors.json")
    for key in ("seeds", "forward_match_rate", "reverse_match_rate", "score", "best_skip"):
        assert step1[key].tolist() == committed[key].tolist(), key
    params = survivors_params(run_dir / "step1" / "bidirectional_survivors.npz")
    assert params["direction"] == "bidirectional" and params["family"] == demo["family"]
    assert (params["seed_start"], params["seed_end"]) == (
        demo["step1"]["seed_start"],
        demo["step1"]["seed_stop"],
    )
    assert json.loads((run_dir / "train_history.json").read_text()) == json.loads(
        (REPO / "demo" / "train_history.json").read_text()
    )
    assert "top seeds: [{}".format(demo["planted_seed"]) in proc.stdout
    assert not [p for p in shm_root.iterdir() if not p.name.startswith(".")]  # every step cleared
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "Step 1 already finished" in again.stdout and "Step 3 already finished" in again.stdout
