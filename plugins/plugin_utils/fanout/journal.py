# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Jobs and their durable journal on the controller.

`run.json` (written once, atomically) names the run's inputs with content hashes and its
parameters; `plan.json` holds the planned jobs; `journal.jsonl` is append-only, one JSON
line per state change, fsynced before the change is acted upon (the scheduler groups the
lines of one round under one fsync). Replaying it after Ctrl-C or a crash gives every
job's state back, so nothing is redone or dropped (i15, i17, i22).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List

# One copy of each, shared with the host modules (imported from here by the fan-out).
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import (  # noqa: F401
    atomic_write_json,
    file_sha256,
)

STATES = ("queued", "running", "done", "failed", "split")


class ResumeRefused(RuntimeError):
    """The run folder belongs to other inputs (i22): never mix two runs' results."""


@dataclass
class Job:
    """One unit of work. `argv`/`outputs` hold tokens ({out}, {start}...) the dispatcher
    fills per host; `range` makes a job splittable into halves (i10)."""

    id: str
    argv: List[str]
    outputs: List[Dict[str, Any]] = field(default_factory=list)
    units: int = 1
    range: List[int] | None = None
    timeout: float | None = None
    env: Dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    # runtime state, rebuilt from the journal
    state: str = "queued"
    attempts: int = 0
    requeues: int = 0
    avoid: List[str] = field(default_factory=list)
    not_before: float = 0.0
    host: str | None = None
    reason: str = ""
    duration_s: float = 0.0
    result: Dict[str, Any] = field(default_factory=dict)

    SPEC_FIELDS = ("id", "argv", "outputs", "units", "range", "timeout", "env", "parent")

    def spec(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.SPEC_FIELDS}

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> Job:
        return cls(**{k: spec[k] for k in cls.SPEC_FIELDS if k in spec})

    @property
    def splittable(self) -> bool:
        return self.range is not None and self.range[1] - self.range[0] >= 2

    def output_problem(self, run_dir: str) -> str:
        """Why this done job's outputs no longer hold what was validated ('' when they do):
        a resume queues it again (i34), a merge refuses its shard."""
        outputs = self.result.get("outputs") or []
        if not outputs:
            return "no output recorded"
        for out in outputs:
            path = os.path.join(run_dir, out["path"])
            if not os.path.isfile(path):
                return f"{out['path']} is missing"
            size = os.path.getsize(path)
            if out.get("bytes") is not None and size != out["bytes"]:
                return f"{out['path']} holds {size} bytes, {out['bytes']} were validated"
            if out.get("sha256") and file_sha256(path) != out["sha256"]:
                return f"{out['path']} changed since it was validated (sha256)"
        return ""


def hash_inputs(inputs: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for name, path in sorted(inputs.items()):
        if not path:
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input {name} not found: {path}")
        out[name] = {
            "path": os.path.abspath(path),
            "sha256": file_sha256(path),
            "bytes": os.path.getsize(path),
        }
    return out


class Journal:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "journal.jsonl")
        self._fh: Any | None = None
        self._held = 0  # inside grouped(): the fsync waits for the group's end
        self._unsynced = False

    # -- creation / resume -------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.run_dir, "run.json"))

    def create(self, header: Dict[str, Any], jobs: List[Job]) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        atomic_write_json(os.path.join(self.run_dir, "plan.json"), [j.spec() for j in jobs])
        # run.json last: a run folder without it is not a run and is started afresh.
        atomic_write_json(os.path.join(self.run_dir, "run.json"), header)

    def header(self) -> Dict[str, Any]:
        with open(os.path.join(self.run_dir, "run.json")) as fh:
            return json.load(fh)

    def check_inputs(self, inputs: Dict[str, Dict[str, Any]]) -> None:
        """Refuse to resume when any input's content changed (i22)."""
        old = self.header().get("inputs", {})
        for name in sorted(set(old) | set(inputs)):
            a, b = old.get(name), inputs.get(name)
            if a is None or b is None or a["sha256"] != b["sha256"]:
                raise ResumeRefused(
                    "input {!r} changed since run {} was started (sha256 {} -> {}); refusing to mix "
                    "results: use another run folder or start afresh (fresh_run=true)".format(
                        name,
                        self.header().get("run_id"),
                        (a or {}).get("sha256", "none")[:12],
                        (b or {}).get("sha256", "none")[:12],
                    )
                )

    def load(self) -> Dict[str, Job]:
        """Jobs of the plan with the journal replayed; 'running' ones go back to queued."""
        with open(os.path.join(self.run_dir, "plan.json")) as fh:
            jobs = {s["id"]: Job.from_spec(s) for s in json.load(fh)}
        for rec in self.records():
            job = jobs.get(rec.get("job", ""))
            ev = rec.get("ev")
            if ev == "split" and job is not None:
                job.state = "split"
                for spec in rec["children"]:
                    jobs[spec["id"]] = Job.from_spec(spec)
            if job is None:
                continue
            if ev == "start":
                job.state, job.host = "running", rec.get("host")
            elif ev == "done":
                job.state, job.host = "done", rec.get("host")
                job.duration_s = float(rec.get("duration_s", 0.0))
                job.result = rec.get("result", {})
            elif ev == "fail":
                job.attempts += 1
                if rec.get("host") and rec["host"] not in job.avoid:
                    job.avoid.append(rec["host"])
                job.reason = rec.get("reason", "")
                job.state = "failed" if rec.get("final") else "queued"
            elif ev == "requeue":
                job.requeues += 1
                job.state = "queued"
        for job in jobs.values():
            if job.state == "running":
                job.state = "queued"
        return jobs

    def records(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        if not os.path.exists(self.path):
            return out
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    # A line torn by a crash mid-write: the state change it was about to
                    # record did not happen as far as the run is concerned.
                    continue
        return out

    # -- appends -------------------------------------------------------------------------
    def append(self, ev: str, **data: Any) -> None:
        if self._fh is None:
            self._fh = open(self.path, "ab")
            # A torn final line from a crash would glue onto the next record: end it.
            if self._fh.tell() > 0:
                with open(self.path, "rb") as rfh:
                    rfh.seek(-1, os.SEEK_END)
                    if rfh.read(1) != b"\n":
                        self._fh.write(b"\n")
        rec = {"t": round(time.time(), 3), "ev": ev}
        rec.update(data)
        self._fh.write(json.dumps(rec, sort_keys=False).encode() + b"\n")
        self._fh.flush()
        self._unsynced = True
        if not self._held:
            self.sync()

    def sync(self) -> None:
        if self._fh is not None and self._unsynced:
            os.fsync(self._fh.fileno())
            self._unsynced = False

    @contextlib.contextmanager
    def grouped(self) -> Iterator[None]:
        """Lines appended inside share one fsync at the end: the caller acts on them only
        after the block (a round of the scheduler: its results, then its new dispatches)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held:
                self.sync()

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
