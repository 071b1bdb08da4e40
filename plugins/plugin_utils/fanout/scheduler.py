# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out loop: free slots pull work (i18), failures retry elsewhere with backoff,
an OOM-killed job is split in half (i10), a worker's input error stops the run instead of
being retried (i31), an unreachable host's jobs are requeued and the host is probed until
it answers again (i38), and every state change is journaled first (i15, i17).

All state lives in the main thread; the transport takes a batch without blocking and hands
its result back through a queue. One round (step) handles the results that came in, then
fills the free slots; its journal lines share one fsync, taken before any batch is sent.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import DispatchResult
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.hosts import HostState
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.jobindex import JobIndex
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job, Journal
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.outcomes import Outcomes
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, Plan
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.progress import Progress

# send(dispatch_id, host, slot, jobs, expect, reply): hand a batch to the transport without
# blocking; reply(result) comes later, from any thread.
SendFn = Callable[
    [str, HostSpec, int, List[Job], Callable[[Job], Dict[str, Any]], Callable[[DispatchResult], None]], None
]


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
    # A batch takes at most this part of its slot's fair share of the work left ("factoring"):
    # the share assumes the measured rates hold, and a batch sized on a rate that is off (a
    # host measured on one job, a fixed cost per job) would finish alone at the end; halves
    # leave later batches to even it out, at a few more dispatches (~0.05 s each).
    fair_share_fraction: float = 0.5
    progress_interval: float = 5.0
    poll_seconds: float = 0.2  # longest wait for a result before the next round


class FanOut(Outcomes):
    """The loop: free slots pull batches, results come back through a queue (see
    Outcomes for what each result does)."""

    def __init__(
        self,
        run_dir: str,
        plan: Plan,
        hosts: List[HostSpec],
        jobs: Dict[str, Job],
        journal: Journal,
        send: SendFn,
        settings: Settings,
        say: Callable[[str], None],
        cancel: threading.Event | None = None,
        cleanup: Callable[[DispatchResult], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.hosts = {h.name: HostState(h) for h in hosts}
        self.jobs = jobs
        self.index = JobIndex(jobs)  # every state change goes through it
        self.journal = journal
        self.send = send
        self.cleanup = cleanup
        self.settings = settings
        self.say = say
        self.cancel = cancel or threading.Event()
        self.results: queue.Queue[DispatchResult] = queue.Queue()
        self.seq = 0
        self.last_limit: Dict[str, float] = {}  # how the last batch was sized (journaled)
        self.inflight: Dict[str, Tuple[str, int, float]] = {}  # dispatch -> host, units, start
        self.epochs: Dict[str, int] = {}  # dispatch -> its host's epoch when it started
        self.outbox: List[Tuple[str, HostState, int, List[Job]]] = []  # journaled, not sent yet
        self._round = False  # inside fill(): sizing() is computed once, when first needed
        self._sizing: Dict[str, Any] | None = None  # this round's view of the whole run
        self.stopped: str | None = None  # why the run stopped early (an input error, i31)
        self.session = time.strftime("%H%M%S")  # dispatch ids stay unique across resumes
        self.started = time.time()
        self.ended: float | None = None
        self.failures: List[Dict[str, Any]] = []
        self.dispatch_log: List[Dict[str, Any]] = []
        self.progress = Progress(os.path.join(run_dir, "progress.json"), say, settings.progress_interval)
        os.makedirs(os.path.join(run_dir, "outputs"), exist_ok=True)

    # -- selection -----------------------------------------------------------------------
    def sizing(self, now: float) -> Dict[str, Any]:
        """What batch sizing needs to know about the whole run: live hosts, their rates, the
        work left (queued + the rest of the running batches). At most once per round, and
        only in a round that has a free slot to fill: O(hosts + running dispatches), never
        O(jobs)."""
        if self._round and self._sizing is not None:
            return self._sizing
        live = [h for h in self.hosts.values() if h.live(now)]
        known = [h.rate for h in live if h.rate]
        mean_rate = sum(known) / len(known) if known else None
        running = 0.0
        for other_host, units, started in self.inflight.values():
            other = self.hosts[other_host]
            rate = other.rate or mean_rate or 0.0
            running += max(0.0, units - rate * (now - started))
        ctx = {
            "live": [h.spec.name for h in live],
            "mean_rate": mean_rate,
            "total_rate": sum(h.spec.slots * (h.rate or mean_rate or 0.0) for h in live),
            "left": self.index.units["queued"] + running,
        }
        if self._round:
            self._sizing = ctx
        return ctx

    def take_batch(self, host: HostState, now: float, probe: bool = False) -> List[Job]:
        """The next batch for a free slot of `host` (start_dispatch starts it)."""
        ctx = self.sizing(now)
        name, live = host.spec.name, ctx["live"]
        self.last_limit = {}
        if probe:  # a lost host is tried with one job, the shortest
            return self.index.pick(name, live, now, 0, 1, probe=True)
        if host.rate is None:  # the first dispatch on a host measures its throughput
            return self.index.pick(name, live, now, 0, 1)
        # Enough work to make the transport's fixed cost small (target seconds at the
        # host's measured rate), but no more than this slot can do while all slots finish
        # what is left (queued + the rest of running batches) at their measured rates,
        # so that near the end no slot idles while a slow one works through a big batch
        # (a fraction of that share: see Settings.fair_share_fraction).
        # Longest jobs first: the small ones left at the end fill the gaps.
        total_rate = ctx["total_rate"] or host.rate
        target = host.rate * self.settings.target_dispatch_seconds
        fair = host.rate * ctx["left"] / total_rate * self.settings.fair_share_fraction
        limit = max(1.0, min(target, fair))
        self.last_limit = {"target": round(target, 1), "fair": round(fair, 1), "rate": round(host.rate, 3)}
        return self.index.pick(name, live, now, limit, self.settings.max_jobs_per_dispatch)

    def start_dispatch(self, host: HostState, slot: int, batch: List[Job], probe: bool = False) -> str:
        """Journal the batch's start; it is sent once the round's journal lines are durable."""
        self.seq += 1
        dispatch_id = f"{self.session}-d{self.seq:05d}"
        extra = {"probe": True} if probe else {}
        for job in batch:
            self.index.set(job, "running")
            job.host = host.spec.name
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
        self.outbox.append((dispatch_id, host, slot, batch))
        return dispatch_id

    def flush(self) -> None:
        """Send the batches journaled this round (the journal is synced by now)."""
        outbox, self.outbox = self.outbox, []
        for dispatch_id, host, slot, batch in outbox:
            try:
                self.send(dispatch_id, host.spec, slot, batch, self.plan.expect, self.results.put)
            except Exception as exc:  # keep the loop alive whatever a transport does (i15)
                err = f"transport: {exc}"
                self.results.put(DispatchResult(dispatch_id, host.spec.name, slot, batch, "error", err))

    # -- main loop -----------------------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        return dict(self.index.count)

    def running(self) -> int:
        return len(self.inflight)

    def fill(self, now: float) -> None:
        """Free slots pull batches; a lost host due for a probe gets one job on one slot."""
        # An excluded host is probed only while another host can still work.
        others_work = any(not h.excluded for h in self.hosts.values())
        self._round, self._sizing = True, None
        try:
            for host in sorted(self.hosts.values(), key=lambda h: -(h.rate or 0.0)):
                if self.stopped is not None or not self.index.count["queued"]:
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
        finally:
            self._round, self._sizing = False, None

    def step(self) -> bool:
        """One round: fill free slots and probe lost hosts (journaled, synced, then sent),
        then handle the results that came in (their journal lines share one fsync, before
        the next round acts on them). False when all is done (or the run stopped and
        nothing runs any more)."""
        with self.journal.grouped():
            self.fill(time.time())
        self.flush()
        queued = self.index.count["queued"]
        if (not queued or self.stopped is not None) and not self.inflight:
            return False
        if queued and not self.inflight and all(h.excluded for h in self.hosts.values()):
            with self.journal.grouped():
                for job in self.index.queued():
                    job.reason = "no reachable host left"
                    self.index.set(job, "failed")
                    self.journal.append("fail", job=job.id, reason=job.reason, final=True)
                    self.failures.append(
                        {"job": job.id, "host": None, "reason": job.reason, "action": "failed"}
                    )
            return False
        try:
            res = self.results.get(timeout=self.settings.poll_seconds)
            with self.journal.grouped():
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

    def stop(self) -> None:
        """Stop taking results; the transport's close() ends what still runs. Running jobs
        stay 'running' in the journal and are requeued by the next run."""
        self.cancel.set()
        self.journal.close()
