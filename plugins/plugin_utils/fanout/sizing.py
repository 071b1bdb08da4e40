# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""How much work each host gets: the measured memory model (peak MiB of one worker, the
workers' own formula), slots on a host = min(gpu_count (CPU host: max_concurrent_jobs),
max_concurrent_jobs, workers that fit its real memory limit), the chunk size that lets every
host run all its slots, the throughput remembered between runs, and the --check preview.
Slot i binds the i-th usable GPU (i1, i10, i11, i23).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, Plan, PlanError


# -- memory model and slots ------------------------------------------------------------
def load_memory_model(path: str | None) -> Dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def default_memory_model() -> str:
    """The collection's data/memory_model.json (next to data/throughput.json): what a plan
    without a `memory_model` parameter (Step 1's sieve) is sized with; PRNG_MEMORY_MODEL
    overrides."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("PRNG_MEMORY_MODEL") or os.path.normpath(
        os.path.join(here, "..", "..", "..", "data", "memory_model.json")
    )


def memory_models(path: str | None, host: HostSpec) -> List[tuple[Dict[str, Any], str]]:
    """The models that apply to `host`, best first, each with what it is: measured on that
    host (`memory_models/<host>.json` next to the controller's model, written by
    playbooks/measure_memory.yml), on a host of its gpu_type (`memory_models/gpu_type-<type>.json`),
    the controller's measurement (the fallback)."""
    folder = os.path.join(os.path.dirname(path), "memory_models") if path else ""
    found = []
    for name, source in (
        (f"{host.name}.json", "measured on this host"),
        (f"gpu_type-{host.gpu_type}.json", f"measured on a {host.gpu_type} host"),
    ):
        model = load_memory_model(os.path.join(folder, name)) if folder else None
        if model:
            found.append((model, source))
    model = load_memory_model(path)
    if model:
        found.append((model, "the controller's measurement (fallback)"))
    return found


def host_memory_model(path: str | None, host: HostSpec) -> tuple[Dict[str, Any] | None, str]:
    """The memory model for `host` (the first of memory_models) and which it is, for the plan."""
    found = memory_models(path, host)
    return found[0] if found else (None, "no memory model")


def sieve_worker_mb(path: str | None, host: HostSpec) -> tuple[float, str]:
    """Peak MiB of one `prng-sieve` worker on `host`'s backend (the sieve plan's names: cpu,
    numpy, gpu, auto) from the first model that measured that backend (the host's, its
    gpu_type's, the controller's: prng-memory-model's `sieve` section; flat in the chunk);
    0.0 and "no memory model ..." when none did, as before the sieve was measured."""
    from prng_workers.scoring.memory_model import sieve_peak_mb

    for model, source in memory_models(path, host):
        mb = sieve_peak_mb(model, host.backend)
        if mb:
            return mb, f"{source}, sieve backend {host.backend}"
    return 0.0, f"no memory model with a sieve figure for backend {host.backend}"


def predict_peak_mb(model: Dict[str, Any] | None, backend: str, chunk_size: int, n_draws: int) -> float:
    """Predicted peak MiB of one worker: the workers' own formula
    (prng_workers.scoring.memory_model.predict_peak_mb, the contract). No model at all: 0.0,
    memory does not limit the slots (the plan says "no memory model"); a model without
    `backend` is a PlanError naming the backends it has."""
    if not model:
        return 0.0
    from prng_workers.scoring.memory_model import predict_peak_mb as workers_peak_mb

    try:
        return workers_peak_mb(model, backend, chunk_size, n_draws)
    except ValueError as exc:  # the workers' InputError
        raise PlanError(str(exc)) from None


# -- throughput remembered between runs ---------------------------------------------------
THROUGHPUT_VERSION = 1


def load_throughput(path: str | None) -> Dict[str, Any]:
    """Measured rates (units per slot-second) by plan kind, per host and per gpu_type, kept
    between runs next to the memory model (as gpu_optimizer.py kept its profiles)."""
    if not path or not os.path.exists(path):
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    if not isinstance(doc, dict) or doc.get("version") != THROUGHPUT_VERSION:
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    return doc


def stored_rate(table: Dict[str, Any], kind: str, host: HostSpec) -> tuple[float | None, str]:
    """(units per slot-second, where it came from): the host's own, else its gpu_type's."""
    rates = (table.get("rates") or {}).get(kind) or {}
    for key, label in ((f"host:{host.name}", "this host"), (f"gpu_type:{host.gpu_type}", host.gpu_type)):
        rec = rates.get(key)
        if isinstance(rec, dict) and float(rec.get("rate") or 0) > 0:
            return float(rec["rate"]), f"{label}, {rec.get('runs', 1)} runs"
    return None, "no stored rate"


def remember_throughput(path: str, kind: str, hosts: Dict[str, Any], alpha: float = 0.5) -> Dict[str, Any]:
    """Fold a finished run's measured rates (the manifest's `hosts`) into the stored ones
    (moving average per host and per gpu_type) and write the file atomically."""
    import tempfile
    import time

    doc = load_throughput(path)
    rates = doc.setdefault("rates", {}).setdefault(kind, {})
    for name, h in hosts.items():
        rate = float(h.get("rate_units_per_slot_s") or 0)
        if rate <= 0 or not h.get("jobs_done"):
            continue
        for key in (f"host:{name}", f"gpu_type:{h.get('gpu_type', 'cpu')}"):
            old = rates.get(key) or {}
            runs = int(old.get("runs", 0))
            new = rate if not runs else alpha * rate + (1 - alpha) * float(old["rate"])
            rates[key] = {"rate": round(new, 4), "runs": runs + 1, "updated": round(time.time(), 1)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".throughput-")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return doc


def plan_preview(
    plan: Plan,
    params: Dict[str, Any],
    hosts: List[HostSpec],
    left_out: Dict[str, str],
    table: Dict[str, Any],
) -> Dict[str, Any]:
    """What a run would do, without running a job: chunk size, slots per host with the reason,
    predicted memory per worker against the host's limit, job count, ETA from stored rates."""
    jobs = plan.make_jobs()
    units = sum(j.units for j in jobs)
    per_host: Dict[str, Any] = {}
    capacity, unknown = 0.0, []
    worker_mb = params.get("worker_mb") or {}
    for h in hosts:
        rate, source = stored_rate(table, plan.kind, h)
        usable = h.memory_available_mb * (1 - h.memory_margin_pct / 100.0) if h.memory_available_mb else None
        mb = worker_mb.get(h.name)
        per_host[h.name] = {
            "slots": h.slots,
            "slot_reason": h.slot_reason,
            "backend": h.backend,
            "predicted_worker_mb": mb,
            "memory_usable_mb": round(usable, 1) if usable else None,
            "memory_limit": (
                f"{h.slots} x {mb} MiB = {round(h.slots * mb, 1)} of {round(usable, 1)} MiB usable"
                if mb and usable
                else "no memory model for this plan"
                if not mb
                else "host memory unknown"
            ),
            "rate_units_per_slot_s": rate,
            "rate_source": source,
        }
        if rate:
            capacity += rate * h.slots
        else:
            unknown.append(h.name)
    eta = round(units / capacity, 1) if capacity and not unknown else None
    model = params.get("memory_model") or (default_memory_model() if plan.kind == "sieve" else None)
    return {
        "chunk_size": params.get("chunk_size"),
        # the model file the slots were sized with (each host's own next to it first: slot_reason)
        "memory_model": model,
        "jobs": len(jobs),
        "units": units,
        "hosts": per_host,
        "left_out": left_out,
        "eta_s": eta,
        "eta": (
            f"{eta} s at the stored rates"
            if eta is not None
            else "unknown: no stored throughput for " + ", ".join(unknown or ["any host"])
        ),
    }


def slots_for(host: HostSpec, worker_mb: float) -> int:
    """min(usable GPUs or CPU limit, configured limit, what fits in memory). 0 when no worker
    fits: the host is then left out with `slot_reason`, never given a slot anyway."""
    limit = host.base_slots()
    reason = f"gpu_count={host.gpu_count} max_concurrent_jobs={host.max_concurrent_jobs}"
    if host.gpu_indices is not None and host.gpu_type != "cpu":
        reason += f" usable_gpus={host.gpu_indices}"
    if host.memory_available_mb and worker_mb > 0:
        usable = host.memory_available_mb * (1 - host.memory_margin_pct / 100.0)
        fit = int(math.floor(usable / worker_mb))
        reason += f" memory_fit={fit} ({usable:.0f} MiB usable / {worker_mb:.0f} MiB per worker)"
        limit = min(limit, fit)
    host.slots = max(0, limit)
    host.slot_reason = reason if host.slots else "no worker fits: " + reason
    return host.slots


def model_backend(host: HostSpec) -> str:
    """Which memory model applies: torch workers carry the framework's footprint."""
    return "torch" if host.backend in ("torch", "gpu") else "numpy"


def pick_chunk_size(
    hosts: List[HostSpec],
    model: Dict[str, Any] | None,
    backend: str | None,
    wanted: int,
    n_draws: int,
    min_chunk: int = 100,
) -> int:
    """Largest chunk <= wanted with which every host still runs all its slots in memory;
    smaller chunks, not fewer workers, keep GPUs busy (seed 004). `backend` None: each
    host's own."""
    chunk = wanted
    for host in hosts:
        if not host.memory_available_mb or not model:
            continue
        host_backend = backend or model_backend(host)
        want_slots = max(1, host.base_slots())
        usable = host.memory_available_mb * (1 - host.memory_margin_pct / 100.0)
        while (
            chunk > min_chunk and predict_peak_mb(model, host_backend, chunk, n_draws) * want_slots > usable
        ):
            chunk = max(min_chunk, int(chunk * 0.8))
    return chunk


def size_hosts(plan: Plan, params: Dict[str, Any], hosts: List[HostSpec]) -> str:
    """Chunk size and each host's slots from the measured memory model (each host's own
    when there is one: playbooks/measure_memory.yml) and the host's real limit; sets
    params chunk_size and worker_mb. Returns a note when the chunk had to shrink."""
    if plan.kind == "sieve":  # flat per backend: the slots, never the chunk
        path = params.get("memory_model") or default_memory_model()
        sieve_mb: Dict[str, Any] = {}
        for host in hosts:
            mb, source = sieve_worker_mb(path, host)
            sieve_mb[host.name] = round(mb, 1) if mb else None
            slots_for(host, mb)
            host.slot_reason += f" memory model: {source}"
        params["worker_mb"] = sieve_mb
        return ""
    if plan.kind != "score":
        for host in hosts:
            slots_for(host, 0.0)
        return ""
    models = {h.name: host_memory_model(params.get("memory_model"), h) for h in hosts}
    n_draws = plan.n_draws()
    wanted = int(params["chunk_size"])
    chunk = wanted
    for host in hosts:
        chunk = min(chunk, pick_chunk_size([host], models[host.name][0], None, wanted, n_draws))
    params["chunk_size"] = chunk
    worker_mb = {}
    for host in hosts:
        model, source = models[host.name]
        mb = predict_peak_mb(model, model_backend(host), chunk, n_draws)
        worker_mb[host.name] = round(mb, 1)
        slots_for(host, mb)
        host.slot_reason += f" memory model: {source}"
    params["worker_mb"] = worker_mb
    return f"chunk_size {wanted} -> {chunk} so every slot fits in memory" if chunk != wanted else ""
