"""playbooks/diagnostics.yml and the facts modules on the SSH test cluster.

Hosts have no GPU: the GPU tools are stand-ins printing stored outputs (tests/fixtures/
gpu_tools); memory, /dev/shm, cgroups, SSH and the report files are real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
M = 1024 * 1024


def fixture_vars(scenario: str, kernel_log: str) -> dict:
    base = FIX / "gpu_tools" / scenario
    return {
        "diagnostics_tool_search_path": [str(base / "bin")],
        "diagnostics_sysfs_root": str(base / "sys"),
        "diagnostics_proc_root": str(base / "proc") if (base / "proc" / "meminfo").exists() else "/proc",
        "diagnostics_rocm_path": str(base / "rocm"),
        "diagnostics_kernel_log_file": str(FIX / "kernel_log" / kernel_log),
    }


def adhoc_json(c, host: str, module: str, args: str = "") -> dict:
    """Run one module ad hoc (ansible HOST -m MODULE -a ARGS) and return its result."""
    argv = [host, "-m", module] + (["-a", args] if args else [])
    res = c.ansible(*argv, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert res.stdout.startswith(f"{host} | SUCCESS => "), res.stdout[:500]
    return json.loads(res.stdout.split("=> ", 1)[1])


def test_i23_i24_diagnostics_report_for_all_hosts(make_cluster, tmp_path: Path) -> None:
    c = make_cluster(
        [
            HostSpec(
                "rig",
                gpu_type="rocm",
                gpu_count=12,
                groups=("rocm",),
                vars=dict(
                    fixture_vars("rig6600_rocm_smi_hung", "rig6600_oom_amdgpu.log"),
                    diagnostics_ramdisk_steps=["step3"],
                ),
            ),
            HostSpec(
                "zeus",
                gpu_type="cuda",
                gpu_count=2,
                groups=("cuda",),
                vars=fixture_vars("zeus_nvidia_exclusive", "zeus_xid.log"),
            ),
            HostSpec("small", shm_mb=16, vars=fixture_vars("no_tool", "clean.log")),
            HostSpec("gone"),
        ]
    )
    c.fill_shm("small", 14)  # 14 of 16 MiB: above the 80 % line (i25)
    c.kill_sshd("gone")
    report_dir = tmp_path / "report"
    res = c.playbook(
        "playbooks/diagnostics.yml",
        extra_vars={
            "diagnostics_hosts": "testcluster",
            "diagnostics_report_dir": str(report_dir),
            "diagnostics_hip_cache_root": str(tmp_path / "no-cache"),
        },
    )
    # rc 4: a host was unreachable; the report is still written for every host
    assert res.returncode == 4, res.stdout[-4000:] + res.stderr[-2000:]
    report = json.loads((report_dir / "diagnostics.json").read_text())
    assert sorted(report["hosts"]) == ["gone", "rig", "small", "zeus"]
    sev = {h: {f["check"]: f["severity"] for f in r["findings"]} for h, r in report["hosts"].items()}

    rig = report["hosts"]["rig"]
    assert sev["rig"]["gpu_health"] == "critical"  # i24
    assert next(f for f in rig["findings"] if f["check"] == "gpu_health")["message"].startswith("GPU 7 ")
    assert sev["rig"]["oom_kills"] == sev["rig"]["amdgpu_errors"] == "critical"
    assert sev["rig"]["ramdisk"] == "warning" and sev["rig"]["gfxoff"] == "warning"
    assert rig["memory"]["limit_mb"] == 7885 and rig["gpus"]["healthy"] == 11

    assert sev["zeus"]["gpu_compute_mode"] == "warning"  # i23
    assert sev["zeus"]["nvidia_xid"] == "critical"

    small = report["hosts"]["small"]
    assert sev["small"]["shm"] == "critical" and small["shm"]["size_mb"] == 16
    assert small["shm"]["used_mb"] >= 14  # the host's own /dev/shm, read through SSH

    assert report["hosts"]["gone"]["findings"][0]["check"] == "reachable"
    assert report["worst"] == "critical"
    html = (report_dir / "diagnostics.html").read_text()
    assert "<svg" in html and all(f">{h}<" in html for h in ("rig", "zeus", "small", "gone"))
    # the table on screen
    assert re.search(r"rig\s+critical\s+3072/7885 MiB", res.stdout)
    assert "Reboot node or reseat GPU" in res.stdout


def test_gpu_facts_ad_hoc_over_ssh(make_cluster) -> None:
    base = FIX / "gpu_tools" / "rig6600_amd_smi_hung"
    c = make_cluster([HostSpec("rig", gpu_type="rocm", gpu_count=12)])
    out = adhoc_json(
        c,
        "rig",
        "prng.cluster.gpu_facts",
        f"search_path={base}/bin sysfs_root={base}/sys proc_root={base}/proc expected_count=12",
    )
    assert (out["tool"], out["count"], out["arch"], out["unhealthy"]) == ("amd-smi", 12, "gfx1032", [3])
    none = adhoc_json(
        c, "rig", "prng.cluster.gpu_facts", f"search_path={FIX}/gpu_tools/no_tool/bin sysfs_root=/nonexistent"
    )
    # this machine has no GPU tool and no GPU: degrade, do not fail
    assert none["count"] == 0 and none["gpu_type"] == "cpu"


def _memory_cgroup_dir() -> tuple[Path, str, Path] | None:
    """(parent dir, limit file, root procs file) of a writable memory cgroup hierarchy."""
    if os.geteuid() != 0:
        return None
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "memory" in v2.read_text().split():
        return Path("/sys/fs/cgroup"), "memory.max", Path("/sys/fs/cgroup/cgroup.procs")
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        return v1, "memory.limit_in_bytes", v1 / "cgroup.procs"
    return None


def test_i26_memory_facts_read_the_hosts_cgroup_limit_over_ssh(make_cluster) -> None:
    """A host whose processes live in a 768 MiB memory cgroup reports 768 MiB, not the RAM."""
    found = _memory_cgroup_dir()
    if found is None:
        pytest.skip("needs root and a writable memory cgroup")
    parent, limit_file, root_procs = found
    c = make_cluster([HostSpec("box"), HostSpec("free")])
    cg = parent / f"prng-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    moved: list[str] = []
    try:
        (cg / limit_file).write_text(str(768 * M))
        netns = subprocess.run(
            ["ip", "netns", "identify", str(c.hosts["box"].sshd_pid)], capture_output=True, text=True
        ).stdout.strip()
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:  # sshd and everything it starts from now on
            try:
                (cg / "cgroup.procs").write_text(pid)
                moved.append(pid)
            except OSError:
                pass
        assert str(c.hosts["box"].sshd_pid) in moved
        # `ip netns exec` remounts /sys inside a test host, which hides /sys/fs/cgroup there:
        # mount the same hierarchy back, as a real host has it
        if limit_file == "memory.limit_in_bytes":
            mounts = [
                ["mount", "-t", "tmpfs", "cgroup_root", "/sys/fs/cgroup"],
                ["mkdir", "/sys/fs/cgroup/memory"],
                ["mount", "-t", "cgroup", "-o", "memory", "memory", "/sys/fs/cgroup/memory"],
            ]
        else:
            mounts = [["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"]]
        for name in ("box", "free"):
            for argv in mounts:
                done = c.exec(name, argv)
                assert done.returncode == 0, done.stderr
        args = "worker_mb=100 margin_pct=20"
        box = adhoc_json(c, "box", "prng.cluster.memory_facts", args)
        free = adhoc_json(c, "free", "prng.cluster.memory_facts", args)
        assert box["limit_bytes"] == 768 * M and box["limit_source"] in ("cgroup_v1", "cgroup_v2")
        assert free["limit_source"] == "meminfo" or free["limit_bytes"] > 768 * M
        assert box["workers_fit"] <= int(768 * 0.8 // 100) < free["workers_fit"]
    finally:
        c.stop()  # ends every process of the hosts, so the cgroup empties
        for pid in moved:
            try:
                root_procs.write_text(pid)
            except OSError:
                pass
        cg.rmdir()
