# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""prng.cluster.inventory_report: what playbooks/check_inventory.yml found per host, judged
(ready or not) and printed as a table with the fix for each problem.

Documentation: plugins/filter/inventory_report.yml.
"""

from __future__ import annotations

from typing import Any, Dict, List

MIN_PYTHON = (3, 8)
COLUMNS = (
    ("host", "host"),
    ("ready", "ready"),
    ("vars", "vars"),
    ("ssh", "ssh"),
    ("python", "python"),
    ("workers", "workers"),
    ("gpus", "GPUs"),
    ("memory", "memory"),
    ("shm", "/dev/shm"),
)


def _problem(check: str, blocking: bool, text: str, fix: str) -> Dict[str, Any]:
    return {"check": check, "ready": not blocking, "text": text, "fix": fix}


def _python(reach: Dict[str, Any]) -> tuple:
    try:
        major, minor = (int(x) for x in str(reach.get("version") or "0.0").split(".")[:2])
    except ValueError:
        return (0, 0)
    return (major, minor)


def _reach(host: str, reach: Dict[str, Any]) -> List[Dict[str, Any]]:
    exe = str(reach.get("executable") or "?")
    error = str(reach.get("error") or "not checked")
    error = error[len("Task failed: ") :] if error.startswith("Task failed: ") else error
    if not reach.get("reached"):
        fix = f"check ansible_host, ansible_user and the SSH key: ansible {host} -m ansible.builtin.ping"
        return [_problem("ssh", True, "unreachable: " + error, fix)]
    if not reach.get("ran"):
        fix = "set ansible_python_interpreter for the host to a real python3 (/usr/bin/python3), not a shim"
        return [_problem("python", True, "modules do not run: " + error, fix)]
    if _python(reach) < MIN_PYTHON:
        text = f"Python {reach.get('version')} at {exe} is too old (3.8 or newer is needed)"
        return [_problem("python", True, text, "set ansible_python_interpreter to a python3 >= 3.8")]
    if not reach.get("explicit"):
        text = f"ansible_python_interpreter not set: discovery picked {exe}"
        fix = f"set ansible_python_interpreter: {exe} for the host (elsewhere discovery may pick a shim)"
        return [_problem("python", False, text, fix)]
    return []


def _gpus(health: Dict[str, Any]) -> List[Dict[str, Any]]:
    usable, count = health.get("usable") or [], health.get("gpu_count", 0)
    excluded = {str(k): v for k, v in (health.get("excluded") or {}).items()}
    # the first reason of the first GPU left out; diagnostics.yml gives them all
    first = "; ".join(f"GPU {k}: {str(v).split('; ', maxsplit=1)[0]}" for k, v in list(excluded.items())[:1])
    out = []
    if not usable:
        fix = (
            "reset or reboot (playbooks/diagnostics.yml says why); gpu_health_since after a reset,"
            " gpu_health_policy: ignore to use them anyway"
        )
        out.append(_problem("gpus", True, f"no usable GPU of {count}: {first}", fix))
    elif excluded:
        text = f"{len(usable)} of {count} GPUs usable; left out {', '.join(excluded)} ({first})"
        fix = "reset or reboot them (playbooks/diagnostics.yml); gpu_exclude leaves a GPU out on purpose"
        out.append(_problem("gpus", False, text, fix))
    for warning in health.get("warnings") or []:
        out.append(_problem("gpus", False, warning, "install amd-smi/rocm-smi or nvidia-smi; -b reads dmesg"))
    return out


def _memory(host: str, mem: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    if mem.get("workers_fit") is not None and int(mem["workers_fit"]) == 0:
        text = (
            f"no worker fits: {mem.get('available_mb')} MiB available of {mem.get('limit_mb')} MiB"
            f" ({mem.get('limit_source')}), a worker needs ~{int(mem.get('worker_mb') or 0)} MiB"
            f" + {mem.get('margin_pct')}% margin"
        )
        out.append(
            _problem("memory", True, text, "free memory, or raise the host's (its cgroup's) memory limit")
        )
    shm = mem.get("shm") or {}
    used = float(shm.get("used_percent") or 0)
    if not shm.get("present"):
        out.append(
            _problem("shm", True, f"{shm.get('path', '/dev/shm')} missing", "mount a tmpfs at /dev/shm")
        )
    elif used >= 80:
        fix = f"ansible-playbook -i <inventory> playbooks/ramdisk_clear.yml --limit {host}"
        out.append(_problem("shm", True, f"/dev/shm {used:.1f}% used: a preload is refused above 80%", fix))
    elif used >= 50:
        fix = "clear steps no longer needed: playbooks/ramdisk_clear.yml"
        out.append(_problem("shm", False, f"/dev/shm {used:.1f}% used", fix))
    return out


def _ramdisk(root: Any, ramdisk: Dict[str, Any]) -> List[Dict[str, Any]]:
    fstype = (ramdisk.get("shm") or {}).get("fstype")
    if ramdisk.get("failed"):
        fix = "set ramdisk_root to a folder of its own under /dev/shm"
        return [_problem("shm", True, f"ramdisk_root {root}: {ramdisk.get('msg')}", fix)]
    if fstype and fstype not in ("tmpfs", "ramfs"):
        fix = "set ramdisk_root to a folder under /dev/shm (a clear refuses other roots)"
        return [_problem("shm", False, f"ramdisk_root {root} is on {fstype}, not a tmpfs", fix)]
    return []


def judge(host: str, found: Dict[str, Any]) -> Dict[str, Any]:
    """One host: its row in the table and its problems, each with a fix. A problem with
    ready=False makes the host not ready; the others are warnings."""
    p: List[Dict[str, Any]] = []
    checked = found.get("vars") or {}
    if not checked.get("ok"):
        fix = "set it in the inventory as roles/cluster_host/meta/argument_specs.yml says"
        p.append(_problem("vars", True, str(checked.get("text") or "not checked"), fix))
    reach = found.get("reach") or {}
    ran = bool(reach.get("reached") and reach.get("ran"))
    p += _reach(host, reach)
    row = {"python": "-", "workers": "-", "gpus": "-", "memory": "-", "shm": "-"}
    if ran:
        row["python"] = f"{reach.get('executable')} {reach.get('version')}"
        row["workers"] = "ok" if found.get("workers_ok") else "DIFFERS"
        if not found.get("workers_ok"):
            fix = f"ansible-playbook -i <inventory> playbooks/setup.yml --limit {host}"
            p.append(_problem("workers", True, str(found.get("workers_reason") or "not checked"), fix))
        health = found.get("health") or {}
        if health.get("cpu"):
            row["gpus"] = "cpu"
        elif health:
            row["gpus"] = "{}/{}".format(len(health.get("usable") or []), health.get("gpu_count", 0))
            p += _gpus(health)
        mem = found.get("memory") or {}
        if mem:
            shm = mem.get("shm") or {}
            row["memory"] = f"{int(mem.get('available_mb', 0))} MiB"
            if shm.get("present"):
                row["shm"] = f"{float(shm.get('used_percent') or 0):.0f}% of {shm.get('size_mb')} MiB"
            p += _memory(host, mem)
        p += _ramdisk(found.get("ramdisk_root"), found.get("ramdisk") or {})
    return dict(
        row,
        host=host,
        ready=all(x["ready"] for x in p),
        vars="ok" if checked.get("ok") else "BAD",
        ssh="ok" if reach.get("reached") else "NO",
        problems=p,
    )


def inventory_report(found_by_host: Any) -> Dict[str, Any]:
    """{host: findings} -> {"rows", "lines" (the table, then each problem and its fix),
    "ready": [hosts], "not_ready": [hosts], "line": one-line result}."""
    rows = [judge(h, dict(f or {})) for h, f in sorted(dict(found_by_host or {}).items())]
    cells = [[title for _key, title in COLUMNS]]
    for r in rows:
        cells.append(
            [("yes" if r["ready"] else "NO") if key == "ready" else str(r[key]) for key, _t in COLUMNS]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    for r in rows:
        for x in r["problems"]:
            lines.append(
                "{} [{}] {}: {}".format(
                    r["host"], "warning" if x["ready"] else "NOT READY", x["check"], x["text"]
                )
            )
            lines.append("    fix: " + x["fix"])
    ready = [r["host"] for r in rows if r["ready"]]
    not_ready = [r for r in rows if not r["ready"]]
    why = ", ".join(
        "{} ({})".format(
            r["host"], ", ".join(dict.fromkeys(x["check"] for x in r["problems"] if not x["ready"]))
        )
        for r in not_ready
    )
    line = f"check_inventory: {len(ready)} of {len(rows)} host(s) ready; not ready: {why or 'none'}"
    return {
        "rows": rows,
        "lines": lines,
        "ready": ready,
        "not_ready": [r["host"] for r in not_ready],
        "line": line,
    }


class FilterModule:
    """prng.cluster filters."""

    def filters(self) -> Dict[str, Any]:
        return {"inventory_report": inventory_report}
