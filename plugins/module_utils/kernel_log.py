# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""OOM kills and GPU driver errors in the kernel log (seed 002 §8.6).

Reads `dmesg`, else `journalctl -k -b` (dmesg may be restricted to root), else reports
that the log is unreadable instead of failing. `since` keeps only what was logged after
a time (an operator who rebooted or reset a GPU does not want its old resets held
against it). `gpu_events` are the lines that make a GPU unusable (ring timeout, GPU
reset, SMU not answering, an NVIDIA Xid that is not an application error), each with
the PCI address of the GPU it concerns when the log names one, so that
gpu_health.usable_gpus can match it to a GPU index.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from typing import Any, Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.module_utils.fsutil import run_argv

OOM_KILL = re.compile(r"(?:Memory cgroup out of memory|Out of memory): Killed process (\d+) \(([^)]*)\)")
OOM_INVOKED = re.compile(r"(\S+) invoked oom-killer")
# amdgpu / KFD lines that mean trouble; plain init lines ("[drm] Initialized amdgpu") do not match
AMDGPU = re.compile(r"amdgpu|\[drm:|\bkfd\b", re.I)
AMDGPU_BAD = re.compile(
    r"\*ERROR\*|error|fail|timeout|timed out|fault|hang"
    r"|not done with your previous command|GPU reset|reset begin",
    re.I,
)
NVIDIA_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")
FALLEN = re.compile(r"fallen off the bus", re.I)
# A PCI address as drivers print it: 0000:0b:00.0 (amdgpu), PCI:0000:65:00 (Xid).
PCI = re.compile(r"\b([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.([0-7]))?\b")
# dmesg's "[ 5123.456789]" seconds since boot.
STAMP = re.compile(r"^\s*\[\s*(\d+(?:\.\d+)?)\]")
# journalctl's "Jun 10 13:02:11 host kernel:" (already filtered by --since).
SYSLOG_STAMP = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ")
# amdgpu lines that mean the GPU hung or was reset: it is not to be given jobs.
AMD_EVENTS = (
    ("ring timeout", re.compile(r"ring \S+ timeout", re.I)),
    ("GPU reset", re.compile(r"GPU reset|GPU recovery|reset begin", re.I)),
    (
        "SMU not answering",
        re.compile(r"not done with your previous command|SMU.*(?:timed out|failed|no response)", re.I),
    ),
)
# Xids caused by the application (bad kernel, killed context), not by the GPU:
# 13 graphics engine exception, 31 MMU fault, 43 context reset, 45 preemptive cleanup.
XID_APPLICATION = frozenset((13, 31, 43, 45))
# How far (lines) a line without an address looks for one in the same burst of driver lines.
BURST = 8
MAX_EVENTS = 200


def parse_kernel_log(
    text: str, max_lines: int = 20, since: float | None = None, boot_time: float | None = None
) -> Dict[str, Any]:
    """Findings in a kernel log (dmesg or journalctl -k format).

    With `since` (epoch seconds) and `boot_time` (epoch of the boot), dmesg lines stamped
    before `since` are skipped; lines without a stamp are kept (journalctl filters itself).
    """
    kills: List[Dict[str, Any]] = []
    invoked = 0
    amd: List[str] = []
    xid: List[Dict[str, Any]] = []
    driver: List[Tuple[int, str, str | None]] = []  # (line number, line, PCI address) of GPU driver lines
    events: List[Dict[str, Any]] = []
    skipped = 0
    lines = text.splitlines()
    for number, line in enumerate(lines):
        line = line.rstrip()
        stamp = STAMP.match(line)
        if (
            since is not None
            and boot_time is not None
            and stamp
            and boot_time + float(stamp.group(1)) < since
        ):
            skipped += 1
            continue
        m = OOM_KILL.search(line)
        if m:
            kills.append({"pid": int(m.group(1)), "process": m.group(2), "line": line.strip()})
            continue
        if OOM_INVOKED.search(line):
            invoked += 1
            continue
        when = _when(stamp, boot_time) or _syslog_when(line)
        m = NVIDIA_XID.search(line)
        if m:
            code = int(m.group(2))
            xid.append({"pci": m.group(1), "xid": code, "line": line.strip()})
            events.append(
                {
                    "kind": f"NVIDIA Xid {code}",
                    "pci": pci_of(m.group(1)),
                    "time": when,
                    "line": line.strip(),
                    "excludes": code not in XID_APPLICATION,
                }
            )
            continue
        if FALLEN.search(line) and "NVRM" in line:
            xid.append({"pci": None, "xid": None, "line": line.strip()})
            events.append(
                {
                    "kind": "fallen off the bus",
                    "pci": pci_of(line),
                    "time": when,
                    "line": line.strip(),
                    "excludes": True,
                }
            )
            continue
        if AMDGPU.search(line):
            driver.append((number, line.strip(), pci_of(line)))
            if AMDGPU_BAD.search(line):
                amd.append(line.strip())
                kind = next((k for k, rx in AMD_EVENTS if rx.search(line)), None)
                if kind:
                    events.append(
                        {
                            "kind": f"amdgpu {kind}",
                            "pci": pci_of(line),
                            "time": when,
                            "line": line.strip(),
                            "excludes": True,
                            "_n": number,
                        }
                    )
    _attribute(events, driver)
    return {
        "oom_kills": kills[-max_lines:],
        "oom_kill_count": len(kills),
        "oom_invocations": invoked,
        "amdgpu_errors": amd[-max_lines:],
        "amdgpu_error_count": len(amd),
        "nvidia_xid": xid[-max_lines:],
        "nvidia_xid_count": len(xid),
        "gpu_events": events[-MAX_EVENTS:],
        "lines_before_since": skipped,
    }


def pci_of(text: str | None) -> str | None:
    """The first PCI address in a text, normalized to dddd:bb:dd (function dropped: a GPU
    is function 0, its audio device function 1), or None."""
    m = PCI.search(text or "")
    if not m:
        return None
    return f"{int(m.group(1), 16):04x}:{int(m.group(2), 16):02x}:{int(m.group(3), 16):02x}"


def _when(stamp: Any, boot_time: float | None) -> str | None:
    if not stamp:
        return None
    secs = float(stamp.group(1))
    if boot_time is None:
        return f"{secs:.0f} s after boot"
    return datetime.datetime.fromtimestamp(boot_time + secs, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _syslog_when(line: str) -> str | None:
    m = SYSLOG_STAMP.match(line)
    return m.group(1) if m else None


def _attribute(events: List[Dict[str, Any]], driver: List[Tuple[int, str, str | None]]) -> None:
    """An amdgpu line without an address ("[drm:amdgpu_job_timedout] *ERROR* ring gfx
    timeout") belongs to the GPU that the nearest driver line of the same burst names,
    the next one first ("amdgpu 0000:0b:00.0: GPU reset begin!" follows it)."""
    for ev in events:
        number = ev.pop("_n", None)
        if ev["pci"] or number is None:
            continue
        after = [p for n, _l, p in driver if number < n <= number + BURST and p]
        before = [p for n, _l, p in reversed(driver) if number - BURST <= n < number and p]
        ev["pci"] = (after or before or [None])[0]


def parse_since(value: Any, now: float | None = None) -> float | None:
    """`since` as epoch seconds: empty (None: since boot), "@<epoch>", an age such as
    "90m", "6h", "2d", or a local time "YYYY-MM-DD HH:MM[:SS]" (also with "T"). ValueError
    with the expected forms otherwise."""
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    now = time.time() if now is None else now
    m = re.match(r"^@(\d+(?:\.\d+)?)$", text)
    if m:
        return float(m.group(1))
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([smhd])$", text)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise ValueError(
        f"found {text!r}, expected empty (since boot), @<epoch seconds>, an age like 6h / 90m / 2d,"
        " or a local time YYYY-MM-DD HH:MM[:SS]"
    )


def boot_time(proc_root: str = "/proc") -> float | None:
    """Epoch seconds of the boot (`btime` in /proc/stat), None when unreadable."""
    try:
        with open(os.path.join(proc_root, "stat")) as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_kernel_log(
    sources: List[str], log_file: str | None = None, timeout: float = 30.0, since: float | None = None
) -> Tuple[str | None, str | None, List[str]]:
    """(text, source, errors): the first readable source, or (None, None, why not).
    journalctl is asked for what came after `since` itself; dmesg lines are filtered by
    parse_kernel_log."""
    errors: List[str] = []
    if log_file:
        try:
            with open(log_file, errors="replace") as fh:
                return fh.read(), "file", errors
        except OSError as exc:
            return None, None, [f"{log_file}: {exc}"]
    for source in sources:
        argv = ["dmesg"] if source == "dmesg" else ["journalctl", "-k", "-b", "--no-pager", "-q"]
        if source == "journalctl" and since is not None:
            argv.append(f"--since=@{int(since)}")
        rc, out, err = run_argv(argv, timeout)
        if rc == 0 and source == "journalctl" and since is not None and not out.strip():
            return "", source, errors  # nothing logged since then: readable, and clean
        if rc == 0 and out.strip() and not out.strip().startswith("-- No entries --"):
            return out, source, errors
        text = (err or out).strip()
        errors.append(f"{source}: " + (text.splitlines()[0] if text else f"rc={rc}, no output"))
    return None, None, errors


def kernel_log_result(
    sources: List[str],
    log_file: str | None = None,
    timeout: float = 30.0,
    since_text: Any = "",
    proc_root: str = "/proc",
    max_lines: int = 20,
) -> Dict[str, Any]:
    """What the kernel_log module returns: the first readable source parsed, with
    `readable`, `source`, `errors` and `since` (UTC text or None). ValueError (one line)
    on a bad `since_text`."""
    since = parse_since(since_text)
    text, source, errors = read_kernel_log(sources, log_file, timeout, since)
    result = parse_kernel_log(text or "", max_lines, since, boot_time(proc_root))
    stamp = None
    if since is not None:
        stamp = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dict(result, readable=text is not None, source=source, errors=errors, since=stamp)
