# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out loop: free slots pull work (i18), failures retry elsewhere with backoff,
an OOM-killed job is split in half (i10), an unreachable host's jobs are requeued and the
host retried later, and every state change is journaled first (i15, i17).

All state lives in the main thread; dispatch threads only run ansible-runner and hand
their result back through a queue.
"""

from __future__ import annotations

import os
import queue
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
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job, Journal
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, Plan
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.progress import Progress

DispatchFn = Callable[[str, HostSpec, int, List[Job], Callable[[Job], Dict[str, Any]]], DispatchResult]


@dataclass
class Settings:
    target_dispatch_seconds: float = 60.0  # work per dispatch, from measured throughput
    max_jobs_per_dispatch: int = 64
    max_attempts: int = 3  # failed runs of one job before it is failed
    retry_backoff_seconds: float = 2.0  # doubled per attempt
    host_retry_seconds: float = 10.0  # an unreachable host waits this long, doubled
    max_host_failures: int = 3  # consecutive unreachable dispatches: host left out
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
    consecutive_failures: int = 0
    down_until: float = 0.0
    excluded: bool = False
    last_error: str = ""

    def free_slots(self) -> List[int]:
        return [s for s in range(self.spec.slots) if s not in self.running]

    def live(self, now: float) -> bool:
        return not self.excluded and self.down_until <= now


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

    def take_batch(self, host: HostState, now: float) -> List[Job]:
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

    def start_dispatch(self, host: HostState, slot: int, batch: List[Job]) -> None:
        self.seq += 1
        dispatch_id = f"{self.session}-d{self.seq:05d}"
        for job in batch:
            job.state, job.host = "running", host.spec.name
            self.journal.append("start", job=job.id, host=host.spec.name, slot=slot, dispatch=dispatch_id,
                                sizing=self.last_limit)
        host.running[slot] = dispatch_id
        host.dispatches += 1
        self.inflight[dispatch_id] = (host.spec.name, sum(j.units for j in batch), time.time())

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
        if res.status == "unreachable":
            host.consecutive_failures += 1
            host.last_error = res.error
            wait = self.settings.host_retry_seconds * 2 ** (host.consecutive_failures - 1)
            host.down_until = now + wait
            if host.consecutive_failures >= self.settings.max_host_failures:
                host.excluded = True
                self.say(
                    f"fan-out: host {res.host} left out of this run after {host.consecutive_failures} "
                    f"unreachable dispatches: {res.error[:200]}"
                )
            else:
                self.say(
                    f"fan-out: host {res.host} unreachable, its jobs requeued, "
                    f"retry in {wait:.0f}s: {res.error[:200]}"
                )
        else:
            host.consecutive_failures = 0
        units_ok, secs_ok = 0, 0.0
        for job in res.jobs:
            jr = res.job_results.get(job.id)
            if res.status == "unreachable" and (jr is None or jr.get("status") == "ok"):
                self._requeue(job, f"host {res.host} unreachable")
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
            else:
                self._fail(job, host, "{}: {}".format(status, jr.get("reason", "")))
        if self.cleanup is not None:
            self.cleanup(res)
        if secs_ok > 0:
            sample = units_ok / secs_ok
            a = self.settings.ema_alpha
            host.rate = sample if host.rate is None else a * sample + (1 - a) * host.rate

    def _requeue(self, job: Job, reason: str) -> None:
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
        """One round: fill free slots, take finished dispatches. False when all is done."""
        now = time.time()
        for host in sorted(self.hosts.values(), key=lambda h: -(h.rate or 0.0)):
            if not host.live(now):
                continue
            for slot in host.free_slots():
                batch = self.take_batch(host, now)
                if not batch:
                    break
                self.start_dispatch(host, slot, batch)
        queued = [j for j in self.jobs.values() if j.state == "queued"]
        if not queued and self.running() == 0:
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
