"""The worker memory model measured where it runs (playbooks/measure_memory.yml) and used by
the planner for that host; the controller's model only as the fallback, said in the plan
(`--check` preview)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def test_memory_model_measured_on_a_host_is_the_one_its_plan_uses(make_cluster: Any, tmp_path: Path) -> None:
    numpy = {"worker_backend": "numpy"}
    c = make_cluster(
        [
            HostSpec("m1", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2, vars=numpy),
            HostSpec("m2", gpu_type="rocm", gpu_count=2, max_concurrent_jobs=2, groups=("rocm",), vars=numpy),
        ]
    )
    models = tmp_path / "data" / "memory_models"
    controller_model = tmp_path / "data" / "memory_model.json"
    controller_model.parent.mkdir(parents=True)
    shutil.copy(REPO / "data" / "memory_model.json", controller_model)
    proc = c.playbook(
        "playbooks/measure_memory.yml",
        "--limit",
        "m1,localhost",
        timeout=600,
        extra_vars={
            "memory_models_dir": str(models),
            "memory_grid_chunks": "100,400",
            "memory_grid_train": "500",
        },
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    measured = json.loads((models / "m1.json").read_text())
    assert measured["models"]["numpy"]["base_mb"] > 0 and not (models / "m2.json").exists()
    check = c.playbook(
        "playbooks/step3.yml",
        "--check",
        timeout=600,
        extra_vars={"step3_run_dir": str(tmp_path / "step3"), "step3_memory_model": str(controller_model)},
    )
    assert check.returncode == 0, check.stdout[-4000:]
    assert "memory model: measured on this host" in check.stdout  # m1
    assert "memory model: the controller's measurement (fallback)" in check.stdout  # m2
    assert '"jobs": 2' in check.stdout and '"eta"' in check.stdout
    assert not (tmp_path / "step3" / "journal.jsonl").exists()  # --check ran nothing
