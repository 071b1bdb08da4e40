# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Parsers of the GPU vendor tools' output and the probe that runs them.

Order: amd-smi, then rocm-smi (AMD), nvidia-smi (NVIDIA), then sysfs when no tool
answers. Every GPU record carries `healthy` and `problems`: a hung RX 6600 shows `N/A`
clocks and an `unknown` performance level in rocm-smi (incident i24); an NVIDIA GPU left
in EXCLUSIVE_PROCESS refuses a second process (i23). Tools run as argv lists with a
timeout: a hung GPU can make the tool itself hang.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from typing import Any, Callable, Dict, List, Tuple

from ansible.module_utils.common.process import get_bin_path
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import run_argv

Runner = Callable[[List[str], float], Tuple[int, str, str]]

NVIDIA_FIELDS = ["index", "name", "uuid", "pci.bus_id", "driver_version", "compute_mode",
                 "compute_cap", "memory.total", "memory.used", "temperature.gpu",
                 "utilization.gpu", "pstate"]
# nvidia-smi prints these instead of a value; the first are harmless (not supported by the
# board), the last mean the GPU is not answering.
NV_MISSING = ("[N/A]", "N/A", "[Not Supported]", "Not Supported")
NV_BROKEN = ("[Unknown Error]", "Unknown Error", "[GPU is lost]", "GPU is lost", "ERR!",
             "[GPU requires reset]", "GPU requires reset")
BAD_COMPUTE_MODES = ("Exclusive_Process", "Exclusive_Thread", "Prohibited")

# PCI device id -> gfx target for the sysfs fallback (no tool to ask). Only ids we use.
AMD_DEVICE_ARCH = {
    "0x73ff": "gfx1032",  # Navi 23: RX 6600 / 6600 XT
    "0x73ef": "gfx1032",  # Navi 23: RX 6650 XT
    "0x73df": "gfx1031",  # Navi 22: RX 6700 XT
    "0x73bf": "gfx1030",  # Navi 21: RX 6800 / 6900 XT
    "0x744c": "gfx1100",  # Navi 31: RX 7900 XTX
    "0x7480": "gfx1102",  # Navi 33: RX 7600
    "0x740f": "gfx90a",   # MI210
    "0x74a1": "gfx942",   # MI300X
}
VENDOR_IDS = {"0x10de": "nvidia", "0x1002": "amd"}


def _na(value: Any) -> bool:
    return value is None or str(value).strip() in ("N/A", "n/a", "NA", "[N/A]", "")


def _int(value: Any) -> int | None:
    """First integer in a value like '2491Mhz', '(96Mhz)', '36.0', {'value': 5}."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = re.search(r"-?\d+(?:\.\d+)?", str(value))
    return int(float(m.group(0))) if m else None


def _new_gpu(index: int, vendor: str, source: str) -> Dict[str, Any]:
    return {"index": index, "vendor": vendor, "source": source, "model": None, "arch": None,
            "pci_bus": None, "uuid": None, "memory_total_mb": None, "memory_used_mb": None,
            "temperature_c": None, "sclk_mhz": None, "mclk_mhz": None, "perf_level": None,
            "compute_mode": None, "compute_capability": None, "healthy": True, "problems": []}


def _problem(gpu: Dict[str, Any], text: str, unhealthy: bool = True) -> None:
    gpu["problems"].append(text)
    if unhealthy:
        gpu["healthy"] = False


# ---------------------------------------------------------------- NVIDIA
def parse_nvidia_csv(text: str, fields: List[str] | None = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """`nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` -> (gpus, errors).

    Lines that are not rows (e.g. "Unable to determine the device handle for GPU
    0000:02:00.0: Unknown Error") are returned as errors.
    """
    fields = fields or NVIDIA_FIELDS
    gpus: List[Dict[str, Any]] = []
    errors: List[str] = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(fields) or not row[0].strip().isdigit():
            errors.append(", ".join(row).strip())
            continue
        rec = dict(zip(fields, (c.strip() for c in row), strict=False))
        gpu = _new_gpu(int(rec["index"]), "nvidia", "nvidia-smi")
        gpu["model"] = rec.get("name")
        gpu["uuid"] = rec.get("uuid")
        gpu["pci_bus"] = rec.get("pci.bus_id")
        gpu["driver_version"] = rec.get("driver_version")
        gpu["compute_mode"] = rec.get("compute_mode")
        cap = rec.get("compute_cap")
        gpu["compute_capability"] = None if cap is None or cap in NV_MISSING + NV_BROKEN else cap
        gpu["arch"] = "sm_" + cap.replace(".", "") if gpu["compute_capability"] else None
        for key, field in (("memory_total_mb", "memory.total"), ("memory_used_mb", "memory.used"),
                           ("temperature_c", "temperature.gpu")):
            gpu[key] = _int(rec.get(field)) if rec.get(field) not in NV_MISSING else None
        gpu["perf_level"] = rec.get("pstate")
        broken = sorted(k for k, v in rec.items() if v in NV_BROKEN)
        if broken:
            _problem(gpu, f"nvidia-smi cannot read {', '.join(broken)} ({rec[broken[0]]}):"
                          " GPU not answering, reset or reboot")
        if gpu["compute_mode"] in BAD_COMPUTE_MODES:
            _problem(gpu, f"compute mode {gpu['compute_mode']} refuses a second process:"
                          " set Default (nvidia-smi -c DEFAULT)")
        gpus.append(gpu)
    return gpus, errors


def parse_nvidia_q(text: str) -> Dict[str, Any]:
    """`nvidia-smi -q`: driver and CUDA versions and per-GPU name/mode/arch."""
    out: Dict[str, Any] = {"driver_version": None, "cuda_version": None, "gpus": []}
    gpu: Dict[str, Any] | None = None
    for line in text.splitlines():
        m = re.match(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\s*$", line)
        if m:
            gpu = {"pci_bus": m.group(1)}
            out["gpus"].append(gpu)
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        indent = len(key) - len(key.lstrip())
        key, value = key.strip(), value.strip()
        if indent == 0 and key == "Driver Version":
            out["driver_version"] = value
        elif indent == 0 and key == "CUDA Version":
            out["cuda_version"] = value
        elif gpu is not None and indent == 4:
            names = {"Product Name": "model", "Product Architecture": "architecture",
                     "Compute Mode": "compute_mode", "GPU UUID": "uuid", "Minor Number": "minor"}
            if key in names:
                gpu[names[key]] = value
    return out


# ---------------------------------------------------------------- rocm-smi
def _json_part(text: str) -> Any:
    """The JSON document in a tool's output; rocm-smi may print warnings before it."""
    start = min([i for i in (text.find("{"), text.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise ValueError("no JSON in output")
    return json.loads(text[start:])


def parse_rocm_smi_json(text: str) -> Dict[str, Any]:
    """`rocm-smi --showallinfo --json` -> {driver_version, gpus}.

    A card that stops answering loses its clock/temperature keys and reports
    `Performance Level: unknown`; keys that other cards report but this one lacks are
    flagged too.
    """
    data = _json_part(text)
    cards = sorted((k for k in data if re.match(r"^card\d+$", k)), key=lambda k: int(k[4:]))
    gpus = []
    for i, name in enumerate(cards):
        c = data[name]
        gpu = _new_gpu(i, "amd", "rocm-smi")
        gpu["card"] = name
        gpu["model"] = c.get("Card Series") or c.get("Device Name") or c.get("Card series")
        gpu["device_id"] = c.get("Device ID") or c.get("Card Model")
        gpu["arch"] = c.get("GFX Version") or AMD_DEVICE_ARCH.get(str(gpu["device_id"]).lower())
        gpu["pci_bus"] = c.get("PCI Bus")
        gpu["uuid"] = None if _na(c.get("Unique ID")) else c.get("Unique ID")
        gpu["perf_level"] = c.get("Performance Level")
        gpu["sclk_mhz"] = _int(c.get("sclk clock speed:")) if not _na(c.get("sclk clock speed:")) else None
        gpu["mclk_mhz"] = _int(c.get("mclk clock speed:")) if not _na(c.get("mclk clock speed:")) else None
        temp = c.get("Temperature (Sensor edge) (C)")
        gpu["temperature_c"] = None if _na(temp) else _int(temp)
        total, used = c.get("VRAM Total Memory (B)"), c.get("VRAM Total Used Memory (B)")
        gpu["memory_total_mb"] = None if _na(total) else (_int(total) or 0) // 2**20
        gpu["memory_used_mb"] = None if _na(used) else (_int(used) or 0) // 2**20
        gpus.append((gpu, c))
    health_keys = ("sclk clock speed:", "mclk clock speed:", "Temperature (Sensor edge) (C)",
                   "Performance Level")
    reported = {k for _gpu, c in gpus for k in health_keys if not _na(c.get(k))}
    for gpu, c in gpus:
        if str(gpu["perf_level"]).lower() == "unknown":
            _problem(gpu, "performance level 'unknown': SMU not answering, reboot the node or reseat the GPU")
        for key in health_keys:
            if key in reported and _na(c.get(key)):
                _problem(gpu, f"no {key.rstrip(':')} reading (N/A): GPU not responding, reboot the node")
    return {"driver_version": (data.get("system") or {}).get("Driver version"),
            "gpus": [g for g, _card in gpus]}


def parse_rocm_smi_concise(text: str) -> List[Dict[str, Any]]:
    """Default `rocm-smi` table -> per device {index, temp, sclk, mclk, perf, vram_pct, gpu_pct}.

    Columns differ between ROCm releases, but the last seven are always SCLK MCLK Fan
    Perf PwrCap VRAM% GPU%, so rows are read from the right.
    """
    rows = []
    in_table = False
    for line in text.splitlines():
        if "SCLK" in line and "Perf" in line:
            in_table = True
            continue
        if not in_table or not re.match(r"^\d+\s", line):
            continue
        tok = line.split()
        if len(tok) < 8:
            continue
        temp = next((t for t in tok if t.endswith("°C")), None)
        rows.append({"index": int(tok[0]), "sclk": tok[-7], "mclk": tok[-6], "fan": tok[-5],
                     "perf": tok[-4], "power_cap": tok[-3], "vram_pct": tok[-2], "gpu_pct": tok[-1],
                     "temp": temp})
    return rows


def apply_rocm_concise(gpus: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> None:
    """Flag the N/A / unknown states operators see in plain `rocm-smi` (i24)."""
    by_index = {g["index"]: g for g in gpus}
    for row in rows:
        gpu = by_index.get(row["index"])
        if gpu is None:
            gpu = _new_gpu(row["index"], "amd", "rocm-smi")
            gpus.append(gpu)
            by_index[row["index"]] = gpu
        bad = [name for name in ("sclk", "mclk") if _na(row[name])]
        if bad and not any("N/A" in p for p in gpu["problems"]):
            clocks = "/".join(s.upper() for s in bad)
            _problem(gpu, f"{clocks} N/A in rocm-smi: GPU not responding, reboot the node")
        if row["perf"].lower() == "unknown" and not any("unknown" in p for p in gpu["problems"]):
            _problem(gpu, "performance level 'unknown': SMU not answering, reboot the node or reseat the GPU")
        if gpu["perf_level"] is None:
            gpu["perf_level"] = row["perf"]


# ---------------------------------------------------------------- amd-smi
def _amd_list(data: Any) -> List[Dict[str, Any]]:
    """amd-smi JSON is a list of GPUs (ROCm 6.0-6.3) or {"gpu_data": [...]} (6.4+)."""
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    return [d for d in data if isinstance(d, dict) and "gpu" in d]


def _value(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _mb(value: Any) -> int | None:
    """amd-smi sizes: {"value": 8176, "unit": "MB"} or "8176 MB"."""
    if _na(value):
        return None
    if isinstance(value, dict):
        unit = str(value.get("unit", "MB")).upper()
        number = _int(value)
    else:
        number = _int(value)
        unit = "GB" if "GB" in str(value).upper() else "MB"
    if number is None:
        return None
    return number * 1024 if unit == "GB" else number


def parse_amd_smi(static_text: str, metric_text: str | None = None,
                  version_text: str | None = None) -> Dict[str, Any]:
    """`amd-smi static --json` (+ `metric --json`, `version --json`) -> {driver, rocm, gpus}."""
    gpus: Dict[int, Dict[str, Any]] = {}
    driver = None
    for rec in _amd_list(_json_part(static_text)):
        gpu = _new_gpu(int(rec["gpu"]), "amd", "amd-smi")
        asic = rec.get("asic") or {}
        gpu["model"] = asic.get("market_name")
        gpu["device_id"] = asic.get("device_id")
        gpu["arch"] = (asic.get("target_graphics_version")
                       or AMD_DEVICE_ARCH.get(str(asic.get("device_id")).lower()))
        gpu["pci_bus"] = _value(rec, "bus", "bdf")
        serial = asic.get("asic_serial")
        gpu["uuid"] = None if _na(serial) else serial
        gpu["memory_total_mb"] = _mb(_value(rec, "vram", "size"))
        drv = rec.get("driver") or {}
        driver = driver or drv.get("version") or drv.get("driver_version")
        gpus[gpu["index"]] = gpu
    if metric_text:
        for rec in _amd_list(_json_part(metric_text)):
            gpu = gpus.get(int(rec["gpu"]))
            if gpu is None:
                gpu = gpus[int(rec["gpu"])] = _new_gpu(int(rec["gpu"]), "amd", "amd-smi")
            gfx = _value(rec, "clock", "gfx_0", "clk")
            mem = _value(rec, "clock", "mem_0", "clk")
            temp = _value(rec, "temperature", "edge")
            perf = rec.get("perf_level")
            gpu["sclk_mhz"] = None if _na(gfx) else _int(gfx)
            gpu["mclk_mhz"] = None if _na(mem) else _int(mem)
            gpu["temperature_c"] = None if _na(temp) else _int(temp)
            gpu["perf_level"] = perf
            used = _value(rec, "mem_usage", "used_vram")
            gpu["memory_used_mb"] = _mb(used)
            if gpu["memory_total_mb"] is None:
                gpu["memory_total_mb"] = _mb(_value(rec, "mem_usage", "total_vram"))
            bad = [n for n, v in (("SCLK", gfx), ("MCLK", mem)) if _na(v)]
            if bad:
                _problem(gpu, "{} N/A in amd-smi: GPU not responding, reboot the node".format("/".join(bad)))
            if _na(perf) or "UNKNOWN" in str(perf).upper():
                _problem(gpu, "performance level %r: SMU not answering, reboot the node or reseat the GPU"
                         % (perf if perf is not None else "N/A"))
    rocm = None
    if version_text:
        ver = _json_part(version_text)
        ver = ver[0] if isinstance(ver, list) and ver else ver
        if isinstance(ver, dict):
            rocm = ver.get("rocm_version")
    return {"driver_version": driver, "rocm_version": rocm,
            "gpus": [gpus[k] for k in sorted(gpus)]}


# ---------------------------------------------------------------- sysfs
def read_sysfs(sysfs_root: str = "/sys") -> Dict[str, Any]:
    """GPUs from /sys/class/drm/card*/device/vendor (0x10de NVIDIA, 0x1002 AMD)."""
    gpus = []
    cards = [p for p in glob.glob(os.path.join(sysfs_root, "class", "drm", "card*"))
             if re.match(r"^card\d+$", os.path.basename(p))]
    for path in sorted(cards, key=lambda p: int(os.path.basename(p)[4:])):
        vendor_id = _read_text(os.path.join(path, "device", "vendor"))
        vendor = VENDOR_IDS.get((vendor_id or "").lower())
        if vendor is None:
            continue
        device_id = (_read_text(os.path.join(path, "device", "device")) or "").lower()
        gpu = _new_gpu(len(gpus), vendor, "sysfs")
        gpu["card"] = os.path.basename(path)
        gpu["device_id"] = device_id
        gpu["arch"] = AMD_DEVICE_ARCH.get(device_id) if vendor == "amd" else None
        link = os.path.join(path, "device")
        gpu["pci_bus"] = os.path.basename(os.path.realpath(link)) if os.path.islink(link) else None
        total = _read_text(os.path.join(path, "device", "mem_info_vram_total"))
        gpu["memory_total_mb"] = int(total) // 2**20 if total and total.isdigit() else None
        gpus.append(gpu)
    driver = {}
    for vendor, mod in (("amd", "amdgpu"), ("nvidia", "nvidia")):
        ver = _read_text(os.path.join(sysfs_root, "module", mod, "version"))
        if ver:
            driver[vendor] = ver
    return {"gpus": gpus, "driver_versions": driver}


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- HSA override
# gfx targets ROCm 6.x ships kernels for; other RDNA/CDNA parts run as their family's
# base target through HSA_OVERRIDE_GFX_VERSION (RX 6600 gfx1032 -> 10.3.0, seed 002 §8.2).
NATIVE_GFX = ("gfx900", "gfx906", "gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx950",
              "gfx1030", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201")


def hsa_override_for(arch: str | None, native: Tuple[str, ...] = NATIVE_GFX) -> str | None:
    """HSA_OVERRIDE_GFX_VERSION for a gfx target, None when native or unknown."""
    m = re.match(r"^gfx(\d{1,2})([0-9a-f])([0-9a-f])$", str(arch or ""))
    if not m or arch in native:
        return None
    return f"{int(m.group(1))}.{int(m.group(2), 16)}.0"


# ---------------------------------------------------------------- GFXOFF
PP_GFXOFF_MASK = 0x8000  # bit 15 of amdgpu.ppfeaturemask (amd_shared.h PP_GFXOFF_MASK)


def gfxoff_state(proc_root: str = "/proc", sysfs_root: str = "/sys") -> Dict[str, Any]:
    """GFXOFF as configured: boot command line and the loaded amdgpu module's parameters.

    ppfeaturemask with bit 15 clear (e.g. 0xffff7fff) disables GFXOFF; so does
    amdgpu.gfxoff=0 where that parameter exists.
    """
    cmdline = _read_text(os.path.join(proc_root, "cmdline")) or ""
    params = {}
    for token in cmdline.split():
        key, _sep, value = token.partition("=")
        if key in ("amdgpu.ppfeaturemask", "amdgpu.gfxoff"):
            params[key] = value
    mod_dir = os.path.join(sysfs_root, "module", "amdgpu", "parameters")
    loaded = {}
    for name in ("ppfeaturemask", "gfxoff"):
        value = _read_text(os.path.join(mod_dir, name))
        if value is not None:
            loaded[name] = value
    mask_text = loaded.get("ppfeaturemask") or params.get("amdgpu.ppfeaturemask")
    gfxoff_text = loaded.get("gfxoff") or params.get("amdgpu.gfxoff")
    disabled: bool | None = None
    if mask_text:
        try:
            disabled = not (int(mask_text, 0) & PP_GFXOFF_MASK)
        except ValueError:
            disabled = None
    if gfxoff_text is not None and gfxoff_text.strip() in ("0", "1"):
        disabled = bool(disabled) or gfxoff_text.strip() == "0"
    return {"amdgpu_loaded": os.path.isdir(mod_dir), "cmdline": params, "module_params": loaded,
            "ppfeaturemask": mask_text, "gfxoff_disabled": disabled}


# ---------------------------------------------------------------- probe
def default_runner(argv: List[str], timeout: float) -> Tuple[int, str, str]:
    rc, out, err = run_argv(argv, timeout)
    return rc, out, (err + " (GPU hung?)" if rc == 124 else err)


def find_tool(name: str, explicit: str | None, extra_dirs: List[str]) -> str | None:
    """The tool given by path, else Ansible's search (extra_dirs, then PATH and the sbin folders)."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        return get_bin_path(name, opt_dirs=extra_dirs)
    except ValueError:
        return None


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def probe(paths: Dict[str, str | None] | None = None, sysfs_root: str = "/sys",
          rocm_path: str = "/opt/rocm", timeout: float = 30.0,
          runner: Runner | None = None, proc_root: str = "/proc") -> Dict[str, Any]:
    """GPU facts of this host from the first tool that answers, sysfs as the last resort."""
    paths = paths or {}
    run = runner or default_runner
    extra = [os.path.join(rocm_path, "bin")]
    errors: List[str] = []
    tried: List[str] = []
    found: Dict[str, str] = {}
    amd: Dict[str, Any] | None = None
    nvidia: Dict[str, Any] | None = None

    tool = find_tool("amd-smi", paths.get("amd_smi"), extra)
    if tool:
        tried.append("amd-smi")
        found["amd-smi"] = tool
        rc, out, err = run([tool, "static", "--json"], timeout)
        if rc == 0:
            try:
                rc_m, out_m, err_m = run([tool, "metric", "--json"], timeout)
                if rc_m != 0:
                    errors.append(f"amd-smi metric rc={rc_m}: {_first_line(err_m or out_m)}")
                rc_v, out_v, _err_v = run([tool, "version", "--json"], timeout)
                amd = parse_amd_smi(out, out_m if rc_m == 0 else None, out_v if rc_v == 0 else None)
                amd["tool"] = "amd-smi"
            except (ValueError, KeyError, TypeError) as exc:
                errors.append(f"amd-smi output not understood: {exc}")
                amd = None
        else:
            errors.append(f"amd-smi static rc={rc}: {_first_line(err or out)}")
    if amd is None or not amd["gpus"]:
        tool = find_tool("rocm-smi", paths.get("rocm_smi"), extra)
        if tool:
            tried.append("rocm-smi")
            found["rocm-smi"] = tool
            rc, out, err = run([tool, "--showallinfo", "--json"], timeout)
            if rc == 0:
                try:
                    amd = parse_rocm_smi_json(out)
                    amd["tool"] = "rocm-smi"
                except (ValueError, KeyError, TypeError) as exc:
                    errors.append(f"rocm-smi output not understood: {exc}")
            else:
                errors.append(f"rocm-smi --showallinfo rc={rc}: {_first_line(err or out)}")
            rc, out, err = run([tool], timeout)
            if rc == 0:
                if amd is None:
                    amd = {"driver_version": None, "gpus": [], "tool": "rocm-smi"}
                apply_rocm_concise(amd["gpus"], parse_rocm_smi_concise(out))
            else:
                errors.append(f"rocm-smi rc={rc}: {_first_line(err or out)}")
    if amd is not None and not amd.get("rocm_version"):
        info = _read_text(os.path.join(rocm_path, ".info", "version")) or ""
        amd["rocm_version"] = info.split("-")[0] or None

    tool = find_tool("nvidia-smi", paths.get("nvidia_smi"), [])
    if tool:
        tried.append("nvidia-smi")
        found["nvidia-smi"] = tool
        fields = list(NVIDIA_FIELDS)
        argv = [tool, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]
        rc, out, err = run(argv, timeout)
        if rc != 0 and "compute_cap" in (out + err):
            # drivers before 510 lack the compute_cap field
            fields.remove("compute_cap")
            argv[1] = "--query-gpu=" + ",".join(fields)
            rc, out, err = run(argv, timeout)
        gpus, row_errors = parse_nvidia_csv(out, fields) if out else ([], [])
        if rc == 0 or gpus:
            nvidia = {"gpus": gpus, "tool": "nvidia-smi",
                      "driver_version": next((g.get("driver_version") for g in gpus), None),
                      "cuda_version": None}
            for line in row_errors:
                errors.append(f"nvidia-smi: {line}")
                m = re.search(r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)", line)
                if m:
                    lost = _new_gpu(len(gpus), "nvidia", "nvidia-smi")
                    lost["pci_bus"] = m.group(1)
                    why = line.split(":")[-1].strip()
                    _problem(lost, f"nvidia-smi cannot reach this GPU ({why}): reset or reboot")
                    gpus.append(lost)
            rc_q, out_q, _err_q = run([tool, "-q"], timeout)
            if rc_q == 0 or out_q:
                q = parse_nvidia_q(out_q)
                nvidia["cuda_version"] = q["cuda_version"]
                nvidia["driver_version"] = nvidia["driver_version"] or q["driver_version"]
                by_bus = {str(g.get("pci_bus")).lower(): g for g in q["gpus"]}
                for gpu in gpus:
                    extra_q = by_bus.get(str(gpu["pci_bus"]).lower())
                    if extra_q and extra_q.get("architecture"):
                        gpu["architecture"] = extra_q["architecture"]
        else:
            # rc 9: driver not loaded; rc 6/15 etc.: no device. Not fatal: degrade.
            errors.append(f"nvidia-smi rc={rc}: {_first_line(out or err)}")

    facts: Dict[str, Any] = {"tools_tried": tried, "tool_paths": found, "errors": errors}
    gpus_all: List[Dict[str, Any]] = []
    tool_used = []
    if amd and amd["gpus"]:
        gpus_all += amd["gpus"]
        tool_used.append(amd["tool"])
    if nvidia and nvidia["gpus"]:
        gpus_all += nvidia["gpus"]
        tool_used.append("nvidia-smi")
    sysfs = read_sysfs(sysfs_root)
    if not gpus_all and sysfs["gpus"]:
        gpus_all = sysfs["gpus"]
        tool_used.append("sysfs")
        for gpu in gpus_all:
            _problem(gpu, "seen in sysfs only: no vendor tool answered, health unknown", unhealthy=False)
    vendors = sorted({g["vendor"] for g in gpus_all})
    facts["vendor"] = vendors[0] if len(vendors) == 1 else ("mixed" if vendors else "none")
    default_type = "cpu" if not vendors else "mixed"
    facts["gpu_type"] = {"amd": "rocm", "nvidia": "cuda"}.get(facts["vendor"], default_type)
    facts["tool"] = "+".join(tool_used) or None
    facts["count"] = len(gpus_all)
    facts["gpus"] = gpus_all
    models = sorted({str(g["model"]) for g in gpus_all if g["model"]})
    archs = sorted({str(g["arch"]) for g in gpus_all if g["arch"]})
    facts["model"] = models[0] if len(models) == 1 else (models or None)
    facts["arch"] = archs[0] if len(archs) == 1 else (archs or None)
    facts["driver_version"] = ((amd or {}).get("driver_version") or (nvidia or {}).get("driver_version")
                               or sysfs["driver_versions"].get(vendors[0] if vendors else "", None))
    facts["runtime_version"] = (amd or {}).get("rocm_version") or (nvidia or {}).get("cuda_version")
    facts["unhealthy"] = [g["index"] for g in gpus_all if not g["healthy"]]
    facts["healthy_count"] = facts["count"] - len(facts["unhealthy"])
    facts["compute_modes"] = sorted({g["compute_mode"] for g in gpus_all if g["compute_mode"]})
    facts["gfxoff"] = gfxoff_state(proc_root, sysfs_root)
    amd_archs = sorted({str(g["arch"]) for g in gpus_all if g["vendor"] == "amd" and g["arch"]})
    overrides = sorted({hsa_override_for(a) or "" for a in amd_archs})
    # one value per host: only when every AMD GPU needs the same one
    facts["hsa_override_gfx_version"] = overrides[0] if len(overrides) == 1 and overrides[0] else None
    return facts
