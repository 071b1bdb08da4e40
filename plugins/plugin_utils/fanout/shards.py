# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Shards: one step split over several controllers (or runs), each with its own hosts,
run folder and journal, merged afterwards into one aggregate and one manifest
(docs/fanout.md, "Shards: one step over several controllers").

- `bounds(k, n, total)`: shard k of n is the contiguous slice
  [floor((k-1) total / n), floor(k total / n)) of the full plan's job list: every job in
  exactly one shard, sizes within one job of each other, the same on every controller and
  every resume (the plan is deterministic; a resume replays the journal, it never re-splits).
- `select(jobs, shard)`: that slice, and what the shard records in its run.json: the slice,
  the full plan's job count and digest (so the merge checks coverage without re-planning).
- `load(folder)`, `check(shards)`: the merge's refusals, each one line naming the shard.
- `manifest(shards)`: one fanout_manifest.json for the whole step.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.contract import identity_changes
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job, Journal, file_sha256


class ShardError(ValueError):
    """A merge that cannot be done; the message is one line naming the shard."""


def parse(shard: str) -> Tuple[int, int]:
    """ "K/N" (already checked by the run contract) -> (K, N)."""
    k, _slash, n = str(shard).partition("/")
    return int(k), int(n)


def bounds(k: int, n: int, total: int) -> Tuple[int, int]:
    """[lo, hi) of shard k (1-based) of n over `total` jobs."""
    return (k - 1) * total // n, k * total // n


def plan_digest(jobs: List[Job]) -> str:
    """sha256 of the full plan's job list (ids, ranges, units): equal on every shard of a
    run only when every controller planned the same jobs (e.g. the same chunk size)."""
    doc = [[j.id, j.range, j.units] for j in jobs]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def select(jobs: List[Job], shard: str) -> Tuple[List[Job], Dict[str, Any]]:
    """Shard `shard`'s jobs of the full list `jobs`, and its record for run.json."""
    k, n = parse(shard)
    lo, hi = bounds(k, n, len(jobs))
    if lo == hi:
        raise ShardError(
            f"shard {k}/{n}: the full plan has {len(jobs)} jobs, so shard {k} would get none; "
            f"use at most {len(jobs)} shards or a smaller chunk_size"
        )
    info = {
        "shard": f"{k}/{n}",
        "index": k,
        "count": n,
        "jobs": [lo, hi],
        "full_jobs": len(jobs),
        "full_plan_sha256": plan_digest(jobs),
    }
    return jobs[lo:hi], info


# -- the merge ---------------------------------------------------------------------------
@dataclass
class Shard:
    """One shard's run folder as the merge reads it."""

    dir: str
    header: Dict[str, Any]
    jobs: Dict[str, Job]
    top: List[str]  # the ids of its plan.json (its slice of the full plan, before any split)
    manifest: Dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> Dict[str, Any]:
        return self.header["shard"]

    @property
    def label(self) -> str:
        return f"shard {self.info['shard']} ({self.dir})"


def load(folder: str) -> Shard:
    """A shard's run folder, refused when it is no shard or still running."""
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if not os.path.isdir(folder):
        found = "is a file, expected a folder" if os.path.exists(folder) else "not found"
        raise ShardError(f"shard folder {folder}: {found}")
    journal = Journal(folder)
    if not journal.exists():
        raise ShardError(f"shard folder {folder}: holds no fan-out run (no run.json)")
    header = journal.header()
    if not isinstance(header.get("shard"), dict):
        raise ShardError(
            f"shard folder {folder}: run {header.get('run_id')} is not a shard (started without shard=K/N)"
        )
    if _locked(folder):
        raise ShardError(
            f"shard {header['shard']['shard']} ({folder}): still running (a fan-out holds its run folder); "
            "merge when it has ended"
        )
    with open(os.path.join(folder, "plan.json")) as fh:
        top = [spec["id"] for spec in json.load(fh)]
    shard = Shard(folder, header, journal.load(), top)
    path = os.path.join(folder, "fanout_manifest.json")
    if os.path.isfile(path):
        with open(path) as fh:
            shard.manifest = json.load(fh)
    return shard


def _locked(folder: str) -> bool:
    """True while a fan-out holds the folder's lock (the action's `.lock`)."""
    path = os.path.join(folder, ".lock")
    if not os.path.exists(path):
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _whole(ident: Dict[str, Any]) -> Dict[str, Any]:
    """An identity without its shard: what every shard of one run shares."""
    out = {k: v for k, v in ident.items() if k != "full_run"}
    out["params"] = {k: v for k, v in (ident.get("params") or {}).items() if k != "shard"}
    return out


def check(shards: List[Shard]) -> List[Shard]:
    """The shards of one run, each complete, together every job of the full plan exactly
    once; sorted by shard index. Otherwise a ShardError naming the shard."""
    if not shards:
        raise ShardError("shard_dirs: none given")
    seen: Dict[str, str] = {}
    for s in shards:
        real = os.path.realpath(s.dir)
        if real in seen:
            raise ShardError(f"shard_dirs: {s.dir} given twice")
        seen[real] = s.dir
    first = shards[0]
    for s in shards[1:]:
        a, b = first.header.get("identity") or {}, s.header.get("identity") or {}
        if a.get("full_run") != b.get("full_run"):
            changes = identity_changes(_whole(a), _whole(b)) or ["full-run identity differs"]
            raise ShardError(f"{s.label} belongs to another run than {first.label}: " + "; ".join(changes))
        if s.info["count"] != first.info["count"]:
            raise ShardError(
                f"{s.label} is one of {s.info['count']} shards, {first.label} one of {first.info['count']}"
            )
        if s.info["full_plan_sha256"] != first.info["full_plan_sha256"]:
            raise ShardError(
                f"{s.label} planned another full job list than {first.label} ({s.info['full_jobs']} jobs, "
                f"chunk_size {s.header['params'].get('chunk_size')} vs {first.info['full_jobs']} jobs, "
                f"chunk_size {first.header['params'].get('chunk_size')}): run every shard with the same "
                "chunk_size, one that fits every host"
            )
    n, total = first.info["count"], first.info["full_jobs"]
    by_index = Counter(s.info["index"] for s in shards)
    twice = sorted(k for k, c in by_index.items() if c > 1)
    if twice:
        dirs = [s.dir for s in shards if s.info["index"] == twice[0]]
        raise ShardError(f"shard {twice[0]}/{n} given twice: {', '.join(dirs)}")
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in by_index]
    if missing:
        given = ", ".join(s.info["shard"] for s in sorted(shards, key=lambda s: s.info["index"]))
        raise ShardError(f"shard_dirs: shard {', '.join(missing)} missing (given: {given})")
    owner: Dict[str, str] = {}
    for s in sorted(shards, key=lambda s: s.info["index"]):
        lo, hi = bounds(s.info["index"], n, total)
        if list(s.info["jobs"]) != [lo, hi] or len(s.top) != hi - lo:
            raise ShardError(f"{s.label}: holds {len(s.top)} jobs, not its part [{lo}, {hi}) of the {total}")
        for job_id in s.top:
            if job_id in owner:
                raise ShardError(f"job {job_id} is in {owner[job_id]} and in {s.label}")
            owner[job_id] = s.label
        _check_complete(s)
    return sorted(shards, key=lambda s: s.info["index"])


def _check_complete(s: Shard) -> None:
    """Every job of the shard done, its outputs as they were validated."""
    left = sorted(j.id for j in s.jobs.values() if j.state not in ("done", "split"))
    if left:
        some = ", ".join(left[:3]) + (" ..." if len(left) > 3 else "")
        raise ShardError(
            f"{s.label}: {len(left)} of {len(s.top)} jobs not done ({some}); resume it "
            "(run its command again), then merge again"
        )
    for job in s.jobs.values():
        problem = job.output_problem(s.dir) if job.state == "done" else ""
        if problem:
            raise ShardError(
                f"{s.label}: job {job.id}: {problem}; resume it (its command again), then merge again"
            )


def done_jobs(s: Shard) -> List[Job]:
    """The shard's done jobs in plan order (a split job's halves in its place)."""
    return sorted((j for j in s.jobs.values() if j.state == "done"), key=lambda j: (j.range or [0], j.id))


def outputs(shards: List[Shard]) -> List[str]:
    """Every done job's output, absolute, in the full plan's order."""
    return [
        os.path.join(s.dir, out["path"]) for s in shards for j in done_jobs(s) for out in j.result["outputs"]
    ]


def resolve_inputs(first: Shard, overrides: Dict[str, str]) -> Dict[str, str]:
    """The run's inputs on this machine: the paths the shards recorded (or `overrides`),
    with the content the shards ran on."""
    found: Dict[str, str] = {}
    for name, rec in sorted((first.header.get("inputs") or {}).items()):
        path = os.path.abspath(os.path.expanduser(overrides.get(name) or rec["path"]))
        if not os.path.isfile(path):
            raise ShardError(
                f"input {name}: {path} not found on this machine (recorded by {first.label}); "
                f"give merge_inputs={{{name}: PATH}}"
            )
        digest = file_sha256(path)
        if digest != rec["sha256"]:
            raise ShardError(
                f"input {name}: {path} is not the file the shards ran on "
                f"(sha256 {digest[:12]}, the shards': {rec['sha256'][:12]})"
            )
        found[name] = path
    unknown = sorted(set(overrides) - set(found))
    if unknown:
        raise ShardError(f"merge_inputs: unknown {', '.join(unknown)} (the run's inputs: {', '.join(found)})")
    return found


def manifest(shards: List[Shard]) -> Dict[str, Any]:
    """One fanout_manifest.json for the whole step: the shards' figures added up, per host
    from the journals (a resumed shard's own manifest covers its last session only)."""
    first = shards[0]
    header = first.header
    params = {k: v for k, v in (header.get("params") or {}).items() if k != "shard"}
    hosts: Dict[str, Any] = {}
    out_list: List[Dict[str, Any]] = []
    failures: List[Dict[str, Any]] = []
    times: List[float] = []
    per_shard = []
    for s in shards:
        label = s.info["shard"]
        jobs = done_jobs(s)
        last = s.manifest.get("hosts") or {}
        for j in jobs:
            h = hosts.setdefault(
                j.host or "?",
                {
                    "shard": label,
                    "slots": (last.get(j.host) or {}).get("slots"),
                    "gpu_type": (last.get(j.host) or {}).get("gpu_type"),
                    "jobs_done": 0,
                    "units_done": 0,
                    "busy_s": 0.0,
                },
            )
            h["jobs_done"] += 1
            h["units_done"] += j.units
            h["busy_s"] = round(h["busy_s"] + j.duration_s, 3)
            for out in j.result.get("outputs") or []:
                out_list.append(
                    {
                        "job": j.id,
                        "shard": label,
                        "path": os.path.join(s.dir, out["path"]),
                        "records": out.get("records"),
                        "range": j.range,
                        "host": j.host,
                        "slot": j.result.get("slot"),
                        "duration_s": j.duration_s,
                    }
                )
        records = Journal(s.dir).records()
        stamps = [float(r["t"]) for r in records if r.get("ev") in ("start", "done") and "t" in r]
        times += stamps
        failures += [dict(f, shard=label) for f in s.manifest.get("failures") or []]
        per_shard.append(
            {
                "shard": label,
                "run_dir": s.dir,
                "run_id": s.header.get("run_id"),
                "jobs": s.info["jobs"],
                "jobs_done": len(jobs),
                "units_done": sum(j.units for j in jobs),
                "split": sum(1 for j in s.jobs.values() if j.state == "split"),
                "hosts": sorted({j.host or "?" for j in jobs}),
                "wall_s": round(max(stamps) - min(stamps), 3) if stamps else 0.0,
                "manifest": os.path.join(s.dir, "fanout_manifest.json") if s.manifest else None,
            }
        )
    done = sum(p["jobs_done"] for p in per_shard)
    units = sum(p["units_done"] for p in per_shard)
    busy = sum(h["busy_s"] for h in hosts.values())
    return {
        "run_id": "shards-" + str((header.get("identity") or {}).get("full_run", ""))[:12],
        "plan": header.get("plan"),
        "inputs": header.get("inputs"),
        "params": params,
        "full_run": (header.get("identity") or {}).get("full_run"),
        "complete": True,
        "stopped": None,
        "jobs": {
            "expected": done,
            "completed": done,
            "failed": 0,
            "split": sum(p["split"] for p in per_shard),
            "full_plan": first.info["full_jobs"],
        },
        "units": {"expected": units, "completed": units},
        "shards": per_shard,
        "hosts": hosts,
        "timings": {
            "first_start": round(min(times), 3) if times else None,
            "last_done": round(max(times), 3) if times else None,
            "wall_s": round(max(times) - min(times), 3) if times else 0.0,
            "busy_slot_s": round(busy, 3),
            "slots": sum(h["slots"] or 0 for h in hosts.values()),
        },
        "failures": failures,
        "unfinished": [],
        "outputs": out_list,
    }
