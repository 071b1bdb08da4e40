# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""GPU health in the plan: a GPU host gets slots only on the GPUs its preflight found
usable (i23, i24).

The preflight entry point roles/cluster_host/tasks/gpu_health.yml runs prng.cluster.gpu_facts on each
host, which records the fact `prng_gpu_health` ({"usable": [...], "excluded": {index:
reason}, ...}, decided by module_utils/gpu_health.usable_gpus). `apply_health` reads it on
the controller and sets `host_spec.gpu_indices`: slot i is bound to GPU gpu_indices[i].
"""

from __future__ import annotations

from typing import Any, Dict, List

FACT = "prng_gpu_health"


def _indices(name: str, value: Any) -> List[int]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"host {name}: {FACT}.usable: expected a list of GPU indexes, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not str(item).strip().lstrip("-").isdigit():
            raise ValueError(f"host {name}: {FACT}.usable: expected GPU indexes, got {item!r}")
        out.append(int(item))
    return out


def apply_health(host_spec: Any, hostvars: Any, required: bool = False) -> str | None:
    """Bind the host's slots to its usable GPUs; the reason to leave it out, or None.

    CPU hosts (gpu_type cpu or gpu_count 0) are not touched (gpu_indices None). A GPU host
    without a recorded health fact keeps GPUs 0..gpu_count-1 unchecked, unless `required`
    (then it is left out). `gpu_exclude` of the host's current variables is applied again,
    so an override given for this run counts even if the fact is older.
    """
    name = getattr(host_spec, "name", "?")
    if host_spec.gpu_type == "cpu" or int(host_spec.gpu_count) <= 0:
        host_spec.gpu_indices = None
        return None
    health = hostvars.get(FACT) if hasattr(hostvars, "get") else None
    if not isinstance(health, dict):
        host_spec.gpu_indices = list(range(int(host_spec.gpu_count)))
        if required:
            host_spec.gpu_indices = []
            return "no GPU health recorded (the gpu_health preflight did not run or failed there)"
        return None
    usable = _indices(name, health.get("usable", []))
    excluded: Dict[int, str] = {}
    for key, reason in (health.get("excluded") or {}).items():
        excluded[int(key)] = str(reason)  # JSON made the keys strings
    override = hostvars.get("gpu_exclude") or []
    for index in _indices(name, override):
        excluded.setdefault(index, "excluded by the inventory (gpu_exclude)")
    gpu_count = int(host_spec.gpu_count)
    for index in usable:
        if index >= gpu_count:
            excluded.setdefault(index, f"beyond gpu_count={gpu_count}")
    host_spec.gpu_indices = [i for i in sorted(set(usable)) if i < gpu_count and i not in excluded]
    host_spec.extra["gpu_health"] = {
        "usable": list(host_spec.gpu_indices),
        "excluded": {str(i): r for i, r in sorted(excluded.items())},
        "policy": health.get("policy"),
        "checked": health.get("checked"),
    }
    if host_spec.gpu_indices:
        return None
    shown = "; ".join(f"GPU {i}: {r}" for i, r in sorted(excluded.items())[:4])
    more = f" (+{len(excluded) - 4} more)" if len(excluded) > 4 else ""
    return (
        f"no usable GPU of {gpu_count}: {shown or 'none usable'}{more} "
        "(gpu_health_policy=ignore or gpu_health_since after a reset overrides)"
    )
