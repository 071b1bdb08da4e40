# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out loop: free slots pull work (i18), failures retry elsewhere with backoff,
an OOM-killed job is split in half (i10), a worker's input error stops the run instead of
being retried (i31), an unreachable host's jobs are requeued and the host is probed until
it answers again (i38), and every state change is journaled first (i15, i17).

All state lives in the main thread; dispatch threads only run ansible-runner and hand
their result back through a queue.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (
    OutputInvalid,
    validate_output,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import (
    DispatchResult,
    fill,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job, Journal, file_sha256
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, Plan
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.progress import Progress

# The workers' convention (workers/prng_workers/errors.py): exit 2 = bad input, with one
# `error: ...` line on stderr (argparse writes `prog: error: ...`). Exit 2 without it
# (python's "can't open file", a shell's syntax error) is not the worker's verdict.
INPUT_ERROR_RC = 2
_INPUT_ERROR_LINE = re.compile(r"^(?:\S+: )?error: ")
# A lost host is probed after host_retry_seconds, doubled per consecutive loss up to this.
HOST_RETRY_CAP = 8

DispatchFn = Callable[[str, HostSpec, int, List[Job], Callable[[Job], Dict[str, Any]]], DispatchResult]


@dataclass
class Settings:
    target_dispatch_seconds: float = 60.0  # work per dispatch, from measured throughput
    max_jobs_per_dispatch: int = 64
    max_attempts: int = 3  # failed runs of one job before it is failed
    retry_backoff_seconds: float = 2.0  # doubled per attempt
    host_retry_seconds: float = 10.0  # a lost host is probed after this long, doubled, at most 8x
    max_host_failures: int = 3  # consecutive losses of a host: left out (still probed while others work)
    max_requeues: int = 6  # requeues of one job because its host vanished
    ema_alpha: float = 0.3  # moving average of throughput (gpu_optimizer.py)
    progress_interval: float = 5.0
    poll_seconds: float = 0.2
    transport: str = "pool"  # pool: one runner run for all slots; slot: one per slot; dispatch: one per batch


@dataclass
class HostState:
    spec: HostSpec
    running: Dict[int, str] = field(default_factory=dict)  # slot -> dispatch id
    rate: float | None = None  # units per second per slot (EMA)
    done: int = 0
    failed: int = 0
    units_done: int = 0
    busy_s: float = 0.0
    dispatches: int = 0
    dispatch_wall_s: float = 0.0
    # Host loss (i38). A loss of contact is counted once per host, however many of its
    # slots' dispatches it takes down: `epoch` goes up with each counted loss, and an
    # unreachable result of a dispatch started in an earlier epoch is part of a loss
    # already counted. A down host gets one probe dispatch at a time, from down_until on.
    consecutive_failures: int = 0  # losses since it last answered (initial loss + failed probes)
    epoch: int = 0
    down: bool = False
    down_since: float = 0.0
    down_until: float = 0.0  # next probe
    down_s: float = 0.0  # time down in outages that ended
    outages: int = 0  # times it went from up to down
    rejoins: int = 0
    downtime: List[List[float | None]] = field(default_factory=list)  # [down, up or None]
    probe: str | None = None  # dispatch id of the probe in flight
    excluded: bool = False  # max_host_failures reached: probed only while other hosts work
    last_error: str = ""

    def free_slots(self) -> List[int]:
        return [s for s in range(self.spec.slots) if s not in self.running]

    def live(self, now: float) -> bool:
        return not self.excluded and not self.down

    def time_down(self, now: float) -> float:
        return self.down_s + (now - self.down_since if self.down else 0.0)

    def state(self) -> str:
        return "excluded" if self.excluded else ("down" if self.down else "up")


class FanOut:
    def __init__(
        self,
        run_dir: str,
        plan: Plan,
        hosts: List[HostSpec],
        jobs: Dict[str, Job],
        journal: Journal,
        dispatch: DispatchFn,
        settings: Settings,
        say: Callable[[str], None],
        cancel: threading.Event | None = None,
        cleanup: Callable[[DispatchResult], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.hosts = {h.name: HostState(h) for h in hosts}
        self.jobs = jobs
        self.journal = journal
        self.dispatch_fn = dispatch
        self.cleanup = cleanup
        self.settings = settings
        self.say = say
        self.cancel = cancel or threading.Event()
        self.results: queue.Queue[DispatchResult] = queue.Queue()
        self.threads: Dict[str, threading.Thread] = {}
        self.seq = 0
        self.last_limit: Dict[str, float] = {}  # how the last batch was sized (journaled)
        self.inflight: Dict[str, Tuple[str, int, float]] = {}  # dispatch -> host, units, start
        self.epochs: Dict[str, int] = {}  # dispatch -> its host's epoch when it started
        self.stopped: str | None = None  # why the run stopped early (an input error, i31)
        self.session = time.strftime("%H%M%S")  # dispatch ids stay unique across resumes
        self.started = time.time()
        self.ended: float | None = None
        self.failures: List[Dict[str, Any]] = []
        self.dispatch_log: List[Dict[str, Any]] = []
        self.progress = Progress(os.path.join(run_dir, "progress.json"), say, settings.progress_interval)
        os.makedirs(os.path.join(run_dir, "outputs"), exist_ok=True)

    # -- selection -----------------------------------------------------------------------
    def order(self) -> List[Job]:
        return [j for j in self.jobs.values() if j.state == "queued"]

    def take_batch(self, host: HostState, now: float, probe: bool = False) -> List[Job]:
        live = [h.spec.name for h in self.hosts.values() if h.live(now)]
        queued = self.order()
        ready = [
            j
            for j in queued
            if j.not_before <= now and (host.spec.name not in j.avoid or all(n in j.avoid for n in live))
        ]
        if not ready:
            return []
        # Longest first: the small jobs left at the end fill the gaps, so slots finish
        # close together instead of one slot running a big job alone (tail of the run).
        ready.sort(key=lambda j: -j.units)
        self.last_limit = {}
        if probe:
            return ready[-1:]  # a lost host is tried with one job, the shortest
        if host.rate is None:
            return ready[:1]  # first dispatch on a host measures its throughput
        live = [h for h in self.hosts.values() if h.live(now)]
        known = [h.rate for h in live if h.rate]
        mean_rate = sum(known) / len(known) if known else host.rate
        total_rate = sum(h.spec.slots * (h.rate or mean_rate) for h in live) or host.rate
        queued_units = sum(j.units for j in queued)
        # Work still running elsewhere finishes in the same window: count what is left of it.
        running_units = 0.0
        for other_host, units, started in self.inflight.values():
            other = self.hosts[other_host]
            running_units += max(0.0, units - (other.rate or mean_rate) * (now - started))
        # Enough work to make the transport's fixed cost small (target seconds at the
        # host's measured rate), but no more than this slot can do while all slots finish
        # what is left (queued + the rest of running batches) at their measured rates,
        # so that near the end no slot idles while a slow one works through a big batch.
        target = host.rate * self.settings.target_dispatch_seconds
        fair = host.rate * (queued_units + running_units) / total_rate
        limit = max(1.0, min(target, fair))
        self.last_limit = {"target": round(target, 1), "fair": round(fair, 1), "rate": round(host.rate, 3)}
        batch: List[Job] = []
        units = 0
        for job in ready:
            if batch and (units + job.units > limit or len(batch) >= self.settings.max_jobs_per_dispatch):
                break
            batch.append(job)
            units += job.units
        return batch

    def start_dispatch(self, host: HostState, slot: int, batch: List[Job], probe: bool = False) -> str:
        self.seq += 1
        dispatch_id = f"{self.session}-d{self.seq:05d}"
        extra = {"probe": True} if probe else {}
        for job in batch:
            job.state, job.host = "running", host.spec.name
            self.journal.append(
                "start",
                job=job.id,
                host=host.spec.name,
                slot=slot,
                dispatch=dispatch_id,
                sizing=self.last_limit,
                **extra,
            )
        host.running[slot] = dispatch_id
        host.dispatches += 1
        if probe:
            host.probe = dispatch_id
        self.inflight[dispatch_id] = (host.spec.name, sum(j.units for j in batch), time.time())
        self.epochs[dispatch_id] = host.epoch

        def work() -> None:
            try:
                res = self.dispatch_fn(dispatch_id, host.spec, slot, batch, self.plan.expect)
            except Exception as exc:  # keep the loop alive whatever a dispatch does (i15)
                res = DispatchResult(
                    dispatch_id, host.spec.name, slot, batch, status="error", error=f"dispatcher: {exc}"
                )
            self.results.put(res)

        thread = threading.Thread(target=work, name="fanout-" + dispatch_id, daemon=True)
        self.threads[dispatch_id] = thread
        thread.start()
        return dispatch_id

    # -- results -------------------------------------------------------------------------
    def _local_outputs(self, job: Job, res: DispatchResult) -> List[Dict[str, Any]]:
        """Output specs pointing at the pulled copies, with the plan's expectations."""
        expect = self.plan.expect(job)
        specs = []
        for spec in job.outputs:
            local = dict(spec)
            name = os.path.basename(
                fill(spec["path"], {"job_id": job.id, "out": "", "start": "", "stop": ""})
            )
            local["path"] = os.path.join(res.incoming, job.id, name)
            for key, val in expect.items():
                local.setdefault(key, val)
            specs.append(local)
        return specs

    def _accept(self, job: Job, res: DispatchResult, jr: Dict[str, Any]) -> str | None:
        """Validate the pulled outputs again on the controller and move them into place."""
        try:
            specs = self._local_outputs(job, res)
            found = [validate_output(spec) for spec in specs]
        except (OutputInvalid, OSError) as exc:
            return f"pulled output invalid: {exc}"
        dest_dir = os.path.join(self.run_dir, "outputs", job.id)
        os.makedirs(dest_dir, exist_ok=True)
        outputs = []
        for spec, info in zip(specs, found, strict=False):
            dest = os.path.join(dest_dir, os.path.basename(spec["path"]))
            for src, dst in ((spec["path"], dest), (spec["path"] + ".meta.json", dest + ".meta.json")):
                if os.path.exists(src):
                    os.replace(src, dst)
            outputs.append(
                {
                    "path": os.path.relpath(dest, self.run_dir),
                    "bytes": info["bytes"],
                    "records": info.get("records"),
                    # a resume re-checks it: a finished output that changed is redone (i34)
                    "sha256": file_sha256(dest),
                }
            )
        summary = jr.get("summary") or {}
        job.result = {
            "outputs": outputs,
            "summary": summary,
            "slot": res.slot,
            "binding": jr.get("binding", {}),
            "dispatch": res.dispatch_id,
        }
        return None

    def handle(self, res: DispatchResult) -> None:
        host = self.hosts[res.host]
        host.running.pop(res.slot, None)
        self.threads.pop(res.dispatch_id, None)
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
                "session_start_s": round(res.session_start_s, 3),
                "module_s": round(res.module_s, 3),
                "slot_s": round(res.slot_s, 3),
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
                err = self._accept(job, res, jr) if res.status == "ok" else (res.error or "pull failed")
                if err is None:
                    job.state = "done"
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
                job.state = "split"
                self.journal.append(
                    "split",
                    job=job.id,
                    host=res.host,
                    reason=jr.get("reason", ""),
                    children=[c.spec() for c in children],
                )
                for child in children:
                    self.jobs[child.id] = child
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
            elif status == "failed" and jr.get("rc") == INPUT_ERROR_RC and self._input_error(jr):
                self._stop(job, host, self._input_error(jr))  # deterministic: never retried (i31)
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
        host.epoch += 1
        host.consecutive_failures += 1
        if not host.down:
            host.down, host.down_since = True, now
            host.outages += 1
            host.downtime.append([round(now, 3), None])
        base = self.settings.host_retry_seconds
        wait = min(base * 2 ** (host.consecutive_failures - 1), base * HOST_RETRY_CAP)
        host.down_until = now + wait
        name = host.spec.name
        self.journal.append(
            "host", host=name, state="down", losses=host.consecutive_failures, error=error[:500]
        )
        if host.consecutive_failures >= self.settings.max_host_failures:
            if not host.excluded:
                self.say(
                    f"fan-out: host {name} left out after {host.consecutive_failures} consecutive losses; "
                    f"probed every {base * HOST_RETRY_CAP:.0f}s while other hosts work: {error[:200]}"
                )
            host.excluded = True
        else:
            self.say(
                f"fan-out: host {name} unreachable, its jobs requeued, probe in {wait:.0f}s: {error[:200]}"
            )

    def _host_back(self, host: HostState, now: float) -> None:
        """The host answered a probe: all its slots take work again."""
        host.down_s += now - host.down_since
        host.down = host.excluded = False
        host.rejoins += 1
        if host.downtime:
            host.downtime[-1][1] = round(now, 3)
        self.journal.append("host", host=host.spec.name, state="up", down_s=round(now - host.down_since, 3))
        self.say(
            f"fan-out: host {host.spec.name} answers again after {now - host.down_since:.0f}s: "
            f"back with its {host.spec.slots} slots"
        )

    @staticmethod
    def _input_error(jr: Dict[str, Any]) -> str:
        """The worker's `error: ...` line of an exit-2 result, or '' when it has none."""
        lines = [ln.strip() for ln in str(jr.get("stderr_tail") or "").splitlines() if ln.strip()]
        if not lines:  # an older host module: the reason holds the last stderr line
            lines = [str(jr.get("reason") or "").split(": ", 1)[-1].strip()]
        return lines[-1][:300] if _INPUT_ERROR_LINE.match(lines[-1]) else ""

    def _stop(self, job: Job, host: HostState, line: str) -> None:
        """Bad input fails the same way everywhere (i31): no retry; no new dispatches start,
        the running ones finish, the queued jobs stay queued for a corrected rerun."""
        job.attempts += 1
        job.state, job.reason = "failed", f"input error: {line}"
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
            job.state, job.reason = "failed", f"{reason} (requeued {job.requeues - 1} times)"
            self.journal.append("fail", job=job.id, reason=job.reason, final=True)
            self.failures.append({"job": job.id, "host": job.host, "reason": job.reason, "action": "failed"})
            return
        job.state = "queued"
        self.journal.append("requeue", job=job.id, reason=reason)

    def _fail(self, job: Job, host: HostState, reason: str) -> None:
        job.attempts += 1
        job.reason = reason
        if host.spec.name not in job.avoid:
            job.avoid.append(host.spec.name)
        final = job.attempts >= self.settings.max_attempts
        job.state = "failed" if final else "queued"
        if final:
            host.failed += 1
        else:
            job.not_before = time.time() + self.settings.retry_backoff_seconds * 2 ** (job.attempts - 1)
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

    # -- main loop -----------------------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        out = {s: 0 for s in ("queued", "running", "done", "failed", "split")}
        for job in self.jobs.values():
            out[job.state] += 1
        return out

    def running(self) -> int:
        return sum(len(h.running) for h in self.hosts.values())

    def step(self) -> bool:
        """One round: fill free slots, probe lost hosts, take finished dispatches. False
        when all is done (or the run stopped and nothing runs any more)."""
        now = time.time()
        # An excluded host is probed only while another host can still work.
        others_work = any(not h.excluded for h in self.hosts.values())
        for host in sorted(self.hosts.values(), key=lambda h: -(h.rate or 0.0)):
            if self.stopped is not None:
                break
            if host.down:
                free = host.free_slots()
                due = host.probe is None and host.down_until <= now
                if due and free and (others_work or not host.excluded):
                    batch = self.take_batch(host, now, probe=True)
                    if batch:
                        self.start_dispatch(host, free[0], batch, probe=True)
                continue
            if not host.live(now):
                continue
            for slot in host.free_slots():
                batch = self.take_batch(host, now)
                if not batch:
                    break
                self.start_dispatch(host, slot, batch)
        queued = [j for j in self.jobs.values() if j.state == "queued"]
        if (not queued or self.stopped is not None) and self.running() == 0:
            return False
        if queued and self.running() == 0 and all(h.excluded for h in self.hosts.values()):
            for job in queued:
                job.state, job.reason = "failed", "no reachable host left"
                self.journal.append("fail", job=job.id, reason=job.reason, final=True)
                self.failures.append({"job": job.id, "host": None, "reason": job.reason, "action": "failed"})
            return False
        try:
            res = self.results.get(timeout=self.settings.poll_seconds)
            self.handle(res)
            while True:
                self.handle(self.results.get_nowait())
        except queue.Empty:
            pass
        self.progress.tick(self)
        return True

    def run(self) -> None:
        # Ansible runs this in a worker process of its own session: if ansible-playbook
        # dies (killed, crashed), nothing would stop us, and a rerun would race this one.
        parent = os.getppid()
        try:
            while self.step():
                if self.cancel.is_set():
                    raise KeyboardInterrupt
                if os.getppid() != parent:
                    self.say("fan-out: ansible-playbook is gone; stopping (the journal keeps every state)")
                    raise KeyboardInterrupt
        except BaseException:
            self.stop()
            raise
        finally:
            self.ended = time.time()
            self.progress.tick(self, force=True)

    def stop(self, wait: float = 30.0) -> None:
        """Cancel running dispatches; their jobs stay 'running' in the journal and are
        requeued by the next run."""
        self.cancel.set()
        deadline = time.time() + wait
        for thread in list(self.threads.values()):
            thread.join(max(0.0, deadline - time.time()))
        self.journal.close()
