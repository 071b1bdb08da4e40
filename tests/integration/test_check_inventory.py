"""playbooks/check_inventory.yml on the SSH test cluster: a good host, a GPU host with one
hung GPU of 12 (stand-in rocm-smi printing the captured output), a broken host (a bad
variable, no workers installed, a full /dev/shm) and one that does not answer. The table
says which are ready, each problem comes with its fix, the last line sums it up, and the
exit status is non-zero while a host is not ready."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import Cluster, HostSpec

pytestmark = pytest.mark.cluster

FIX = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def gpu_vars(scenario: str) -> dict:
    base = FIX / "gpu_tools" / scenario
    return {
        "gpu_health_search_path": [str(base / "bin")],
        "gpu_health_sysfs_root": str(base / "sys"),
        "gpu_health_proc_root": str(base / "proc"),
        "gpu_health_rocm_path": str(base / "rocm"),
        "gpu_health_kernel_log_file": str(FIX / "kernel_log" / "clean.log"),
        "gpu_health_policy": "exclude",  # the harness ignores health on hosts without tools
    }


def block(stdout: str, task: str) -> list[str]:
    """The lines of a debug task's `msg: |-` block (its last run)."""
    part = stdout.rsplit(f"TASK [{task}]", 1)[1].split("\nTASK [", 1)[0].split("\nPLAY RECAP", 1)[0]
    lines = part.split("msg: |-\n", 1)[1].splitlines()
    return [ln[8:] for ln in lines if ln.startswith("        ")]


def test_check_inventory_good_gpu_broken_and_unreachable_hosts(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(
        [
            HostSpec("good", shm_mb=32, max_concurrent_jobs=2),
            HostSpec(
                "rig",
                shm_mb=32,
                gpu_type="rocm",
                gpu_count=12,
                groups=("rocm",),
                vars=gpu_vars("rig6600_rocm_smi_hung"),
            ),
            HostSpec(
                "broken", shm_mb=16, vars={"gpu_health_policy": "skip", "worker_venv": "/nonexistent/venv"}
            ),
            HostSpec("gone"),
        ]
    )
    c.fill_shm("broken", 14)  # 14 of 16 MiB: a preload would be refused (i25)
    c.kill_sshd("gone")
    res = c.playbook("playbooks/check_inventory.yml", extra_vars={"check_hosts": "testcluster"})
    assert res.returncode != 0, res.stdout[-3000:]
    table = block(res.stdout, "Print what is ready and what is not, with the fix for each")
    rows = {ln.split()[0]: ln.split() for ln in table[1:5]}
    assert table[0].split() == [
        "host",
        "ready",
        "vars",
        "ssh",
        "python",
        "workers",
        "GPUs",
        "memory",
        "/dev/shm",
    ]
    assert rows["good"][1:4] == ["yes", "ok", "ok"] and rows["good"][6:8] == ["ok", "cpu"]
    assert rows["rig"][1] == "yes" and rows["rig"][7] == "11/12"
    assert rows["broken"][1:4] == ["NO", "BAD", "ok"] and rows["broken"][6] == "DIFFERS"
    assert re.search(r"  8\d% of 16 MiB$", next(ln for ln in table if ln.startswith("broken")))
    assert rows["gone"][1:4] == ["NO", "ok", "NO"]
    text = "\n".join(table)
    # each problem with its fix
    assert re.search(r"broken \[NOT READY\] vars: .*gpu_health_policy.*skip", text), text
    assert "broken [NOT READY] workers: no workers installed in /nonexistent/venv" in text
    assert "    fix: ansible-playbook -i <inventory> playbooks/setup.yml --limit broken" in text
    assert re.search(
        r"broken \[NOT READY\] shm: /dev/shm 8\d\.\d% used: a preload is refused above 80%", text
    )
    assert "    fix: ansible-playbook -i <inventory> playbooks/ramdisk_clear.yml --limit broken" in text
    assert "rig [warning] gpus: 11 of 12 GPUs usable; left out 7 (GPU 7: " in text
    assert "gone [NOT READY] ssh: unreachable" in text and "ansible gone -m ansible.builtin.ping" in text
    assert "good [" not in text  # nothing to fix there
    assert "fatal: [localhost]" in res.stdout
    assert (
        "check_inventory: 2 of 4 host(s) ready; not ready: broken (vars, workers, shm), gone (ssh)"
        in res.stdout
    )
    # report only: the same table, exit 0, the line last
    res = c.playbook(
        "playbooks/check_inventory.yml", extra_vars={"check_hosts": "good:rig", "check_inventory_fail": False}
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert block(res.stdout, "Result")[-1] == "check_inventory: 2 of 2 host(s) ready; not ready: none"
