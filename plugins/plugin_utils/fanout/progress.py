# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Progress of a fan-out: a JSON file rewritten atomically about once a second, and a
line per host in the ansible-playbook output every few seconds (done/failed/running,
rate, ETA)."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import atomic_write_json


def snapshot(fan: Any) -> Dict[str, Any]:
    now = time.time()
    elapsed = max(1e-6, now - fan.started)
    counts = fan.counts()
    units = fan.index.units  # kept per state as jobs change: no walk over every job
    units_total = sum(units.values()) - units["split"]
    units_done = units["done"]
    units_this_run = sum(h.units_done for h in fan.hosts.values())
    rate = units_this_run / elapsed
    remaining = units_total - units_done - units["failed"]
    hosts = {}
    for name, h in fan.hosts.items():
        hosts[name] = {
            "slots": h.spec.slots,
            "running": len(h.running),
            "done": h.done,
            "failed": h.failed,
            "units_done": h.units_done,
            "rate_units_per_slot_s": round(h.rate or 0.0, 3),
            "state": h.state(),
            "outages": h.outages,
            "last_error": h.last_error[:200],
        }
    return {
        "updated": round(now, 3),
        "elapsed_s": round(elapsed, 1),
        "jobs": counts,
        "units": {"total": units_total, "done": units_done},
        "rate_units_per_s": round(rate, 3),
        "eta_s": round(remaining / rate, 1) if rate > 0 else None,
        "hosts": hosts,
        "stopped": fan.stopped,
    }


class Progress:
    def __init__(self, path: str, say: Callable[[str], None], interval: float) -> None:
        self.path = path
        self.say = say
        self.interval = interval
        self.last_write = 0.0
        self.last_say = time.time()

    def tick(self, fan: Any, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_write < 1.0:
            return
        snap = snapshot(fan)
        atomic_write_json(self.path, snap)
        self.last_write = now
        if force or now - self.last_say >= self.interval:
            self.last_say = now
            self.say(render(snap))


def render(snap: Dict[str, Any]) -> str:
    j = snap["jobs"]
    eta = "{:.0f}s".format(snap["eta_s"]) if snap["eta_s"] is not None else "?"
    lines = [
        "fan-out {:5.0f}s: {} done, {} failed, {} running, {} queued | {:.1f} units/s | ETA {}".format(
            snap["elapsed_s"],
            j["done"],
            j["failed"],
            j["running"],
            j["queued"],
            snap["rate_units_per_s"],
            eta,
        )
    ]
    if snap.get("stopped"):
        lines.append(f"  stopped: {snap['stopped']}")
    for name, h in snap["hosts"].items():
        lines.append(
            f"  {name:<16} {h['state']:<8} slots {h['slots']:2d}  running {h['running']:2d}"
            f"  done {h['done']:4d}  failed {h['failed']:3d}  {h['rate_units_per_slot_s']:.1f} units/s/slot"
        )
    return "\n".join(lines)
