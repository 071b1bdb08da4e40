# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The run manifest: inputs with hashes, parameters, jobs expected/completed/failed,
per-host counts and outages, timings, dispatch overhead, every failure with its reason and
why the run stopped early, if it did. Written whatever happened (i15), so a partial run
still says exactly what it holds."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import atomic_write_json


def build(header: Dict[str, Any], fan: Any, session_started: float) -> Dict[str, Any]:
    ended = fan.ended or time.time()  # last job handled; the cleanup after it is not work time
    wall = max(1e-6, ended - session_started)
    jobs = [j for j in fan.jobs.values() if j.state != "split"]
    done = sorted((j for j in jobs if j.state == "done"), key=lambda j: j.id)
    failed = sorted((j for j in jobs if j.state != "done"), key=lambda j: j.id)
    slots_total = sum(h.spec.slots for h in fan.hosts.values())
    busy = sum(h.busy_s for h in fan.hosts.values())
    dispatched_jobs = sum(d["jobs"] for d in fan.dispatch_log)
    startup = sum(d.get("agent_start_s", 0.0) for d in fan.dispatch_log)
    agents = sum(1 for d in fan.dispatch_log if d.get("agent_start_s", 0.0) > 0)
    overhead = sum(d["wall_s"] - d["busy_s"] for d in fan.dispatch_log) - startup
    per_host: Dict[str, Any] = {}
    for name, h in fan.hosts.items():
        per_host[name] = {
            "gpu_type": h.spec.gpu_type,
            "gpu_count": h.spec.gpu_count,
            "slots": h.spec.slots,
            "slot_reason": h.spec.slot_reason,
            "jobs_done": h.done,
            "jobs_failed": h.failed,
            "units_done": h.units_done,
            "busy_s": round(h.busy_s, 3),
            "dispatches": h.dispatches,
            "dispatch_wall_s": round(h.dispatch_wall_s, 3),
            "rate_units_per_slot_s": round(h.rate or 0.0, 3),
            # Host loss (i38): outages counted once per host, however many slots it took
            # down; `losses` adds the probes that found it still down.
            "state": h.state(),
            "outages": h.outages,
            "losses": h.epoch,
            "down_s": round(h.time_down(ended), 3),
            "downtime": [list(p) for p in h.downtime],
            "rejoined": h.rejoins > 0,
            "last_error": h.last_error,
        }
    outputs: List[Dict[str, Any]] = []
    for j in done:
        summary = j.result.get("summary") or {}
        for out in j.result.get("outputs", []):
            outputs.append(
                {
                    "job": j.id,
                    "path": out["path"],
                    "records": out.get("records"),
                    "range": j.range,
                    "host": j.host,
                    "slot": j.result.get("slot"),
                    "binding": j.result.get("binding", {}),
                    "device": summary.get("device"),
                    "visible_devices": summary.get("visible_devices"),
                    "started": j.result.get("started"),
                    "duration_s": j.duration_s,
                }
            )
    return {
        "run_id": header.get("run_id"),
        "plan": header.get("plan"),
        "inputs": header.get("inputs"),
        "params": header.get("params"),
        "complete": not failed,
        # One line when the run stopped on a deterministic error (an input error, i31):
        # the queued jobs were left queued, and running it again unchanged fails again.
        "stopped": fan.stopped,
        "jobs": {
            "expected": len(jobs),
            "completed": len(done),
            "failed": len(failed),
            "split": sum(1 for j in fan.jobs.values() if j.state == "split"),
        },
        "units": {"expected": sum(j.units for j in jobs), "completed": sum(j.units for j in done)},
        "hosts": per_host,
        "timings": {
            "run_created": header.get("created"),
            "session_started": round(session_started, 3),
            "ended": round(ended, 3),
            "wall_s": round(wall, 3),
            "busy_slot_s": round(busy, 3),
            "slots": slots_total,
            "scheduling_efficiency": round(busy / (slots_total * wall), 4) if slots_total else None,
            "dispatches": len(fan.dispatch_log),
            # controller + SSH time per job beyond the worker's own run time, the hosts'
            # agent start-ups counted apart (paid once per host)
            "dispatch_overhead_per_job_s": round(overhead / dispatched_jobs, 3) if dispatched_jobs else None,
            "agents_started": agents,
            "agent_start_s_mean": round(startup / agents, 3) if agents else None,
        },
        "failures": fan.failures,
        "unfinished": [{"job": j.id, "state": j.state, "reason": j.reason, "range": j.range} for j in failed],
        "outputs": outputs,
        "dispatches": fan.dispatch_log,
    }


def write(run_dir: str, manifest: Dict[str, Any]) -> str:
    path = os.path.join(run_dir, "fanout_manifest.json")
    atomic_write_json(path, manifest)
    return path
