"""GPU health decides which GPUs get slots (i23, i24): usable_gpus on the captured-format
outputs of each vendor tool (tests/fixtures/gpu_tools, run through the stand-in tools)
and on stored kernel logs (tests/fixtures/kernel_log); the gpu_facts module's health
fact; the controller side apply_health that binds slot i to the i-th usable GPU."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible.module_utils.testing import patch_module_args  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import gpu_tools  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_health import pci_key, usable_gpus  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.kernel_log import (  # noqa: E402
    parse_kernel_log,
    parse_since,
)
from ansible_collections.prng.cluster.plugins.modules import gpu_facts as gpu_facts_module  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import kernel_log as kernel_log_module  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.health import apply_health  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
GPU = FIX / "gpu_tools"
KLOG = FIX / "kernel_log"
NOWHERE = "/nonexistent/prng-test"


def probe(base: Path) -> dict:
    tools = {"amd_smi": "amd-smi", "rocm_smi": "rocm-smi", "nvidia_smi": "nvidia-smi"}
    paths = {k: str(base / "bin" / v) if (base / "bin" / v).exists() else NOWHERE for k, v in tools.items()}
    return gpu_tools.probe(
        paths, sysfs_root=str(base / "sys"), rocm_path=str(base / "rocm"), proc_root=str(base / "proc")
    )


def klog(name: str, **kw) -> dict:
    return dict(parse_kernel_log((KLOG / name).read_text(), **kw), readable=True, source="file")


def run_module(mod, args: dict) -> tuple[int, dict]:
    buf = io.StringIO()
    with patch_module_args(args), redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        mod.main()
    return int(exc.value.code or 0), json.loads(buf.getvalue())


CLEAN = {"readable": True, "gpu_events": []}


# ------------------------------------------------------------------ tool findings
def test_i24_one_na_gpu_of_12_leaves_11_usable_with_the_right_indices() -> None:
    h = usable_gpus(probe(GPU / "rig6600_rocm_smi_hung"), CLEAN, 12)
    assert h["usable"] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert list(h["excluded"]) == [7]
    assert "N/A" in h["excluded"][7] and "unknown" in h["excluded"][7]


def test_i24_amd_smi_hung_gpu_left_out() -> None:
    h = usable_gpus(probe(GPU / "rig6600_amd_smi_hung"), CLEAN, 12)
    assert h["usable"] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11] and list(h["excluded"]) == [3]
    assert "amd-smi" in h["excluded"][3]


def test_i23_exclusive_process_gpu_left_out() -> None:
    h = usable_gpus(probe(GPU / "zeus_nvidia_exclusive"), CLEAN, 2)
    assert h["usable"] == [0] and "Exclusive_Process" in h["excluded"][1]


def test_nvidia_gpu_lost_left_out() -> None:
    h = usable_gpus(probe(GPU / "zeus_nvidia_gpu_lost"), CLEAN, 2)
    assert h["usable"] == [0] and "cannot reach" in h["excluded"][1]


def test_amd_gpu_off_the_bus_leaves_the_last_index_missing() -> None:
    # A card gone from the bus: rocm-smi (and HIP) number the 11 left 0..10, so index 11
    # no longer exists; binding by the current numbering stays right.
    facts = probe(GPU / "rig6600_rocm_smi_card_lost")
    assert facts["count"] == 11
    h = usable_gpus(facts, CLEAN, 12)
    assert h["usable"] == list(range(11))
    assert h["excluded"] == {
        11: "not found (rocm-smi lists 11 of 12 GPUs): lost, off the bus or driver not loaded"
    }


def test_no_gpu_found_on_a_gpu_host_leaves_every_gpu_out() -> None:
    h = usable_gpus(probe(GPU / "no_tool"), CLEAN, 2)
    assert h["usable"] == [] and all("found no GPU" in r for r in h["excluded"].values())


def test_sysfs_only_gpus_are_usable_with_a_warning() -> None:
    h = usable_gpus(probe(GPU / "nvidia_driver_not_loaded"), CLEAN, 2)
    assert h["usable"] == [0, 1] and h["excluded"] == {}
    assert any("health unknown" in w for w in h["warnings"])


def test_healthy_hosts_and_cpu_hosts() -> None:
    assert usable_gpus(probe(GPU / "rig6600_rocm_smi_healthy"), CLEAN, 12)["usable"] == list(range(12))
    assert usable_gpus(probe(GPU / "no_tool"), CLEAN, 0) == {
        "usable": [],
        "excluded": {},
        "ignored": {},
        "warnings": [],
        "policy": "exclude",
    }


# ------------------------------------------------------------------ kernel log
def test_amdgpu_ring_timeout_in_the_kernel_log_leaves_that_gpu_out() -> None:
    # The tools see 12 healthy GPUs; the log has an SMU hang, a ring timeout (a line with
    # no address) and a reset of 0000:0b:00.0, which rocm-smi lists as GPU 7.
    h = usable_gpus(probe(GPU / "rig6600_rocm_smi_healthy"), klog("rig6600_oom_amdgpu.log"), 12)
    assert h["usable"] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert "ring timeout" in h["excluded"][7] and "GPU reset" in h["excluded"][7]
    assert "SMU not answering" in h["excluded"][7]


def test_ring_timeout_with_address_in_journalctl_format() -> None:
    h = usable_gpus(probe(GPU / "rig6600_amd_smi_hung"), klog("rig6600_ring_timeout_journal.log"), 12)
    # GPU 3 (0000:06:00.0) is hung in amd-smi and reset in the log: one entry, both reasons
    assert list(h["excluded"]) == [3]
    assert (
        "amd-smi" in h["excluded"][3]
        and "kernel log: amdgpu ring timeout at Jun 10 13:02:11" in h["excluded"][3]
    )


def test_nvidia_xid_leaves_that_gpu_out(tmp_path: Path) -> None:
    scn = tmp_path / "zeus"
    shutil.copytree(GPU / "zeus_nvidia_exclusive", scn, symlinks=True)
    shutil.copy(GPU / "fake_smi.py", tmp_path / "fake_smi.py")
    # The operator set GPU 1 back to Default: the tool now finds both GPUs healthy.
    subprocess.run(
        [str(scn / "bin" / "nvidia-smi"), "-i", "1", "-c", "DEFAULT"], check=True, capture_output=True
    )
    facts = probe(scn)
    assert facts["unhealthy"] == []
    assert usable_gpus(facts, CLEAN, 2)["usable"] == [0, 1]
    h = usable_gpus(facts, klog("zeus_xid.log"), 2)
    assert (
        h["usable"] == [0]
        and "NVIDIA Xid 79" in h["excluded"][1]
        and "fallen off the bus" in h["excluded"][1]
    )
    # Xid 13 is the application's fault (bad kernel): the GPU stays usable.
    assert usable_gpus(facts, klog("zeus_xid13_app.log"), 2)["usable"] == [0, 1]


def test_kernel_errors_before_since_do_not_count(tmp_path: Path) -> None:
    boot = 1_718_000_000.0
    text = (KLOG / "rig6600_oom_amdgpu.log").read_text()
    facts = probe(GPU / "rig6600_rocm_smi_healthy")
    before = parse_kernel_log(text, since=boot + 40_000, boot_time=boot)  # the reset at 40132 s counts
    after = parse_kernel_log(text, since=boot + 40_200, boot_time=boot)  # reset by hand at 40200 s
    assert 7 in usable_gpus(facts, before, 12)["excluded"]
    assert usable_gpus(facts, after, 12)["usable"] == list(range(12))
    assert after["lines_before_since"] > 0 and after["oom_kill_count"] == 0
    # the module reads the boot time from proc_root/stat and checks `since`
    (tmp_path / "stat").write_text(f"cpu  1 2 3\nbtime {int(boot)}\n")
    rc, out = run_module(
        kernel_log_module,
        {
            "log_file": str(KLOG / "rig6600_oom_amdgpu.log"),
            "since": f"@{int(boot) + 40_200}",
            "proc_root": str(tmp_path),
        },
    )
    assert rc == 0 and out["gpu_events"] == [] and out["since"] == "2024-06-10T17:23:20Z"
    rc, out = run_module(kernel_log_module, {"log_file": str(KLOG / "clean.log"), "since": "yesterday"})
    assert rc == 1 and out["msg"].startswith("since: found 'yesterday', expected empty (since boot)")


def test_parse_since_forms() -> None:
    assert parse_since("") is None and parse_since(None) is None
    assert parse_since("@1718000000") == 1718000000.0
    assert parse_since("6h", now=100_000.0) == 100_000.0 - 6 * 3600
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert isinstance(parse_since("2024-06-10 14:00"), float)
    with pytest.raises(ValueError):
        parse_since("soon")


def test_error_without_a_gpu_address_is_a_warning_not_an_exclusion() -> None:
    events = {
        "readable": True,
        "gpu_events": [{"kind": "amdgpu ring timeout", "pci": None, "excludes": True}],
    }
    facts = probe(GPU / "rig6600_rocm_smi_healthy")
    h = usable_gpus(facts, events, 12)
    assert h["usable"] == list(range(12)) and "no PCI address" in h["warnings"][0]
    # on a one-GPU host it can only be that GPU
    one = dict(facts, gpus=facts["gpus"][:1], count=1)
    assert usable_gpus(one, events, 1)["usable"] == []


def test_pci_spellings_match() -> None:
    assert pci_key("0000:0B:00.0") == pci_key("0000:0b:00") == pci_key("PCI:0000:0b:00") == "0000:0b:00"
    assert pci_key("00000000:65:00.0") == "0000:65:00" and pci_key(None) is None


def test_unreadable_kernel_log_is_a_warning() -> None:
    h = usable_gpus(
        probe(GPU / "rig6600_rocm_smi_hung"), {"readable": False, "errors": ["dmesg: denied"]}, 12
    )
    assert len(h["usable"]) == 11 and "kernel log unreadable (dmesg: denied)" in h["warnings"][0]


# ------------------------------------------------------------------ operator override
def test_override_policy_ignore_restores_the_gpus() -> None:
    facts = probe(GPU / "rig6600_rocm_smi_hung")
    h = usable_gpus(facts, klog("rig6600_oom_amdgpu.log"), 12, policy="ignore")
    assert h["usable"] == list(range(12)) and h["excluded"] == {}
    assert "unknown" in h["ignored"][7] and "ring timeout" in h["ignored"][7]


def test_override_gpu_exclude_removes_a_healthy_gpu_even_when_ignoring() -> None:
    facts = probe(GPU / "rig6600_rocm_smi_healthy")
    h = usable_gpus(facts, CLEAN, 12, gpu_exclude=[3])
    assert 3 not in h["usable"] and len(h["usable"]) == 11
    assert h["excluded"] == {3: "excluded by the inventory (gpu_exclude)"}
    h = usable_gpus(probe(GPU / "rig6600_rocm_smi_hung"), CLEAN, 12, gpu_exclude=[3, 12], policy="ignore")
    assert 3 not in h["usable"] and 7 in h["usable"] and 7 in h["ignored"]
    assert any("gpu_exclude names GPU 12" in w for w in h["warnings"])
    with pytest.raises(ValueError, match="gpu_health_policy: expected one of exclude, ignore"):
        usable_gpus(facts, CLEAN, 12, policy="skip")


# ------------------------------------------------------------------ the module
def module_args(scenario: str, **extra) -> dict:
    base = GPU / scenario
    return {
        "search_path": [str(base / "bin")],
        "sysfs_root": str(base / "sys"),
        "proc_root": str(base / "proc"),
        "rocm_path": str(base / "rocm"),
        **extra,
    }


def test_module_records_health_per_gpu_and_the_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    rc, out = run_module(
        gpu_facts_module,
        module_args(
            "rig6600_rocm_smi_healthy",
            expected_count=12,
            exclude=[0],
            kernel_log_file=str(KLOG / "rig6600_oom_amdgpu.log"),
        ),
    )
    assert rc == 0
    health = out["ansible_facts"]["prng_gpu_health"]
    assert out["usable"] == health["usable"] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert sorted(health["excluded"]) == ["0", "7"]  # JSON keys
    assert health["gpu_count"] == 12 and health["kernel_log"]["source"] == "file"
    gpu7 = out["gpus"][7]
    assert gpu7["usable"] is False and "ring timeout" in gpu7["excluded_reason"]
    assert out["gpus"][1]["usable"] is True and out["gpus"][1]["excluded_reason"] is None
    rc, out = run_module(
        gpu_facts_module,
        module_args(
            "rig6600_rocm_smi_hung", expected_count=12, health_policy="ignore", kernel_log_sources=[]
        ),
    )
    assert rc == 0 and out["usable"] == list(range(12)) and list(out["health"]["ignored"]) == ["7"]
    assert out["health"]["kernel_log"]["readable"] is None
    rc, out = run_module(gpu_facts_module, module_args("no_tool", since="whenever"))
    assert rc == 1 and out["msg"].startswith("since (gpu_health_since): found 'whenever'")


# ------------------------------------------------------------------ the plan (controller)
def spec(**kw) -> HostSpec:
    return HostSpec(name=kw.pop("name", "rig"), **kw)


def fact(scenario: str, gpu_count: int, **kw) -> dict:
    """The fact as the controller sees it after Ansible's JSON (string keys)."""
    h = usable_gpus(probe(GPU / scenario), kw.pop("klog", CLEAN), gpu_count, **kw)
    return json.loads(json.dumps(dict(h, gpu_count=gpu_count, checked="2024-06-10T14:00:00Z")))


def test_apply_health_binds_slots_to_the_usable_gpus() -> None:
    host = spec(gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12)
    assert apply_health(host, {"prng_gpu_health": fact("rig6600_rocm_smi_hung", 12)}) is None
    assert host.gpu_indices == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert list(host.extra["gpu_health"]["excluded"]) == ["7"]
    # the override of this run counts, even on an older fact
    host = spec(gpu_type="rocm", gpu_count=12)
    hv = {"prng_gpu_health": fact("rig6600_rocm_smi_hung", 12), "gpu_exclude": [0]}
    assert apply_health(host, hv) is None and host.gpu_indices == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    # policy ignore at the preflight: every GPU
    host = spec(gpu_type="rocm", gpu_count=12)
    assert apply_health(host, {"prng_gpu_health": fact("rig6600_rocm_smi_hung", 12, policy="ignore")}) is None
    assert host.gpu_indices == list(range(12))


def test_apply_health_leaves_out_a_host_without_usable_gpu() -> None:
    host = spec(gpu_type="cuda", gpu_count=2, name="zeus")
    hv = {"prng_gpu_health": fact("zeus_nvidia_exclusive", 2, gpu_exclude=[0])}
    reason = apply_health(host, hv)
    assert host.gpu_indices == []
    assert reason.startswith(
        "no usable GPU of 2: GPU 0: excluded by the inventory (gpu_exclude); GPU 1: compute mode"
    )


def test_apply_health_cpu_hosts_and_hosts_without_the_fact() -> None:
    cpu = spec(gpu_type="cpu", gpu_count=0, max_concurrent_jobs=4)
    assert (
        apply_health(cpu, {"prng_gpu_health": {"usable": [], "cpu": True}}) is None
        and cpu.gpu_indices is None
    )
    gpu = spec(gpu_type="cuda", gpu_count=2)
    assert apply_health(gpu, {}) is None and gpu.gpu_indices == [0, 1]  # unchecked, as before
    gpu = spec(gpu_type="cuda", gpu_count=2)
    assert "no GPU health recorded" in apply_health(gpu, {}, required=True) and gpu.gpu_indices == []
    with pytest.raises(ValueError, match="prng_gpu_health.usable: expected GPU indexes"):
        apply_health(spec(gpu_type="cuda", gpu_count=2), {"prng_gpu_health": {"usable": ["x"]}})


# ------------------------------------------------------------------ diagnostics say it too
def test_diagnostics_report_which_gpus_get_jobs() -> None:
    from ansible_collections.prng.cluster.plugins.module_utils import diagnostics as dg

    hung = usable_gpus(probe(GPU / "rig6600_rocm_smi_hung"), CLEAN, 12)
    (f,) = dg.usable_findings(hung, 12)
    assert (f["check"], f["severity"]) == ("gpu_usable", "warning")
    assert f["message"].startswith("11 of 12 GPUs get jobs; left out: GPU 7: ")
    none = usable_gpus(probe(GPU / "zeus_nvidia_exclusive"), CLEAN, 2, gpu_exclude=[0])
    assert dg.usable_findings(none, 2)[0]["severity"] == "critical"
    ok = usable_gpus(probe(GPU / "rig6600_rocm_smi_hung"), CLEAN, 12, policy="ignore")
    assert dg.usable_findings(ok, 12)[0]["message"] == "all 12 GPUs get jobs (policy ignore keeps [7])"
    assert dg.usable_findings(usable_gpus({}, CLEAN, 0), 0) == []


# ------------------------------------------------------------------ the plan binds usable GPUs
def test_i24_plan_gives_11_slots_bound_to_the_usable_gpus_and_the_override_restores_12() -> None:
    from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.sizing import slots_for

    host = spec(gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12)
    assert apply_health(host, {"prng_gpu_health": fact("rig6600_rocm_smi_hung", 12)}) is None
    assert slots_for(host, 0.0) == 11
    assert [host.gpu_for_slot(i) for i in range(11)] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert "usable_gpus=" in host.slot_reason
    restored = spec(gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12)
    apply_health(restored, {"prng_gpu_health": fact("rig6600_rocm_smi_hung", 12, policy="ignore")})
    assert slots_for(restored, 0.0) == 12 and restored.gpu_for_slot(7) == 7


def test_a_host_where_no_worker_fits_gets_no_slot_and_says_why() -> None:
    from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.sizing import slots_for

    host = spec(gpu_type="rocm", gpu_count=12, max_concurrent_jobs=12)
    host.memory_available_mb = 500.0  # 400 MiB usable after the 20 % margin
    assert slots_for(host, 900.0) == 0  # one worker needs 900 MiB: none fits (was max(1, 0) = 1)
    assert host.slot_reason.startswith("no worker fits: ") and "memory_fit=0" in host.slot_reason
