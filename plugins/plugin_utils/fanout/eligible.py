# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Which hosts get slots in a run: those that passed the step's preflight (inputs loaded
and verified, i29), whose GPUs the health check lets work (i23, i24) and where a worker
fits; every other host is left out with the reason (the warning, the summary, the
manifest). Each host as the fan-out sees it (`HostSpec`) from its validated variables."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import contract
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.contract import ContractError
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.health import apply_health
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec


def host_spec(name: str, hv: Any, input_dir: str) -> HostSpec:
    """The host as the fan-out sees it, from variables validated by the run contract."""
    v = contract.check_host(name, hv)
    prng_home = str(v["prng_home"]).rstrip("/")
    venv = str(v.get("worker_venv") or prng_home + "/venv").rstrip("/")
    return HostSpec(
        name=name,
        gpu_type=v["gpu_type"],
        gpu_count=v["gpu_count"],
        max_concurrent_jobs=v["max_concurrent_jobs"],
        memory_available_mb=available_mb(name, hv.get("prng_memory_available_mb")),
        memory_margin_pct=v["memory_margin_pct"],
        start_stagger_seconds=v["start_stagger_seconds"],
        prng_home=prng_home,
        worker_bin=venv + "/bin",
        input_dir=input_dir.rstrip("/"),
        env_file=str(v.get("worker_env_file") or prng_home + "/worker.env"),
        backend=v["worker_backend"],
        device=v["worker_device"],
    )


def available_mb(name: str, value: Any) -> float | None:
    """prng_memory_available_mb, set by the preflight from memory_facts (absent: unknown)."""
    if value in (None, ""):
        return None
    try:
        mb = float(value)
    except (TypeError, ValueError):
        raise ContractError(
            f"host {name}: prng_memory_available_mb: expected a number, got {value!r}"
        ) from None
    return mb if mb > 0 else None


def eligible_hosts(
    run: Any, hostvars: Any, step: str, input_dir_arg: str
) -> Tuple[List[HostSpec], Dict[str, str]]:
    """Hosts that passed every preflight check of `step` (none required when empty), with
    their input folder and lease; the others, with the reason they are left out. A job
    never runs where the step's inputs are not present and verified."""
    needed = sorted({os.path.basename(p) for p in run.plan.host_inputs().values() if p})
    uses_inputs = run.kind != "list"
    hosts: List[HostSpec] = []
    left_out: Dict[str, str] = {}
    for name in run.hosts:
        hv = hostvars[name]
        pre = hv.get("prng_preflight")
        input_dir = str(hv.get("fanout_input_dir") or input_dir_arg or "")
        if step:
            if not isinstance(pre, dict) or pre.get("step") != step:
                left_out[name] = f"did not complete the {step} preflight (unreachable or stopped)"
                continue
            if not pre.get("ok"):
                left_out[name] = f"failed the {step} preflight: {pre.get('reason') or 'no reason given'}"
                continue
            input_dir = str(pre.get("input_dir") or "")
            absent = [n for n in needed if n not in (pre.get("files") or {})]
            if absent:
                left_out[name] = f"its {step} ramdisk copy lacks {', '.join(absent)}"
                continue
        if uses_inputs and not input_dir:
            left_out[name] = "no verified input folder (the step's ramdisk preload did not run there)"
            continue
        spec = host_spec(name, hv, input_dir)
        if step:
            spec.lease_file = str(pre.get("lease") or "")
        unhealthy = apply_health(spec, hv, required=bool(step))
        if unhealthy:
            left_out[name] = unhealthy
            continue
        run.plan.adapt_host(spec)
        hosts.append(spec)
    return _some(hosts, left_out), left_out


def fitting_hosts(hosts: List[HostSpec], left_out: Dict[str, str]) -> List[HostSpec]:
    """A host where no worker fits (memory, or no usable GPU) gets no slot: it is left out
    with the reason, never given one slot anyway."""
    for host in hosts:
        if not host.slots:
            left_out[host.name] = host.slot_reason
    return _some([h for h in hosts if h.slots], left_out)


def _some(hosts: List[HostSpec], left_out: Dict[str, str]) -> List[HostSpec]:
    if not hosts:
        raise ContractError(
            "no host can run this step: " + "; ".join(f"{n}: {r}" for n, r in left_out.items())
        )
    return hosts
