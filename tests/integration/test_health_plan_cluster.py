"""GPU health drives the plan on a real SSH host (i23, i24): a ROCm host whose rocm-smi
(captured output of a real rig, served by the stand-in tool) shows GPU 7 as N/A gets 11
slots, and no job is ever bound to GPU 7; the operator's override restores all 12."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import HostSpec
from tests.integration.test_check_inventory import gpu_vars

pytestmark = pytest.mark.cluster


def run(make_cluster: Any, tmp_path: Path, **extra_vars: Any) -> dict:
    rig = {**gpu_vars("rig6600_rocm_smi_hung"), "worker_backend": "numpy", **extra_vars}
    c = make_cluster(
        [HostSpec("rig", gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12, groups=("rocm",), vars=rig)]
    )
    run_dir = tmp_path / "step3"
    proc = c.playbook(
        "playbooks/step3.yml", extra_vars={"step3_run_dir": str(run_dir), "step3_chunk_size": 100}
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return json.loads((run_dir / "fanout_manifest.json").read_text())


def test_i24_an_na_gpu_gets_no_slot_and_no_job_is_bound_to_it(make_cluster: Any, tmp_path: Path) -> None:
    fan = run(make_cluster, tmp_path)
    assert fan["complete"] and fan["hosts"]["rig"]["slots"] == 11, fan["hosts"]["rig"]
    assert "usable_gpus=[0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]" in fan["hosts"]["rig"]["slot_reason"]
    bound = {o["binding"]["HIP_VISIBLE_DEVICES"] for o in fan["outputs"]}
    assert bound and "7" not in bound and bound <= {str(i) for i in range(12)}


def test_i24_gpu_health_policy_ignore_restores_the_gpu(make_cluster: Any, tmp_path: Path) -> None:
    fan = run(make_cluster, tmp_path, gpu_health_policy="ignore")
    assert fan["complete"] and fan["hosts"]["rig"]["slots"] == 12
