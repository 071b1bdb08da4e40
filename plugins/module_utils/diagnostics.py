# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The diagnostic battery of seed 002 §8.6 as findings with a severity and an action.

Inputs are the results of memory_facts, gpu_facts, kernel_log, the ramdisk status and
the HIP cache size; each check yields one or more findings
{check, severity (ok|info|warning|critical), message, action}.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils import ramdisk as rd
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import tree_bytes

SEVERITIES = ("ok", "info", "warning", "critical")
MIB = 1024 * 1024


def finding(check: str, severity: str, message: str, action: str = "") -> Dict[str, str]:
    return {"check": check, "severity": severity, "message": message, "action": action}


def worst(findings: List[Dict[str, str]]) -> str:
    return max((f["severity"] for f in findings), key=SEVERITIES.index, default="ok")


def memory_findings(mem: Dict[str, Any], min_available_mb: float) -> List[Dict[str, str]]:
    out = []
    avail, limit = mem["available_mb"], mem["limit_mb"]
    where = "{} limit".format(mem["limit_source"].replace("_", " "))
    if mem["limit_source"] != "meminfo":
        out.append(
            finding(
                "memory_limit",
                "info",
                f"cgroup limit {limit} MiB is below the host's {mem['host_total_mb']} MiB"
                " (free -h shows the host, i26)",
                f"Plan workers against {limit} MiB, not the host's RAM",
            )
        )
    if avail < min_available_mb:
        out.append(
            finding(
                "memory",
                "warning",
                f"{avail} MiB available of {limit} MiB ({where}), below {min_available_mb:g} MiB: OOM risk",
                "Reduce chunk_size or concurrent workers",
            )
        )
    else:
        out.append(finding("memory", "ok", f"{avail} MiB available of {limit} MiB ({where})"))
    return out


def shm_findings(shm: Dict[str, Any], warn_pct: float, crit_pct: float) -> List[Dict[str, str]]:
    if not shm.get("present"):
        return [
            finding(
                "shm",
                "critical",
                "{} missing: {}".format(shm.get("path"), shm.get("error", "")),
                "Mount a tmpfs at {} (or set diagnostics_shm_path)".format(shm.get("path")),
            )
        ]
    text = f"{shm['path']} {shm['used_mb']}/{shm['size_mb']} MiB used ({shm['used_percent']:.1f}%)"
    if shm["used_percent"] >= crit_pct:
        return [
            finding(
                "shm",
                "critical",
                text + f", above {crit_pct:g}%: preload refused",
                "Clear old steps: ansible-playbook playbooks/ramdisk_clear.yml",
            )
        ]
    if shm["used_percent"] >= warn_pct:
        return [
            finding(
                "shm",
                "warning",
                text + f", above {warn_pct:g}%",
                "Clear steps no longer needed: ansible-playbook playbooks/ramdisk_clear.yml",
            )
        ]
    return [finding("shm", "ok", text)]


def _gpu_action(problems: List[str]) -> str:
    text = " ".join(problems)
    if "unknown" in text:
        return "Reboot node or reseat GPU (SMU communication failure)"
    if "N/A" in text:
        return "Reboot node (GPU not responding)"
    if "cannot" in text or "not answering" in text:
        return "Reset the GPU or reboot the node; check power and riser"
    return "Check the GPU"


def gpu_findings(gpu: Dict[str, Any], expected: int, vendor_hint: str | None = None) -> List[Dict[str, str]]:
    out = []
    set_mode = "Set DEFAULT: ansible-playbook playbooks/setup.yml -e gpu_env_set_compute_mode=true"
    tried = gpu.get("tools_tried") or []
    # no vendor tool answered: missing GPUs may be a missing or unloaded driver, not hardware
    no_tool = gpu["tool"] in (None, "sysfs")
    install = "Install the GPU driver and its tool (nvidia-smi, or ROCm's amd-smi/rocm-smi)"
    if tried:
        install = f"Fix {'/'.join(tried)} (error above): load or reinstall the GPU driver"
    if gpu["count"] < expected:
        text = f"{gpu['count']} of {expected} expected GPUs found"
        action = "Check risers, power and seating of the missing GPUs; reboot"
        if no_tool and not tried:
            text += ": no GPU tool (nvidia-smi, amd-smi, rocm-smi) on this host"
            action = install
        elif no_tool:
            text += f": {'/'.join(tried)} did not answer"
            action = install
        out.append(finding("gpu_count", "critical", text, action))
    for g in gpu["gpus"]:
        hard = [p for p in g["problems"] if "compute mode" not in p and "sysfs only" not in p]
        mode = [p for p in g["problems"] if "compute mode" in p]
        if hard and not g["healthy"]:
            text = f"GPU {g['index']} ({g.get('pci_bus')}): " + "; ".join(hard)
            out.append(finding("gpu_health", "critical", text, _gpu_action(hard)))
        if mode:
            out.append(finding("gpu_compute_mode", "warning", f"GPU {g['index']}: {mode[0]}", set_mode))
    for err in gpu.get("errors", []):
        out.append(finding("gpu_tool", "warning", err, "Check the GPU driver / ROCm or CUDA installation"))
    if gpu["tool"] == "sysfs":
        text = f"{gpu['count']} GPUs seen in sysfs only: no vendor tool answered"
        out.append(finding("gpu_tool", "warning", text, install + " to read GPU health"))
    gfx = gpu.get("gfxoff") or {}
    if (gpu["vendor"] == "amd" or vendor_hint == "rocm") and gfx.get("gfxoff_disabled") is False:
        text = f"GFXOFF enabled (ppfeaturemask {gfx.get('ppfeaturemask')})"
        out.append(
            finding(
                "gfxoff",
                "warning",
                text,
                "ansible-playbook playbooks/setup.yml -e gpu_env_set_boot_params=true, then reboot",
            )
        )
    if not any(f["severity"] in ("warning", "critical") and f["check"].startswith("gpu") for f in out):
        if gpu["count"]:
            text = f"{gpu['count']} GPUs healthy ({gpu['model']}, {gpu['arch']}, via {gpu['tool']})"
            out.append(finding("gpu_health", "ok", text))
        else:
            out.append(finding("gpu_health", "ok", "no GPU (CPU host)"))
    return out


def usable_findings(health: Dict[str, Any], expected: int) -> List[Dict[str, str]]:
    """What the fan-out will do with the GPUs (gpu_health.usable_gpus): which get jobs."""
    if expected <= 0:
        return []
    usable, excluded = health["usable"], health["excluded"]
    left = "; ".join(f"GPU {i}: {r}" for i, r in sorted(excluded.items()))
    override = "gpu_exclude leaves a GPU out on purpose; gpu_health_policy=ignore uses flagged GPUs anyway"
    if not usable:
        return [
            finding(
                "gpu_usable",
                "critical",
                f"no GPU of {expected} gets jobs ({left}): the host is left out",
                "Reset or reboot the node, then gpu_health_since after the reset; " + override,
            )
        ]
    if excluded:
        return [
            finding(
                "gpu_usable",
                "warning",
                f"{len(usable)} of {expected} GPUs get jobs; left out: {left}",
                "Reset or reboot the node to get them back; " + override,
            )
        ]
    text = f"all {expected} GPUs get jobs" + (
        f" (policy ignore keeps {sorted(health['ignored'])})" if health.get("ignored") else ""
    )
    return [finding("gpu_usable", "ok", text)]


def kernel_findings(klog: Dict[str, Any]) -> List[Dict[str, str]]:
    if not klog.get("readable"):
        why = "; ".join(klog.get("errors") or ["no source"])
        return [
            finding(
                "kernel_log",
                "info",
                f"kernel log unreadable: {why}",
                "Run the diagnostics with become (-b) to read dmesg",
            )
        ]
    out = []
    if klog["oom_kill_count"]:
        last = klog["oom_kills"][-1]
        text = (
            f"{klog['oom_kill_count']} processes killed by the OOM killer"
            f" (last: {last['process']} pid {last['pid']})"
        )
        out.append(finding("oom_kills", "critical", text, "Reduce chunk_size or concurrent workers"))
    if klog["amdgpu_error_count"]:
        text = f"{klog['amdgpu_error_count']} amdgpu/KFD errors (last: {klog['amdgpu_errors'][-1]})"
        out.append(
            finding(
                "amdgpu_errors",
                "critical",
                text,
                "Driver or HIP failure: reboot the node; check GFXOFF is disabled",
            )
        )
    if klog["nvidia_xid_count"]:
        text = f"{klog['nvidia_xid_count']} NVIDIA Xid errors (last: " + klog["nvidia_xid"][-1]["line"] + ")"
        out.append(
            finding("nvidia_xid", "critical", text, "Check the GPU's power and seating; reboot the node")
        )
    if not out:
        text = f"no OOM kills or GPU driver errors since boot ({klog['source']})"
        out.append(finding("kernel_log", "ok", text))
    return out


def hip_cache_usage(root: str, patterns: List[str]) -> Dict[str, Any]:
    """Bytes held by the HIP kernel cache entries directly under root (no symlinks followed)."""
    root = os.path.expanduser(root)
    entries = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    for name in names:
        if not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        path = os.path.join(root, name)
        entries.append({"name": name, "path": path, "bytes": tree_bytes(path)})
    total = sum(e["bytes"] for e in entries)
    return {"root": root, "entries": entries, "total_bytes": total, "total_mb": total // MIB}


def hip_cache_findings(cache: Dict[str, Any], warn_mb: float) -> List[Dict[str, str]]:
    text = f"HIP kernel caches in {cache['root']}: {cache['total_mb']} MiB in {len(cache['entries'])} entries"
    if cache["total_mb"] > warn_mb:
        return [
            finding(
                "hip_cache",
                "warning",
                text + f" (> {warn_mb:g} MiB: memory pressure)",
                "ansible-playbook playbooks/setup.yml -e gpu_env_clear_hip_cache=true",
            )
        ]
    return [finding("hip_cache", "ok", text)]


def ramdisk_status(root: str) -> Dict[str, Any]:
    """Steps under the ramdisk root, as the ramdisk module sees them. A root it refuses
    (relative, a system folder) or cannot read comes back as `error`, a finding."""
    try:
        res = rd.status(root)
    except (rd.RamdiskError, OSError) as exc:
        return {"root": root, "steps": [], "via": "ramdisk", "error": str(exc)}
    steps = [
        {
            "step": s["step"],
            "state": s["state"],
            "bytes": s["bytes"],
            "files": len(s["files"]),
            "problems": s["problems"],
        }
        for s in res["steps"]
    ]
    return {"root": res["root"], "steps": steps, "via": "ramdisk"}


def ramdisk_findings(status: Dict[str, Any], expected_steps: List[str]) -> List[Dict[str, str]]:
    if status.get("error"):
        return [
            finding(
                "ramdisk",
                "warning",
                f"ramdisk root {status['root']}: {status['error']}",
                "set ramdisk_root to a folder of its own on a tmpfs (roles/cluster_host)",
            )
        ]
    out = []
    by_step = {s["step"]: s for s in status["steps"]}
    for step in expected_steps:
        s = by_step.get(step)
        if s is None or s["state"] == "absent":
            out.append(
                finding(
                    "ramdisk",
                    "warning",
                    f"{step} not loaded under {status['root']}",
                    "ansible-playbook playbooks/ramdisk_preload.yml (files not preloaded)",
                )
            )
    for s in status["steps"]:
        if s["state"] not in ("valid", "absent"):
            text = f"{s['step']} is {s['state']}: " + "; ".join(s["problems"])
            out.append(
                finding(
                    "ramdisk",
                    "warning",
                    text,
                    "ansible-playbook playbooks/ramdisk_preload.yml (reloads what is missing)",
                )
            )
    if not out:
        loaded = ", ".join(s["step"] for s in status["steps"]) or "no steps loaded"
        out.append(finding("ramdisk", "ok", "{}: {}".format(status["root"], loaded)))
    return out
