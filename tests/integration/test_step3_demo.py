"""The README's first command: `ansible-playbook playbooks/step3.yml` on a fresh checkout,
embedded local inventory, committed demo data, no extra variables (here only the run
folder is moved to a temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_step3_demo_runs_end_to_end_on_the_local_inventory(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)  # the checkout's ansible.cfg, as a user gets it
    proc = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/step3.yml",
                           "-e", json.dumps({"step3_run_dir": str(tmp_path / "step3")})],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    scored = json.loads((tmp_path / "step3" / "survivors_with_scores.json").read_text())
    survivors = json.loads((REPO / "demo" / "survivors.json").read_text())
    assert sorted(r["seed"] for r in scored) == sorted(r["seed"] for r in survivors)
    planted = json.loads((REPO / "demo" / "README.json").read_text())["planted_seed"]
    assert scored[0]["seed"] == planted and scored[0]["holdout_hits"] == 1.0
    manifest = json.loads((tmp_path / "step3" / "fanout_manifest.json").read_text())
    assert manifest["complete"] and manifest["inputs"]["survivors"]["sha256"]
