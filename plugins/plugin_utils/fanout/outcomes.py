# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""What a dispatch's result does to its jobs and its host: a job is done once its pulled
outputs validate again on the controller and sit in <run_dir>/outputs/<job>/ (i3, i4);
killed for memory, it is split in half (i10); a worker's input error stops the run (i31);
any other failure is retried elsewhere with backoff; an unreachable host's jobs are
requeued and the loss counted once per host, which rejoins when it answers (i38). Every
change is journaled (the loop fsyncs a round's lines before acting on them)."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (
    OutputInvalid,
    validate_output,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import DispatchResult, fill
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.hosts import HOST_RETRY_CAP, HostState
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.jobindex import JobIndex
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job, Journal, file_sha256

# The workers' convention (workers/prng_workers/errors.py): exit 2 = bad input, with one
# `error: ...` line on stderr (argparse writes `prog: error: ...`). Exit 2 without it
# (python's "can't open file", a shell's syntax error) is not the worker's verdict.
INPUT_ERROR_RC = 2
_INPUT_ERROR_LINE = re.compile(r"^(?:\S+: )?error: ")


def input_error(jr: Dict[str, Any]) -> str:
    """The worker's `error: ...` line of an exit-2 result, or '' when it is not one."""
    if jr.get("status") != "failed" or jr.get("rc") != INPUT_ERROR_RC:
        return ""
    lines = [ln.strip() for ln in str(jr.get("stderr_tail") or "").splitlines() if ln.strip()]
    if not lines:  # an older host module: the reason holds the last stderr line
        lines = [str(jr.get("reason") or "").split(": ", 1)[-1].strip()]
    return lines[-1][:300] if _INPUT_ERROR_LINE.match(lines[-1]) else ""


def local_outputs(job: Job, res: DispatchResult, expect: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Output specs pointing at the pulled copies, with the plan's expectations."""
    specs = []
    for spec in job.outputs:
        local = dict(spec)
        name = os.path.basename(fill(spec["path"], {"job_id": job.id, "out": "", "start": "", "stop": ""}))
        local["path"] = os.path.join(res.incoming, job.id, name)
        for key, val in expect.items():
            local.setdefault(key, val)
        specs.append(local)
    return specs


def accept(
    run_dir: str, job: Job, res: DispatchResult, jr: Dict[str, Any], expect: Dict[str, Any]
) -> str | None:
    """Validate the pulled outputs again and move them into place; sets job.result. Returns
    why not, or None."""
    try:
        specs = local_outputs(job, res, expect)
        found = [validate_output(spec) for spec in specs]
    except (OutputInvalid, OSError) as exc:
        return f"pulled output invalid: {exc}"
    dest_dir = os.path.join(run_dir, "outputs", job.id)
    os.makedirs(dest_dir, exist_ok=True)
    outputs = []
    for spec, info in zip(specs, found, strict=False):
        dest = os.path.join(dest_dir, os.path.basename(spec["path"]))
        for src, dst in ((spec["path"], dest), (spec["path"] + ".meta.json", dest + ".meta.json")):
            if os.path.exists(src):
                os.replace(src, dst)
        outputs.append(
            {
                "path": os.path.relpath(dest, run_dir),
                "bytes": info["bytes"],
                "records": info.get("records"),
                # a resume re-checks it: a finished output that changed is redone (i34)
                "sha256": file_sha256(dest),
            }
        )
    job.result = {
        "outputs": outputs,
        "summary": jr.get("summary") or {},
        "slot": res.slot,
        "binding": jr.get("binding", {}),
        "dispatch": res.dispatch_id,
        "started": jr.get("started"),
    }
    return None


class Outcomes:
    """The part of FanOut (scheduler.py) that applies results; its state lives there."""

    run_dir: str
    plan: Any
    hosts: Dict[str, HostState]
    index: JobIndex
    journal: Journal
    settings: Any
    say: Callable[[str], None]
    cleanup: Callable[[DispatchResult], None] | None
    inflight: Dict[str, Any]
    epochs: Dict[str, int]
    stopped: str | None
    failures: List[Dict[str, Any]]
    dispatch_log: List[Dict[str, Any]]

    def handle(self, res: DispatchResult) -> None:
        host = self.hosts[res.host]
        host.running.pop(res.slot, None)
        self.inflight.pop(res.dispatch_id, None)
        epoch = self.epochs.pop(res.dispatch_id, host.epoch)
        probe = host.probe == res.dispatch_id
        if probe:
            host.probe = None
        now = time.time()
        busy = sum(float(jr.get("duration_s") or 0.0) for jr in res.job_results.values())
        host.dispatch_wall_s += res.wall_s
        self.dispatch_log.append(
            {
                "dispatch": res.dispatch_id,
                "host": res.host,
                "slot": res.slot,
                "jobs": len(res.jobs),
                "status": res.status,
                "wall_s": round(res.wall_s, 3),
                "busy_s": round(busy, 3),
                "agent_start_s": round(res.agent_start_s, 3),
                "run_s": round(res.run_s, 3),
                "pull_s": round(res.pull_s, 3),
                "started": round(res.started, 3),
            }
        )
        if res.status == "cancelled":
            return  # stays 'running' in the journal: requeued on resume
        # A result of a dispatch started before the host's last counted loss says nothing
        # new about the host: the loss it belongs to is counted already (i38).
        current = epoch == host.epoch
        if res.status == "unreachable":
            host.last_error = res.error
            if current:
                self._host_lost(host, res.error, now)
        elif current:
            host.consecutive_failures = 0
            if host.down:
                self._host_back(host, now)
        units_ok, secs_ok = 0, 0.0
        for job in res.jobs:
            jr = res.job_results.get(job.id)
            if res.status == "unreachable" and (jr is None or jr.get("status") == "ok"):
                # A failed probe is not the job's fault: it does not use up its requeues.
                self._requeue(job, f"host {res.host} unreachable", count=not probe)
                continue
            if jr is None:
                self._fail(job, host, res.error or "no result for the job")
                continue
            status = jr.get("status")
            job.duration_s = float(jr.get("duration_s") or 0.0)
            host.busy_s += job.duration_s
            if status == "ok":
                err = (
                    accept(self.run_dir, job, res, jr, self.plan.expect(job))
                    if res.status == "ok"
                    else (res.error or "pull failed")
                )
                if err is None:
                    self.index.set(job, "done")
                    host.done += 1
                    host.units_done += job.units
                    units_ok += job.units
                    secs_ok += job.duration_s
                    self.journal.append(
                        "done", job=job.id, host=res.host, duration_s=job.duration_s, result=job.result
                    )
                else:
                    self._fail(job, host, err)
            elif status == "oom" and job.splittable:
                children = self.plan.split(job)
                self.index.set(job, "split")
                self.journal.append(
                    "split",
                    job=job.id,
                    host=res.host,
                    reason=jr.get("reason", ""),
                    children=[c.spec() for c in children],
                )
                for child in children:
                    self.index.add(child)
                self.failures.append(
                    {
                        "job": job.id,
                        "host": res.host,
                        "reason": jr.get("reason", ""),
                        "action": "split into {}".format(", ".join(c.id for c in children)),
                    }
                )
                self.say(
                    "fan-out: job {} killed for memory on {}: split into {}".format(
                        job.id, res.host, " + ".join(c.id for c in children)
                    )
                )
            elif input_error(jr):
                self._stop(job, host, input_error(jr))  # deterministic: never retried (i31)
            else:
                self._fail(job, host, "{}: {}".format(status, jr.get("reason", "")))
        if self.cleanup is not None:
            self.cleanup(res)
        if secs_ok > 0:
            sample = units_ok / secs_ok
            a = self.settings.ema_alpha
            host.rate = sample if host.rate is None else a * sample + (1 - a) * host.rate

    def _host_lost(self, host: HostState, error: str, now: float) -> None:
        """One loss of contact: counted once, the host probed again later (i38)."""
        was_excluded = host.excluded
        base = self.settings.host_retry_seconds
        wait = host.lose(now, base, self.settings.max_host_failures)
        name = host.spec.name
        self.journal.append(
            "host", host=name, state="down", losses=host.consecutive_failures, error=error[:500]
        )
        if not host.excluded:
            self.say(
                f"fan-out: host {name} unreachable, its jobs requeued, probe in {wait:.0f}s: {error[:200]}"
            )
        elif not was_excluded:
            self.say(
                f"fan-out: host {name} left out after {host.consecutive_failures} consecutive losses; "
                f"probed every {base * HOST_RETRY_CAP:.0f}s while other hosts work: {error[:200]}"
            )

    def _host_back(self, host: HostState, now: float) -> None:
        """The host answered a probe: all its slots take work again."""
        down = host.back(now)
        self.journal.append("host", host=host.spec.name, state="up", down_s=round(down, 3))
        name, slots = host.spec.name, host.spec.slots
        self.say(f"fan-out: host {name} answers again after {down:.0f}s: back with its {slots} slots")

    def _stop(self, job: Job, host: HostState, line: str) -> None:
        """Bad input fails the same way everywhere (i31): no retry; no new dispatches start,
        the running ones finish, the queued jobs stay queued for a corrected rerun."""
        job.attempts += 1
        job.reason = f"input error: {line}"
        self.index.set(job, "failed")
        host.failed += 1
        self.journal.append(
            "fail",
            job=job.id,
            host=host.spec.name,
            reason=job.reason,
            final=True,
            attempt=job.attempts,
            input_error=True,
        )
        self.failures.append(
            {"job": job.id, "host": host.spec.name, "reason": job.reason, "action": "run stopped"}
        )
        if self.stopped is None:
            self.stopped = f"job {job.id}: input error on {host.spec.name}: {line}"
            self.say(f"fan-out: {self.stopped}; no new jobs start (not retried: it would fail again)")

    def _requeue(self, job: Job, reason: str, count: bool = True) -> None:
        if count:
            job.requeues += 1
        if job.requeues > self.settings.max_requeues:
            job.reason = f"{reason} (requeued {job.requeues - 1} times)"
            self.index.set(job, "failed")
            self.journal.append("fail", job=job.id, reason=job.reason, final=True)
            self.failures.append({"job": job.id, "host": job.host, "reason": job.reason, "action": "failed"})
            return
        self.index.set(job, "queued")
        self.journal.append("requeue", job=job.id, reason=reason)

    def _fail(self, job: Job, host: HostState, reason: str) -> None:
        job.attempts += 1
        job.reason = reason
        if host.spec.name not in job.avoid:
            job.avoid.append(host.spec.name)
        final = job.attempts >= self.settings.max_attempts
        if final:
            host.failed += 1
        else:
            job.not_before = time.time() + self.settings.retry_backoff_seconds * 2 ** (job.attempts - 1)
        self.index.set(job, "failed" if final else "queued")
        self.journal.append(
            "fail", job=job.id, host=host.spec.name, reason=reason[:1000], final=final, attempt=job.attempts
        )
        self.failures.append(
            {
                "job": job.id,
                "host": host.spec.name,
                "reason": reason[:1000],
                "action": "failed" if final else f"retry {job.attempts + 1}",
            }
        )
        self.say(
            "fan-out: job {} failed on {} ({}): {}".format(
                job.id, host.spec.name, "final" if final else "will retry", reason[:300]
            )
        )
