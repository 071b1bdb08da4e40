"""Check mode and idempotence of the host-facing playbooks, and diagnostics of misbehaving
hosts, on the SSH test cluster: every host's files (prng_home, worker venv, ramdisk) are
listed with sizes and mtimes before and after each run and compared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cluster import HostSpec
from tests.integration.test_diagnostics import fixture_vars
from tests.integration.test_setup import DEPLOY_VARS, recap

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FILES = {"ramdisk_step": "step3", "ramdisk_hosts": "testcluster"}
FILES["ramdisk_files"] = ["demo/train_history.json", "demo/holdout_history.json"]  # type: ignore[assignment]


def snapshot(c) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every path under each host's home (prng_home, venv) and /dev/shm."""
    out = {}
    for name, host in c.hosts.items():
        for label, base in (("home", Path(host.home) / "home"), ("shm", host.shm)):
            for folder, dirs, files in os.walk(base):
                for entry in dirs + files:
                    path = Path(folder) / entry
                    st = path.lstat()
                    out[f"{name}:{label}:{path.relative_to(base)}"] = (st.st_size, st.st_mtime_ns)
    return out


def test_check_mode_changes_nothing_and_second_runs_change_nothing(make_cluster, tmp_path: Path) -> None:
    venv = {"worker_venv": "{{ prng_home }}/venv", "worker_backend": "numpy"}
    c = make_cluster([HostSpec("a", vars=dict(venv)), HostSpec("b", gpu_type="cuda", gpu_count=2, vars=venv)])
    deploy = dict(DEPLOY_VARS, setup_hosts="testcluster", worker_deploy_source=str(ROOT / "workers"))

    def run(path: str, *args: str, extra: dict, check: bool) -> str:
        before = snapshot(c)
        res = c.playbook(path, *args, extra_vars=extra)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
        if check:
            assert snapshot(c) == before, f"{path} {args} changed files on a host"
        return res.stdout

    # a fresh host in check mode: nothing installed, no venv created, no env file written
    run("playbooks/setup.yml", "--check", extra=deploy, check=True)
    assert not (Path(c.hosts["a"].home) / "home" / "venv").exists()
    run("playbooks/setup.yml", extra=deploy, check=False)
    out = run("playbooks/setup.yml", "--check", extra=deploy, check=True)
    assert all(r["changed"] == 0 for r in recap(out).values()), out[-3000:]

    run("playbooks/ramdisk_preload.yml", "--check", extra=FILES, check=True)
    assert not (c.hosts["a"].shm / "prng" / "step3").exists()
    run("playbooks/ramdisk_preload.yml", extra=FILES, check=False)
    out = run("playbooks/ramdisk_preload.yml", "--check", extra=FILES, check=True)
    for _ in range(2):  # the second preload of the same files: nothing sent, nothing changed
        out = run("playbooks/ramdisk_preload.yml", extra=FILES, check=False)
        assert "(0 Bytes sent to 0, 2 already had it)" in out, out[-3000:]
        assert all(r["changed"] == 0 for r in recap(out).values()), out[-3000:]

    step3_dir = tmp_path / "step3"
    run("playbooks/step3.yml", "--check", extra={"step3_run_dir": str(step3_dir)}, check=True)
    assert not step3_dir.exists()
    run("playbooks/measure_memory.yml", "--check", extra={"fanout_group": "testcluster",
        "memory_models_dir": str(tmp_path / "models")}, check=True)  # fmt: skip
    assert not (tmp_path / "models").exists()

    clear = {"ramdisk_hosts": "testcluster"}
    run("playbooks/ramdisk_clear.yml", "--check", extra=clear, check=True)
    assert (c.hosts["a"].shm / "prng" / "step3" / "train_history.json").exists()
    run("playbooks/ramdisk_clear.yml", extra=clear, check=False)
    out = run("playbooks/ramdisk_clear.yml", extra=clear, check=False)
    assert all(r["changed"] == 0 for r in recap(out).values()), out[-3000:]
    assert "0 step(s) removed" in out


def test_diagnostics_of_misbehaving_hosts_in_check_mode(make_cluster, tmp_path: Path) -> None:
    """Driver not loaded, no GPU tool at all, /dev/shm missing, no worker venv: one line
    each with the right fix; check mode writes no report and says so."""
    c = make_cluster(
        [
            HostSpec(
                "nodrv",
                gpu_type="cuda",
                gpu_count=2,
                vars=fixture_vars("nvidia_driver_not_loaded", "clean.log"),
            ),
            HostSpec(
                "notool",
                gpu_type="cuda",
                gpu_count=4,
                vars=dict(
                    fixture_vars("no_tool", "clean.log"), diagnostics_sysfs_root=str(tmp_path / "no-sys")
                ),
            ),
            HostSpec(
                "noshm",
                vars=dict(
                    fixture_vars("no_tool", "clean.log"),
                    diagnostics_shm_path=str(tmp_path / "no-shm"),
                    diagnostics_ramdisk_root=str(tmp_path / "no-shm" / "prng"),
                ),
            ),
            HostSpec(
                "novenv",
                vars=dict(fixture_vars("no_tool", "clean.log"), worker_venv=str(tmp_path / "no-venv")),
            ),
        ]
    )
    report_dir = tmp_path / "report"
    before = snapshot(c)
    res = c.playbook(
        "playbooks/diagnostics.yml",
        "--check",
        extra_vars={"diagnostics_hosts": "testcluster", "diagnostics_report_dir": str(report_dir)},
        ANSIBLE_NOCOLOR="1",
    )
    out = res.stdout
    assert res.returncode == 0 and "Traceback" not in out + res.stderr, out[-4000:] + res.stderr[-2000:]
    assert snapshot(c) == before and not report_dir.exists()
    # the table does not point at a report that was not written (or at an older one)
    assert "Actions (check mode: no report written):" in out, out[-3000:]
    text = " ".join(out.split())  # the YAML callback folds long lines
    # nvidia-smi is there but cannot reach the driver: fix the driver, not "install a tool"
    assert "nodrv [warning] gpu_tool: 2 GPUs seen in sysfs only" in text
    assert "-> Fix nvidia-smi (error above): load or reinstall the GPU driver" in text
    # no tool and no GPU seen: install the driver, not "check risers"
    assert (
        "notool [critical] gpu_count: 0 of 4 expected GPUs found: no GPU tool (nvidia-smi, amd-smi, rocm-smi)"
        " on this host -> Install the GPU driver and its tool" in text
    ), text[-3000:]
    assert f"noshm [critical] shm: {tmp_path}/no-shm missing" in text
    assert f"-> Mount a tmpfs at {tmp_path}/no-shm (or set diagnostics_shm_path)" in text
    assert f"novenv [critical] workers: no workers installed in {tmp_path}/no-venv" in text
    # the facts modules ad hoc, in check mode too: results, not tracebacks
    for module in ("gpu_facts", "memory_facts", "kernel_log"):
        res = c.ansible("nodrv", "-m", f"prng.cluster.{module}", "--check", ANSIBLE_NOCOLOR="1")
        assert res.returncode == 0 and res.stdout.startswith("nodrv | SUCCESS"), res.stdout[-2000:]
