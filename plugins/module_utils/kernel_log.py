# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""OOM kills and GPU driver errors in the kernel log (seed 002 §8.6).

Reads `dmesg`, else `journalctl -k -b` (dmesg may be restricted to root), else reports
that the log is unreadable instead of failing.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any, Dict, List, Tuple

OOM_KILL = re.compile(r"(?:Memory cgroup out of memory|Out of memory): Killed process (\d+) \(([^)]*)\)")
OOM_INVOKED = re.compile(r"(\S+) invoked oom-killer")
# amdgpu / KFD lines that mean trouble; plain init lines ("[drm] Initialized amdgpu") do not match
AMDGPU = re.compile(r"amdgpu|\[drm:|\bkfd\b", re.I)
AMDGPU_BAD = re.compile(r"\*ERROR\*|error|fail|timeout|timed out|fault|hang"
                        r"|not done with your previous command|GPU reset|reset begin", re.I)
NVIDIA_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")
FALLEN = re.compile(r"fallen off the bus", re.I)


def parse_kernel_log(text: str, max_lines: int = 20) -> Dict[str, Any]:
    """Findings in a kernel log (dmesg or journalctl -k format)."""
    kills: List[Dict[str, Any]] = []
    invoked = 0
    amd: List[str] = []
    xid: List[Dict[str, Any]] = []
    for line in text.splitlines():
        line = line.rstrip()
        m = OOM_KILL.search(line)
        if m:
            kills.append({"pid": int(m.group(1)), "process": m.group(2), "line": line.strip()})
            continue
        if OOM_INVOKED.search(line):
            invoked += 1
            continue
        m = NVIDIA_XID.search(line)
        if m:
            xid.append({"pci": m.group(1), "xid": int(m.group(2)), "line": line.strip()})
            continue
        if FALLEN.search(line) and "NVRM" in line:
            xid.append({"pci": None, "xid": None, "line": line.strip()})
            continue
        if AMDGPU.search(line) and AMDGPU_BAD.search(line):
            amd.append(line.strip())
    return {"oom_kills": kills[-max_lines:], "oom_kill_count": len(kills), "oom_invocations": invoked,
            "amdgpu_errors": amd[-max_lines:], "amdgpu_error_count": len(amd),
            "nvidia_xid": xid[-max_lines:], "nvidia_xid_count": len(xid)}


def _run(argv: List[str], timeout: float) -> Tuple[int, str, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def read_kernel_log(sources: List[str], log_file: str | None = None,
                    timeout: float = 30.0) -> Tuple[str | None, str | None, List[str]]:
    """(text, source, errors): the first readable source, or (None, None, why not)."""
    errors: List[str] = []
    if log_file:
        try:
            with open(log_file, errors="replace") as fh:
                return fh.read(), "file", errors
        except OSError as exc:
            return None, None, [f"{log_file}: {exc}"]
    for source in sources:
        argv = ["dmesg"] if source == "dmesg" else ["journalctl", "-k", "-b", "--no-pager", "-q"]
        rc, out, err = _run(argv, timeout)
        if rc == 0 and out.strip() and not out.strip().startswith("-- No entries --"):
            return out, source, errors
        text = (err or out).strip()
        errors.append(f"{source}: " + (text.splitlines()[0] if text else f"rc={rc}, no output"))
    return None, None, errors
