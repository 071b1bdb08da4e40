# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""prng.cluster.run_summary: a fan-out result as a short aligned table for the operator.

Documentation: plugins/filter/run_summary.yml (ansible-doc -t filter prng.cluster.run_summary).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _rate(count: float, wall: float, unit: str) -> str:
    per_s = count / wall if wall > 0 else 0.0
    if per_s and per_s < 0.1:
        return f"{per_s * 3600:.1f} {unit}/h"
    return f"{per_s:.3g} {unit}/s" if per_s < 100 else f"{per_s:,.0f} {unit}/s"


def _efficiency(result: Dict[str, Any], wall: float) -> List[str]:
    """The efficiency figure in words: what it measures, and what ate the rest."""
    timings = result.get("timings") or {}
    eff = timings.get("scheduling_efficiency")
    slots = int(_num(timings.get("slots")))
    busy = _num(timings.get("busy_slot_s"))
    if eff is None or not slots:
        return ["efficiency -: no slot ran a job"]
    pct = 100.0 * _num(eff)
    lines = [
        f"efficiency {pct:.0f}%: share of the slots' time spent running jobs "
        f"({busy:.1f} of {slots} slots x {_seconds(wall)} = {slots * wall:.1f} slot-s)"
    ]
    if pct >= 80:
        return lines
    jobs = _num((result.get("jobs") or {}).get("completed"))
    overhead = timings.get("dispatch_overhead_per_job_s")
    per_job = busy / jobs if jobs else 0.0
    before = len(lines)
    if jobs and jobs < 3 * slots:
        lines.append(
            f"  lost to: only {jobs:.0f} jobs for {slots} slots, start-up and the wait for the last job"
            " weigh heavily (a smaller chunk_size spreads the work)"
        )
    if overhead is not None and per_job > 0 and _num(overhead) > 0.2 * per_job:
        lines.append(
            f"  lost to: {_num(overhead):.2f} s to start each job against {per_job:.2f} s of work per job"
            " (larger chunks pay it less often)"
        )
    if len(lines) == before:
        lines.append("  lost to: start-up, dispatch, and slots waiting for the last jobs")
    return lines


def run_summary(result: Any) -> str:
    """A short aligned table of a prng.cluster.fanout result: jobs, per-host slots / done /
    failed, wall time, throughput, efficiency in words, left-out hosts, outputs."""
    if not isinstance(result, dict):
        return f"run summary: no fan-out result ({type(result).__name__})"
    jobs = result.get("jobs") or {}
    timings = result.get("timings") or {}
    wall = _num(timings.get("wall_s"))
    done, expected, failed = (int(_num(jobs.get(k))) for k in ("completed", "expected", "failed"))
    state = "complete" if result.get("complete") else "INCOMPLETE"
    how = "resumed run" if result.get("resumed") else "new run"
    lines = [
        f"run {result.get('run_id', '-')} ({how}, {result.get('run_dir', '-')}): {state}, "
        f"{done} of {expected} jobs done, {failed} failed"
    ]
    if result.get("stopped"):
        lines.append(f"stopped: {result['stopped']}")
    hosts = result.get("hosts") or {}
    width = max([len("total")] + [len(str(h)) for h in hosts])
    lines.append(f"  {'host':<{width}}  {'slots':>5}  {'done':>6}  {'failed':>6}")
    for name in sorted(hosts):
        h = hosts[name] or {}
        lines.append(
            f"  {name:<{width}}  {int(_num(h.get('slots'))):>5}  {int(_num(h.get('jobs_done'))):>6}"
            f"  {int(_num(h.get('jobs_failed'))):>6}"
        )
    total_slots = sum(int(_num((h or {}).get("slots"))) for h in hosts.values())
    lines.append(f"  {'total':<{width}}  {total_slots:>5}  {done:>6}  {failed:>6}")
    for name, reason in sorted((result.get("left_out") or {}).items()):
        lines.append(f"left out: {name}: {reason}")
    throughput = _rate(done, wall, "jobs")
    units = (result.get("units") or {}).get("completed")
    if units:
        throughput += f", {_rate(_num(units), wall, 'seeds')}"
    lines.append(f"wall {_seconds(wall)}, {throughput}")
    lines.extend(_efficiency(result, wall))
    outputs = result.get("outputs") or []
    if outputs:
        folder = os.path.commonpath([os.path.dirname(str(o)) for o in outputs])
        lines.append(f"outputs: {len(outputs)} files under {folder}")
    if result.get("manifest"):
        lines.append(f"manifest: {result['manifest']}")
    for failure in (result.get("failures") or [])[-3:]:
        if isinstance(failure, dict):
            lines.append(
                "failure: {} on {}: {}".format(
                    failure.get("job", "-"), failure.get("host", "-"), failure.get("reason", failure)
                )
            )
    return "\n".join(lines)


class FilterModule:
    """prng.cluster filters."""

    def filters(self) -> Dict[str, Any]:
        return {"run_summary": run_summary}
