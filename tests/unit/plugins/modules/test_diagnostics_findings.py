"""The diagnostic battery (seed 002 §8.6): kernel log parsing, findings and their actions.

Run on stored kernel logs and GPU tool outputs (tests/fixtures/kernel_log, gpu_tools) and
on real folders made here (HIP caches, ramdisk steps).
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible.module_utils.testing import patch_module_args  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import diagnostics as dg  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import gpu_tools  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.kernel_log import parse_kernel_log, read_kernel_log  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import host_diagnostics, kernel_log  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
NOWHERE = "/nonexistent/prng-test"


def run_module(mod, args: dict) -> tuple[int, dict]:
    buf = io.StringIO()
    with patch_module_args(args), redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        mod.main()
    return int(exc.value.code or 0), json.loads(buf.getvalue())


def by_check(findings: list) -> dict:
    out: dict = {}
    for f in findings:
        out.setdefault(f["check"], []).append(f)
    return out


def gpu_probe(scenario: str) -> dict:
    base = FIX / "gpu_tools" / scenario
    paths = {
        k: str(base / "bin" / v) if (base / "bin" / v).exists() else NOWHERE
        for k, v in (("amd_smi", "amd-smi"), ("rocm_smi", "rocm-smi"), ("nvidia_smi", "nvidia-smi"))
    }
    return gpu_tools.probe(
        paths, sysfs_root=str(base / "sys"), rocm_path=str(base / "rocm"), proc_root=str(base / "proc")
    )


def test_kernel_log_oom_and_amdgpu_errors() -> None:
    k = parse_kernel_log((FIX / "kernel_log/rig6600_oom_amdgpu.log").read_text())
    assert k["oom_kill_count"] == 2 and k["oom_invocations"] == 2
    assert [(x["pid"], x["process"]) for x in k["oom_kills"]] == [(41877, "python3"), (41880, "python3")]
    # SMU hang, failed gfxoff change, ring timeout (2 lines), reset; init lines are not errors
    assert k["amdgpu_error_count"] == 5
    assert not any(
        "Initialized amdgpu" in line or "SMU is initialized" in line for line in k["amdgpu_errors"]
    )
    assert k["nvidia_xid_count"] == 0


def test_kernel_log_nvidia_xid_and_clean_log() -> None:
    k = parse_kernel_log((FIX / "kernel_log/zeus_xid.log").read_text())
    assert k["nvidia_xid"][0]["xid"] == 79 and k["nvidia_xid"][0]["pci"] == "0000:65:00"
    clean = parse_kernel_log((FIX / "kernel_log/clean.log").read_text())
    assert (clean["oom_kill_count"], clean["amdgpu_error_count"], clean["nvidia_xid_count"]) == (0, 0, 0)


def test_kernel_log_unreadable_degrades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no dmesg / journalctl on PATH: not readable, with the reasons, no exception
    monkeypatch.setenv("PATH", str(tmp_path))
    text, source, errors = read_kernel_log(["dmesg", "journalctl"])
    assert text is None and source is None and len(errors) == 2
    f = dg.kernel_findings(dict(parse_kernel_log(""), readable=False, source=None, errors=errors))
    assert f[0]["severity"] == "info" and "become" in f[0]["action"]
    rc, out = run_module(kernel_log, {})
    assert rc == 0 and out["readable"] is False and out["oom_kill_count"] == 0


def test_kernel_log_module_on_saved_log() -> None:
    rc, out = run_module(
        kernel_log, {"log_file": str(FIX / "kernel_log/rig6600_oom_amdgpu.log"), "max_lines": 1}
    )
    assert rc == 0 and out["source"] == "file" and out["oom_kill_count"] == 2 and len(out["oom_kills"]) == 1


def test_i24_gpu_findings_hung_rig_actions() -> None:
    f = by_check(dg.gpu_findings(gpu_probe("rig6600_rocm_smi_hung"), 12, "rocm"))
    assert [x["severity"] for x in f["gpu_health"]] == ["critical"]
    assert f["gpu_health"][0]["message"].startswith("GPU 7 ")
    assert f["gpu_health"][0]["action"] == "Reboot node or reseat GPU (SMU communication failure)"
    assert f["gfxoff"][0]["severity"] == "warning"
    assert "gpu_count" not in f


def test_i24_amd_smi_na_clocks_action_is_reboot() -> None:
    gpu = gpu_probe("rig6600_amd_smi_hung")
    # without the UNKNOWN perf level the N/A clocks alone mean: reboot
    gpu["gpus"][3]["problems"] = [p for p in gpu["gpus"][3]["problems"] if "performance level" not in p]
    f = by_check(dg.gpu_findings(gpu, 12))
    assert f["gpu_health"][0]["action"] == "Reboot node (GPU not responding)"


def test_i23_gpu_findings_exclusive_process_is_a_warning_with_the_fix() -> None:
    f = by_check(dg.gpu_findings(gpu_probe("zeus_nvidia_exclusive"), 2, "cuda"))
    assert "gpu_health" not in f  # a mode, not a broken GPU
    assert f["gpu_compute_mode"][0]["severity"] == "warning"
    assert "gpu_env_set_compute_mode=true" in f["gpu_compute_mode"][0]["action"]


def test_gpu_findings_missing_gpus_and_no_tool() -> None:
    f = by_check(dg.gpu_findings(gpu_probe("sysfs_amd_no_tool"), 12, "rocm"))
    assert f["gpu_count"][0]["severity"] == "critical" and "2 of 12" in f["gpu_count"][0]["message"]
    assert any("sysfs only" in x["message"] for x in f["gpu_tool"])
    cpu = by_check(dg.gpu_findings(gpu_probe("no_tool"), 0, "cpu"))
    assert cpu["gpu_health"][0] == dg.finding("gpu_health", "ok", "no GPU (CPU host)")


def test_memory_and_shm_thresholds() -> None:
    mem = {"available_mb": 3000, "limit_mb": 7885, "limit_source": "meminfo", "host_total_mb": 7885}
    assert by_check(dg.memory_findings(mem, 4096))["memory"][0]["severity"] == "warning"
    mem2 = dict(mem, limit_source="cgroup_v2", limit_mb=4096, available_mb=3000, host_total_mb=282 * 1024)
    f = by_check(dg.memory_findings(mem2, 2048))
    assert f["memory_limit"][0]["severity"] == "info" and f["memory"][0]["severity"] == "ok"
    shm = {"present": True, "path": "/dev/shm", "used_mb": 50, "size_mb": 64, "used_percent": 78.1}
    assert dg.shm_findings(shm, 50, 80)[0]["severity"] == "warning"
    assert dg.shm_findings(dict(shm, used_percent=80.0), 50, 80)[0]["severity"] == "critical"
    assert dg.shm_findings(dict(shm, used_percent=10.0), 50, 80)[0]["severity"] == "ok"
    assert (
        dg.shm_findings({"present": False, "path": "/x", "error": "gone"}, 50, 80)[0]["severity"]
        == "critical"
    )


def test_hip_cache_size_and_symlinks_not_followed(tmp_path: Path) -> None:
    (tmp_path / "hip_a").mkdir()
    (tmp_path / "hip_a" / "k.hsaco").write_bytes(b"x" * 3 * 1024 * 1024)
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / "big").write_bytes(b"x" * 5 * 1024 * 1024)
    (tmp_path / "hip_link").symlink_to(tmp_path / "pip")  # must not count pip's 5 MiB
    cache = dg.hip_cache_usage(str(tmp_path), ["hip_*"])
    assert [e["name"] for e in cache["entries"]] == ["hip_a", "hip_link"]
    assert cache["total_mb"] == 3
    assert dg.hip_cache_findings(cache, 2)[0]["severity"] == "warning"
    assert dg.hip_cache_findings(cache, 1024)[0]["severity"] == "ok"


def test_ramdisk_findings_on_real_folders(tmp_path: Path) -> None:
    root = tmp_path / "prng"
    (root / "step3").mkdir(parents=True)
    (root / "step3" / "train_history.json").write_text("[1, 2, 3]")
    status = dg.ramdisk_status(str(root))
    assert [s["step"] for s in status["steps"]] == ["step3"]
    f = dg.ramdisk_findings(status, ["step3", "step1"])
    msgs = " | ".join(x["message"] for x in f)
    assert "step1 not loaded" in msgs and "step3 is incomplete" in msgs  # no sentinel manifest
    assert all(x["severity"] == "warning" and "ramdisk_preload" in x["action"] for x in f)
    assert dg.ramdisk_findings(dg.ramdisk_status(str(tmp_path / "none")), [])[0]["severity"] == "ok"


def test_host_diagnostics_module_on_the_hung_rig(tmp_path: Path) -> None:
    base = FIX / "gpu_tools" / "rig6600_rocm_smi_hung"
    rc, out = run_module(
        host_diagnostics,
        {
            "search_path": [str(base / "bin")],
            "sysfs_root": str(base / "sys"),
            "proc_root": str(base / "proc"),
            "rocm_path": str(base / "rocm"),
            "expected_gpus": 12,
            "gpu_type": "rocm",
            "kernel_log_file": str(FIX / "kernel_log/rig6600_oom_amdgpu.log"),
            "ramdisk_root": str(tmp_path / "prng"),
            "hip_cache_root": str(tmp_path),
        },
    )
    assert rc == 0 and out["changed"] is False and out["worst"] == "critical"
    sev = [f["severity"] for f in out["findings"]]
    assert sev == sorted(sev, key=lambda s: -dg.SEVERITIES.index(s))  # worst first
    checks = {f["check"]: f["severity"] for f in out["findings"]}
    assert checks["gpu_health"] == checks["oom_kills"] == checks["amdgpu_errors"] == "critical"
    assert checks["memory"] == "warning"  # 3 GiB available on the 7.7 GB rig
    assert out["memory"]["limit_mb"] == 7885 and out["gpu"]["unhealthy"] == [7]
    rc, out = run_module(host_diagnostics, {"shm_warn_pct": 90, "shm_crit_pct": 80})
    assert rc == 1 and "shm_warn_pct" in out["msg"]


def test_a_ramdisk_root_the_ramdisk_refuses_is_a_finding_not_a_listing_of_it(tmp_path: Path) -> None:
    # before: any error fell back to listing the folder itself, so /etc showed its
    # sub-folders as "incomplete" steps and the refusal was never said
    for root in ("/etc", "relative/prng"):
        status = dg.ramdisk_status(root)
        assert status["steps"] == [] and "refusing" in status["error"], status
        (f,) = dg.ramdisk_findings(status, ["step3"])
        assert f["severity"] == "warning" and "refusing" in f["message"] and root in f["message"]
