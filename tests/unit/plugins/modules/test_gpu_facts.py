"""gpu_facts parsers and probe on stored tool outputs (tests/fixtures/gpu_tools).

The probe runs the stand-in tools for real (subprocess, argv, timeout); only their
output is canned. i23: EXCLUSIVE_PROCESS flagged; i24: N/A / unknown GPUs flagged.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible.module_utils.testing import patch_module_args  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import gpu_tools  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import gpu_facts as mod  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "gpu_tools"
NOWHERE = "/nonexistent/prng-test"


def probe(scenario: str, **kw) -> dict:
    base = FIX / scenario
    tools = {"amd_smi": "amd-smi", "rocm_smi": "rocm-smi", "nvidia_smi": "nvidia-smi"}
    # explicit paths: a tool missing from the scenario is "not installed" (never the host's PATH)
    paths = {
        k: str(base / "bin" / v) if (base / "bin" / v).exists() else NOWHERE + "/" + v
        for k, v in tools.items()
    }
    return gpu_tools.probe(
        paths,
        sysfs_root=str(base / "sys"),
        rocm_path=str(base / "rocm"),
        proc_root=str(base / "proc"),
        timeout=kw.get("timeout", 20),
    )


def read(scenario: str, tool: str, key: str) -> str:
    return (FIX / scenario / tool / f"{key}.out").read_text()


def run_module(args: dict) -> tuple[int, dict]:
    buf = io.StringIO()
    with patch_module_args(args), redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        mod.main()
    return int(exc.value.code or 0), json.loads(buf.getvalue())


# ------------------------------------------------------------------ AMD
def test_rocm_smi_healthy_rig() -> None:
    f = probe("rig6600_rocm_smi_healthy")
    assert (f["vendor"], f["gpu_type"], f["tool"], f["count"]) == ("amd", "rocm", "rocm-smi", 12)
    assert f["arch"] == "gfx1032"
    assert f["model"] == "Navi 23 [Radeon RX 6600/6600 XT/6600M]"
    assert (f["driver_version"], f["runtime_version"]) == ("6.8.5", "6.2.4")
    assert f["unhealthy"] == [] and f["healthy_count"] == 12
    g0 = f["gpus"][0]
    assert (g0["sclk_mhz"], g0["mclk_mhz"], g0["perf_level"], g0["temperature_c"]) == (700, 96, "auto", 41)
    assert g0["memory_total_mb"] == 8176
    assert f["gfxoff"]["gfxoff_disabled"] is True


def test_i24_rocm_smi_hung_gpu_flagged() -> None:
    f = probe("rig6600_rocm_smi_hung")
    assert f["count"] == 12 and f["unhealthy"] == [7] and f["healthy_count"] == 11
    hung = f["gpus"][7]
    assert hung["healthy"] is False and hung["perf_level"] == "unknown"
    assert hung["sclk_mhz"] is None and hung["mclk_mhz"] is None
    assert any("unknown" in p for p in hung["problems"])
    assert any("N/A" in p and "reboot" in p for p in hung["problems"])
    # GFXOFF left on (default mask 0xfff7bfff has bit 15 set)
    assert f["gfxoff"]["gfxoff_disabled"] is False


def test_i24_rocm_smi_concise_table_alone_flags_na_and_unknown() -> None:
    rows = gpu_tools.parse_rocm_smi_concise(read("rig6600_rocm_smi_hung", "rocm-smi", "concise"))
    assert len(rows) == 12
    assert (rows[7]["sclk"], rows[7]["mclk"], rows[7]["perf"]) == ("N/A", "N/A", "unknown")
    assert (rows[0]["sclk"], rows[0]["perf"], rows[0]["temp"]) == ("700Mhz", "auto", "41.0°C")
    gpus: list = []
    gpu_tools.apply_rocm_concise(gpus, rows)
    assert [g["index"] for g in gpus if not g["healthy"]] == [7]
    assert len(gpus[7]["problems"]) == 2  # N/A clocks, unknown perf level


def test_rocm_smi_concise_rocm5_layout() -> None:
    text = (
        "\n\n======================= ROCm System Management Interface =======================\n"
        "================================= Concise Info =================================\n"
        "GPU  Temp (DieEdge)  AvgPwr  SCLK    MCLK     Fan     Perf  PwrCap  VRAM%  GPU%  \n"
        "0    38.0c           8.0W    700Mhz  96Mhz    0%      auto  100.0W    0%   0%    \n"
        "1    N/A             N/A     N/A     N/A      0%      unknown  N/A    0%   0%    \n"
        "================================================================================\n"
        "============================= End of ROCm SMI Log ==============================\n"
    )
    rows = gpu_tools.parse_rocm_smi_concise(text)
    assert [(r["index"], r["sclk"], r["perf"]) for r in rows] == [
        (0, "700Mhz", "auto"),
        (1, "N/A", "unknown"),
    ]


def test_rocm_smi_json_after_warning_line() -> None:
    # rocm-smi prints warnings before the JSON (seen on hosts with GPUs in low-power state)
    text = (
        "WARNING: AMD GPU device(s) is/are in a low-power state. Check power control/runtime_status\n\n"
        + read("rig6600_rocm_smi_healthy", "rocm-smi", "showallinfo")
    )
    parsed = gpu_tools.parse_rocm_smi_json(text)
    assert len(parsed["gpus"]) == 12 and parsed["driver_version"] == "6.8.5"


def test_i24_amd_smi_hung_gpu_flagged_and_preferred_over_rocm_smi() -> None:
    f = probe("rig6600_amd_smi_hung")
    assert f["tool"] == "amd-smi" and f["tools_tried"] == ["amd-smi"]
    assert (f["count"], f["arch"], f["model"]) == (12, "gfx1032", "AMD Radeon RX 6600")
    assert (f["driver_version"], f["runtime_version"]) == ("6.10.5", "6.4.0")
    assert f["unhealthy"] == [3]
    hung = f["gpus"][3]
    assert hung["sclk_mhz"] is None and "UNKNOWN" in hung["perf_level"]
    ok = f["gpus"][0]
    assert (ok["sclk_mhz"], ok["mclk_mhz"], ok["memory_total_mb"], ok["memory_used_mb"]) == (
        700,
        96,
        8176,
        11,
    )


def test_amd_smi_list_layout_of_rocm_6_0() -> None:
    static = json.dumps(
        [
            {
                "gpu": 0,
                "asic": {
                    "market_name": "Navi 23",
                    "device_id": "0x73ff",
                    "target_graphics_version": "gfx1032",
                    "asic_serial": "N/A",
                },
                "bus": {"bdf": "0000:03:00.0"},
                "driver": {"name": "amdgpu", "version": "6.3.6"},
                "vram": {"type": "GDDR6", "vendor": "SAMSUNG", "size": "8176 MB"},
            }
        ]
    )
    metric = json.dumps(
        [
            {
                "gpu": 0,
                "clock": {"gfx_0": {"clk": "N/A"}, "mem_0": {"clk": "N/A"}},
                "perf_level": "N/A",
                "temperature": {"edge": "N/A"},
            }
        ]
    )
    parsed = gpu_tools.parse_amd_smi(static, metric, json.dumps({"rocm_version": "6.0.2"}))
    gpu = parsed["gpus"][0]
    assert (parsed["driver_version"], parsed["rocm_version"]) == ("6.3.6", "6.0.2")
    assert (gpu["arch"], gpu["memory_total_mb"], gpu["healthy"]) == ("gfx1032", 8176, False)


def test_amd_smi_failing_falls_back_to_rocm_smi(tmp_path: Path) -> None:
    scn = tmp_path / "scn"
    shutil.copytree(FIX / "rig6600_amd_smi_hung", scn, symlinks=True)
    shutil.copy(FIX / "fake_smi.py", tmp_path / "fake_smi.py")
    (scn / "amd-smi" / "static.rc").write_text("1\n")
    (scn / "amd-smi" / "static.out").write_text("")
    (scn / "amd-smi" / "static.err").write_text(
        "ERROR:root:Unable to detect any GPU devices, check amdgpu version and module status"
        " (sudo modprobe amdgpu)\n"
    )
    paths = {
        "amd_smi": str(scn / "bin/amd-smi"),
        "rocm_smi": str(scn / "bin/rocm-smi"),
        "nvidia_smi": NOWHERE,
    }
    f = gpu_tools.probe(
        paths, sysfs_root=str(scn / "sys"), rocm_path=str(scn / "rocm"), proc_root=str(scn / "proc")
    )
    assert f["tools_tried"] == ["amd-smi", "rocm-smi"] and f["tool"] == "rocm-smi"
    assert any("amd-smi static rc=1" in e and "Unable to detect" in e for e in f["errors"])
    assert f["unhealthy"] == [3]


# ------------------------------------------------------------------ NVIDIA
def test_i23_nvidia_exclusive_process_flagged() -> None:
    f = probe("zeus_nvidia_exclusive")
    assert (f["vendor"], f["gpu_type"], f["count"], f["arch"]) == ("nvidia", "cuda", 2, "sm_86")
    assert (f["driver_version"], f["runtime_version"]) == ("550.54.14", "12.4")
    assert f["compute_modes"] == ["Default", "Exclusive_Process"]
    assert f["unhealthy"] == [1]
    assert "Exclusive_Process" in f["gpus"][1]["problems"][0]
    assert f["gpus"][0]["healthy"] and f["gpus"][0]["memory_used_mb"] == 385
    assert f["gpus"][1]["architecture"] == "Ampere"


def test_nvidia_q_parser() -> None:
    q = gpu_tools.parse_nvidia_q(read("zeus_nvidia_exclusive", "nvidia-smi", "q"))
    assert (q["driver_version"], q["cuda_version"]) == ("550.54.14", "12.4")
    assert [g["compute_mode"] for g in q["gpus"]] == ["Default", "Exclusive_Process"]
    assert q["gpus"][1]["pci_bus"] == "00000000:65:00.0" and q["gpus"][1]["minor"] == "1"


def test_nvidia_lost_gpu_flagged() -> None:
    f = probe("zeus_nvidia_gpu_lost")
    assert f["count"] == 2 and f["unhealthy"] == [1]
    assert f["gpus"][1]["pci_bus"] == "0000:65:00.0"
    assert any("Unable to determine the device handle" in e for e in f["errors"])


def test_nvidia_csv_unknown_error_values() -> None:
    line = (
        "0, NVIDIA GeForce RTX 3080 Ti, GPU-1, 00000000:17:00.0, 550.54.14, Default, 8.6, 12288,"
        " [Unknown Error], [Unknown Error], [N/A], P0\n"
    )
    gpus, errors = gpu_tools.parse_nvidia_csv(line)
    assert errors == [] and gpus[0]["healthy"] is False and gpus[0]["memory_used_mb"] is None


def test_nvidia_old_driver_without_compute_cap() -> None:
    calls = []
    row = "0, Tesla P100-PCIE-16GB, GPU-9, 00000000:03:00.0, 470.256.02, Default, 16280, 0, 33, 0, P0\n"

    def runner(argv: list, timeout: float) -> tuple:
        calls.append(argv)
        if argv[1:2] == ["-q"]:
            return (
                0,
                "Driver Version                            : 470.256.02\n"
                "CUDA Version                              : 11.4\n",
                "",
            )
        if "compute_cap" in argv[1]:
            return 2, 'Field "compute_cap" is not a valid field to query.\n', ""
        return 0, row, ""

    f = gpu_tools.probe(
        {"nvidia_smi": sys.executable, "amd_smi": NOWHERE, "rocm_smi": NOWHERE},
        sysfs_root=NOWHERE,
        rocm_path=NOWHERE,
        proc_root=NOWHERE,
        runner=runner,
    )
    assert f["count"] == 1 and f["runtime_version"] == "11.4" and f["arch"] is None
    assert "compute_cap" not in calls[1][1]


def test_nvidia_driver_not_loaded_degrades_to_sysfs() -> None:
    f = probe("nvidia_driver_not_loaded")
    assert (f["tool"], f["count"], f["vendor"]) == ("sysfs", 2, "nvidia")
    assert f["errors"][0].startswith("nvidia-smi rc=9: NVIDIA-SMI has failed")
    assert f["unhealthy"] == []  # unknown health, not flagged as hung
    assert all("sysfs only" in g["problems"][0] for g in f["gpus"])


# ------------------------------------------------------------------ no tool
def test_no_tool_no_gpu() -> None:
    f = probe("no_tool")
    assert (f["vendor"], f["gpu_type"], f["tool"], f["count"], f["tools_tried"]) == (
        "none",
        "cpu",
        None,
        0,
        [],
    )
    assert f["errors"] == [] and f["gfxoff"]["gfxoff_disabled"] is None


def test_sysfs_only_amd_cards() -> None:
    f = probe("sysfs_amd_no_tool")
    assert (f["tool"], f["count"], f["arch"], f["driver_version"]) == ("sysfs", 2, "gfx1032", "6.8.5")
    assert f["gpus"][0]["memory_total_mb"] == 8176


def test_hung_tool_times_out(tmp_path: Path) -> None:
    tool = tmp_path / "rocm-smi"
    tool.write_text("#!/bin/sh\nexec sleep 30\n")
    tool.chmod(0o755)
    f = gpu_tools.probe(
        {"rocm_smi": str(tool), "amd_smi": NOWHERE, "nvidia_smi": NOWHERE},
        sysfs_root=NOWHERE,
        rocm_path=NOWHERE,
        proc_root=NOWHERE,
        timeout=0.3,
    )
    assert f["count"] == 0
    assert any("timed out" in e for e in f["errors"])


def test_gfxoff_state_variants(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cmdline").write_text("ro quiet amdgpu.ppfeaturemask=0xffff7fff\n")
    s = gpu_tools.gfxoff_state(str(tmp_path / "proc"), str(tmp_path / "sys"))
    # module not loaded: the boot parameter is what will apply
    assert s["amdgpu_loaded"] is False and s["gfxoff_disabled"] is True
    params = tmp_path / "sys" / "module" / "amdgpu" / "parameters"
    params.mkdir(parents=True)
    (params / "ppfeaturemask").write_text("0xfff7bfff\n")
    s = gpu_tools.gfxoff_state(str(tmp_path / "proc"), str(tmp_path / "sys"))
    # the loaded module's value wins: a boot param not yet active (no reboot) is not enough
    assert s["gfxoff_disabled"] is False and s["cmdline"]["amdgpu.ppfeaturemask"] == "0xffff7fff"


# ------------------------------------------------------------------ module
def test_module_expected_count_and_search_path(monkeypatch: pytest.MonkeyPatch) -> None:
    base = FIX / "rig6600_rocm_smi_hung"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    rc, out = run_module(
        {
            "search_path": [str(base / "bin")],
            "sysfs_root": str(base / "sys"),
            "proc_root": str(base / "proc"),
            "rocm_path": str(base / "rocm"),
            "expected_count": 13,
        }
    )
    assert rc == 0 and out["changed"] is False
    assert out["problems"][0].startswith("12 of 13 expected GPUs found")
    assert any(p.startswith("GPU 7: ") for p in out["problems"])
    assert out["ansible_facts"]["prng_gpu"]["unhealthy"] == [7]
    rc, out = run_module({"timeout": 0})
    assert rc == 1 and "timeout must be > 0" in out["msg"]


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("gfx1032", "10.3.0"),
        ("gfx1031", "10.3.0"),
        ("gfx1030", None),
        ("gfx1103", "11.0.0"),
        ("gfx90c", "9.0.0"),
        ("gfx90a", None),
        (None, None),
        ("sm_86", None),
    ],
)
def test_hsa_override_derived_from_arch(arch: str, expected: str) -> None:
    assert gpu_tools.hsa_override_for(arch) == expected


def test_hsa_override_in_facts() -> None:
    assert probe("rig6600_rocm_smi_healthy")["hsa_override_gfx_version"] == "10.3.0"
    assert probe("zeus_nvidia_exclusive")["hsa_override_gfx_version"] is None
