# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Which GPUs of a host may be given jobs, and why the others may not (i23, i24).

One pure function, `usable_gpus`, decides from what gpu_facts and kernel_log found; the
gpu_facts module returns its answer (fact `prng_gpu_health`) and the fan-out binds slot i
to the i-th usable GPU. Standard library only: it runs on the hosts and on the controller.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List

POLICIES = ("exclude", "ignore")
OVERRIDE = "excluded by the inventory (gpu_exclude)"
# Problems gpu_tools records that say nothing about the GPU's health.
NOT_A_FAULT = ("sysfs only",)
_PCI = re.compile(r"([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})")


def pci_key(text: Any) -> str | None:
    """dddd:bb:dd of a PCI address in any of the tools' spellings (0000:0B:00.0,
    00000000:65:00.0, PCI:0000:65:00), None when there is none."""
    m = _PCI.search(str(text or ""))
    if not m:
        return None
    return f"{int(m.group(1), 16):04x}:{int(m.group(2), 16):02x}:{int(m.group(3), 16):02x}"


def usable_gpus(
    gpu_facts_result: Dict[str, Any] | None,
    kernel_findings: Dict[str, Any] | None,
    gpu_count: int,
    gpu_exclude: Iterable[int] = (),
    policy: str = "exclude",
) -> Dict[str, Any]:
    """GPU indexes 0..gpu_count-1 that may get a slot, and why each other one may not.

    A GPU is unusable when gpu_facts cannot find it (lost, off the bus: fewer GPUs than
    `gpu_count`), flags it (clocks `N/A`, performance level `unknown`, compute mode
    EXCLUSIVE_PROCESS or PROHIBITED, not answering), or the kernel log since boot (or
    since the configured time) holds a ring timeout, reset or Xid for its PCI address.
    `policy="ignore"` keeps such GPUs (their reasons move to `ignored`); `gpu_exclude`
    always removes the GPUs it names. Returns {"usable": [index, ...], "excluded":
    {index: reason}, "ignored": {index: reason}, "warnings": [text], "policy": policy}.
    """
    if policy not in POLICIES:
        raise ValueError(f"gpu_health_policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    if isinstance(gpu_count, bool) or int(gpu_count) < 0:
        raise ValueError(f"gpu_count: expected an integer >= 0, got {gpu_count!r}")
    gpu_count = int(gpu_count)
    facts = gpu_facts_result or {}
    klog = kernel_findings or {}
    gpus = [g for g in facts.get("gpus") or [] if isinstance(g, dict) and g.get("index") is not None]
    by_index: Dict[int, Dict[str, Any]] = {}
    for gpu in gpus:
        by_index.setdefault(int(gpu["index"]), gpu)
    reasons: Dict[int, List[str]] = {}
    warnings: List[str] = []

    tool = facts.get("tool") or "no GPU tool"
    for index in range(gpu_count):
        gpu = by_index.get(index)
        if gpu is None:
            found = len(gpus)
            what = f"{tool} lists {found} of {gpu_count} GPUs" if found else f"{tool} found no GPU"
            reasons.setdefault(index, []).append(
                f"not found ({what}): lost, off the bus or driver not loaded"
            )
            continue
        if not gpu.get("healthy", True):
            bad = [p for p in gpu.get("problems") or [] if not any(n in p for n in NOT_A_FAULT)]
            reasons.setdefault(index, []).extend(bad or ["flagged unhealthy by " + str(gpu.get("source"))])

    if facts.get("tool") == "sysfs" and gpu_count:
        warnings.append("GPU health unknown: no vendor tool answered (GPUs seen in sysfs only)")
    if klog and klog.get("readable") is False:
        why = "; ".join(klog.get("errors") or []) or "no source"
        warnings.append(f"kernel log unreadable ({why}): GPUs judged by the GPU tools only")

    by_pci = {pci_key(g.get("pci_bus")): int(g["index"]) for g in gpus if pci_key(g.get("pci_bus"))}
    for event in klog.get("gpu_events") or []:
        if not event.get("excludes", True):
            continue
        text = "kernel log: {}{}".format(
            event.get("kind", "GPU error"), f" at {event['time']}" if event.get("time") else ""
        )
        key = pci_key(event.get("pci"))
        index = by_pci.get(key) if key else None
        if index is None and gpu_count == 1 and not key:
            index = 0  # one GPU: an error without an address can only be about it
        if index is None:
            where = f"PCI {key}, not a GPU gpu_facts lists" if key else "no PCI address in the log"
            warnings.append(f"{text} ({where}): not tied to a GPU; check the host")
        elif index < gpu_count and text not in reasons.get(index, []):
            reasons.setdefault(index, []).append(text)

    excluded: Dict[int, str] = {}
    ignored: Dict[int, str] = {}
    for index, texts in sorted(reasons.items()):
        if index >= gpu_count:
            continue
        (ignored if policy == "ignore" else excluded)[index] = "; ".join(texts)
    for raw in gpu_exclude or ():
        index = int(raw)
        if 0 <= index < gpu_count:
            excluded[index] = OVERRIDE + ("; " + excluded[index] if index in excluded else "")
            ignored.pop(index, None)
        else:
            warnings.append(
                f"gpu_exclude names GPU {index}, but gpu_count is {gpu_count} (GPUs 0-{gpu_count - 1})"
            )
    usable = [i for i in range(gpu_count) if i not in excluded]
    return {
        "usable": usable,
        "excluded": dict(sorted(excluded.items())),
        "ignored": dict(sorted(ignored.items())),
        "warnings": warnings,
        "policy": policy,
    }
