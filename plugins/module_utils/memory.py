# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Real memory limit, use and /dev/shm state of a host (incident i26).

`free -h` shows the host's memory, not the container's cgroup limit, so the limit is
read from cgroup v2 first, then cgroup v1, then /proc/meminfo. Every root is an argument
so tests can point at fixture trees.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.module_utils.fsutil import mount_usage

MIB = 1024 * 1024
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit value; anything
# near it (or at least the host's RAM) means unlimited.
V1_UNLIMITED = 0x7FFFFFFFFFFFF000


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_meminfo(text: str) -> Dict[str, int]:
    """/proc/meminfo as bytes per key (values are in kB)."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        name, _sep, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[name.strip()] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def parse_proc_cgroup(text: str) -> Tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of a process from /proc/<pid>/cgroup."""
    v2 = None
    v1 = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def parse_memory_stat(text: str | None) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _chain(root: str, path: str) -> List[str]:
    """Directories from the process's cgroup up to the mount root, leaf first.

    Without a cgroup namespace /proc/self/cgroup names a path of the host's tree that
    may not exist under this mount (a container sees only its own part): then only
    the mount root is used, which is the container's own cgroup.
    """
    rel = path.strip("/")
    dirs = []
    if rel and os.path.isdir(os.path.join(root, rel)):
        parts = rel.split("/")
        for i in range(len(parts), 0, -1):
            dirs.append(os.path.join(root, *parts[:i]))
    dirs.append(root)
    return dirs


def cgroup_v2(cgroup_root: str, path: str) -> Dict[str, object] | None:
    """Effective limit (smallest memory.max up the tree), usage and the limiting dir."""
    # A hybrid host mounts an empty v2 tree (no memory controller): not a v2 answer.
    controllers = (_read(os.path.join(cgroup_root, "cgroup.controllers")) or "").split()
    dirs = _chain(cgroup_root, path)
    has_files = any(os.path.exists(os.path.join(d, "memory.max")) or
                    os.path.exists(os.path.join(d, "memory.current")) for d in dirs)
    if "memory" not in controllers and not has_files:
        return None
    limit = None
    limit_dir = None
    for d in dirs:
        value = _read_int(os.path.join(d, "memory.max"))
        if value is not None and (limit is None or value < limit):
            limit, limit_dir = value, d
    leaf = dirs[0]
    current = _read_int(os.path.join(leaf, "memory.current"))
    stat = parse_memory_stat(_read(os.path.join(leaf, "memory.stat")))
    return {"limit": limit, "limit_dir": limit_dir, "current": current,
            "inactive_file": stat.get("inactive_file", 0), "shmem": stat.get("shmem")}


def cgroup_v1(cgroup_root: str, path: str) -> Dict[str, object] | None:
    mem_root = os.path.join(cgroup_root, "memory")
    if not os.path.exists(os.path.join(mem_root, "memory.limit_in_bytes")):
        return None
    dirs = _chain(mem_root, path)
    limit = None
    limit_dir = None
    for d in dirs:
        value = _read_int(os.path.join(d, "memory.limit_in_bytes"))
        if value is not None and value < V1_UNLIMITED and (limit is None or value < limit):
            limit, limit_dir = value, d
    leaf = dirs[0]
    current = _read_int(os.path.join(leaf, "memory.usage_in_bytes"))
    stat = parse_memory_stat(_read(os.path.join(leaf, "memory.stat")))
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    shmem = stat.get("total_shmem", stat.get("shmem"))
    return {"limit": limit, "limit_dir": limit_dir, "current": current,
            "inactive_file": inactive, "shmem": shmem}


def shm_usage(shm_path: str) -> Dict[str, object]:
    """Size and use of the tmpfs at shm_path, read from the real mount (statvfs)."""
    try:
        use = mount_usage(shm_path)
    except OSError as exc:
        return {"path": shm_path, "present": False, "error": str(exc)}
    size, used, free = use["size_bytes"], use["used_bytes"], use["avail_bytes"]
    return {"path": shm_path, "present": True, "size_bytes": size, "used_bytes": used,
            "free_bytes": free, "used_percent": use["used_percent"],
            "size_mb": size // MIB, "used_mb": used // MIB, "free_mb": free // MIB}


def workers_fit(available_bytes: int, worker_mb: float, margin_pct: float) -> int:
    """Workers of worker_mb peak each that fit in available memory less margin_pct %."""
    if worker_mb <= 0:
        return 0
    usable = available_bytes * (1.0 - margin_pct / 100.0)
    return max(0, int(math.floor(usable / (worker_mb * MIB))))


def memory_facts(cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc",
                 shm_path: str = "/dev/shm", pid: str = "self") -> Dict[str, object]:
    """The host's real memory limit, use and availability plus /dev/shm state.

    limit: the smallest of the cgroup limit (v2, else v1) and MemTotal. used: the
    cgroup's usage less reclaimable page cache (inactive file), as the kernel's OOM
    decision sees it, or MemTotal - MemAvailable without a cgroup limit. available:
    limit - used, never more than the host's MemAvailable.
    """
    meminfo = parse_meminfo(_read(os.path.join(proc_root, "meminfo")) or "")
    mem_total = meminfo.get("MemTotal")
    if not mem_total:
        raise ValueError(f"cannot read MemTotal from {proc_root}/meminfo")
    host_available = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
    v2_path, v1_path = parse_proc_cgroup(_read(os.path.join(proc_root, str(pid), "cgroup")) or "")

    cg = None
    source = "meminfo"
    if v2_path is not None:
        cg = cgroup_v2(cgroup_root, v2_path)
        if cg is not None:
            source = "cgroup_v2"
    if cg is None:
        cg = cgroup_v1(cgroup_root, v1_path or "/")
        if cg is not None:
            source = "cgroup_v1"

    limited = bool(cg and cg["limit"] is not None and int(cg["limit"]) < mem_total)  # type: ignore[arg-type]
    if limited and cg is not None:
        limit = int(cg["limit"])  # type: ignore[arg-type]
        current = int(cg["current"] or 0)  # type: ignore[arg-type]
        used = max(0, current - int(cg["inactive_file"] or 0))  # type: ignore[arg-type]
        available = max(0, min(limit - used, host_available))
        limit_source = source
    else:
        limit = mem_total
        used = mem_total - host_available
        available = host_available
        limit_source = "meminfo"

    return {
        "limit_bytes": limit,
        "limit_mb": limit // MIB,
        "limit_source": limit_source,
        "cgroup_version": {"cgroup_v2": 2, "cgroup_v1": 1}.get(source, 0),
        "cgroup_limit_dir": cg["limit_dir"] if limited and cg else None,
        "host_total_bytes": mem_total,
        "host_total_mb": mem_total // MIB,
        "host_available_bytes": host_available,
        "used_bytes": used,
        "used_mb": used // MIB,
        "available_bytes": available,
        "available_mb": available // MIB,
        "used_pct": round(100.0 * used / limit, 1) if limit else 0.0,
        "shm": shm_usage(shm_path),
    }
