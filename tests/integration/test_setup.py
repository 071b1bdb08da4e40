"""playbooks/setup.yml on the SSH test cluster: the same worker version everywhere, a host
with other worker code caught before any job runs (i20), the env file per GPU vendor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "gpu_tools"
# Fast, offline installs: a venv without pip seeing this Python's packages, filled by this
# venv's pip (--python) from the wheel built once on the controller.
DEPLOY_VARS = {
    "worker_deploy_python": sys.executable,
    "worker_deploy_venv_pip": False,
    "worker_deploy_install_deps": False,
}

PREFLIGHT = """
- name: Preflight then dispatch, as a step playbook does
  hosts: testcluster
  gather_facts: false
  tasks:
    - name: Every host runs the controller's worker package (i20)
      ansible.builtin.include_role:
        name: prng.cluster.worker_deploy
        tasks_from: verify
    - name: Stand-in for a dispatched job
      ansible.builtin.command:
        argv: ["{{ worker_deploy_venv_abs }}/bin/prng-workers", "version"]
      register: job
      changed_when: true
    - name: Record that the job ran
      ansible.builtin.copy:
        content: "{{ job.stdout }}"
        dest: "{{ prng_home }}/job-ran.json"
        mode: "0644"
"""


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(
        r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M
    ):
        rows[m.group(1)] = {
            "ok": int(m.group(2)),
            "changed": int(m.group(3)),
            "unreachable": int(m.group(4)),
            "failed": int(m.group(5)),
        }
    return rows


def installed_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "prng-workers"), "version"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["version"]


def package_dir(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import prng_workers; print(prng_workers.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).parent


def test_i20_setup_deploys_one_version_and_preflight_stops_a_different_host(
    make_cluster, tmp_path: Path
) -> None:
    # the controller's code, frozen for the test (the checkout may change while it runs)
    source = tmp_path / "workers"
    shutil.copytree(
        ROOT / "workers", source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build")
    )
    version = re.search(r'__version__ = "([^"]+)"', (source / "prng_workers/__init__.py").read_text()).group(
        1
    )
    deploy = dict(DEPLOY_VARS, setup_hosts="testcluster", worker_deploy_source=str(source))
    rig = tmp_path / "rig-gpu"
    shutil.copytree(FIX / "rig6600_rocm_smi_healthy", rig / "scenario", symlinks=True)
    shutil.copy(FIX / "fake_smi.py", rig / "fake_smi.py")
    venv = {"worker_venv": "{{ prng_home }}/venv"}
    c = make_cluster(
        [
            HostSpec("cpu2", vars=dict(venv)),
            HostSpec(
                "rig",
                gpu_type="rocm",
                gpu_count=12,
                groups=("rocm",),
                vars=dict(
                    venv,
                    gpu_env_tool_search_path=[str(rig / "scenario/bin")],
                    gpu_env_sysfs_root=str(rig / "scenario/sys"),
                    gpu_env_proc_root=str(rig / "scenario/proc"),
                    gpu_env_rocm_path=str(rig / "scenario/rocm"),
                ),
            ),
        ]
    )
    homes = {h: Path(c.hosts[h].home) / "home" for h in c.hosts}

    res = c.playbook("playbooks/setup.yml", extra_vars=deploy)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    for home in homes.values():
        assert installed_version(home / "venv") == version
        assert package_dir(home / "venv").is_relative_to(home / "venv")
        env = (home / "worker.env").read_text()
        assert "VISIBLE_DEVICES=" not in env
    rig_env = (homes["rig"] / "worker.env").read_text()
    assert "export HSA_OVERRIDE_GFX_VERSION=10.3.0" in rig_env and "export HSA_ENABLE_SDMA=0" in rig_env
    assert "export ROCM_PATH=" in rig_env and "export PYTORCH_HIP_ALLOC_CONF=" in rig_env
    assert "HSA_" not in (homes["cpu2"] / "worker.env").read_text()

    # idempotent: a second run changes nothing anywhere
    res = c.playbook("playbooks/setup.yml", extra_vars=deploy)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert all(r["changed"] == 0 for r in recap(res.stdout).values()), res.stdout[-3000:]

    # i20: cpu2 loses part of the worker code (same version string)
    (package_dir(homes["cpu2"] / "venv") / "atomic.py").unlink()
    play = tmp_path / "preflight.yml"
    play.write_text(PREFLIGHT)
    res = c.playbook(str(play), extra_vars={"worker_deploy_source": str(source)})
    assert res.returncode != 0
    rows = recap(res.stdout)
    assert rows["cpu2"]["failed"] == 1 and rows["rig"]["failed"] == 0
    assert "cpu2: worker package differs from the controller's: same version" in res.stdout
    assert not (homes["cpu2"] / "job-ran.json").exists()  # caught before its job ran
    assert (homes["rig"] / "job-ran.json").exists()

    # setup repairs it, then the preflight passes everywhere
    res = c.playbook("playbooks/setup.yml", extra_vars=deploy)
    assert res.returncode == 0 and recap(res.stdout)["cpu2"]["changed"] > 0
    assert (package_dir(homes["cpu2"] / "venv") / "atomic.py").exists()
    res = c.playbook(str(play), extra_vars={"worker_deploy_source": str(source)})
    assert res.returncode == 0, res.stdout[-3000:]
    assert (homes["cpu2"] / "job-ran.json").exists()
