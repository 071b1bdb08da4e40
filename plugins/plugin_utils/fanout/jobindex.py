# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Every job of a run indexed by state, so that a scheduling decision costs the same
whether 10 or 48,000 jobs are finished: counts and units per state kept as jobs change
state (set), and the queued jobs in heaps, longest first, with the ones waiting out a
retry backoff and the ones avoiding hosts (failed there) apart."""

from __future__ import annotations

import heapq
import time
from typing import Dict, List, Sequence, Tuple

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import STATES, Job

Entry = Tuple[float, int, int, str]  # key, order, token, job id


class JobIndex:
    def __init__(self, jobs: Dict[str, Job]) -> None:
        self.jobs = jobs
        self.count = {s: 0 for s in STATES}
        self.units = {s: 0 for s in STATES}
        self._order: Dict[str, int] = {}  # plan order: equal jobs go in the order planned
        self._token: Dict[str, int] = {}  # queued job -> its live heap entries' token
        self._seq = 0
        self._long: List[Entry] = []  # ready, -units: longest first
        self._short: List[Entry] = []  # ready, units: a probe takes the shortest
        self._later: List[Entry] = []  # not_before: waiting out a retry backoff
        self._picky: Dict[str, Job] = {}  # ready, but avoiding the hosts they failed on
        for job in list(jobs.values()):
            self._index(job)

    def add(self, job: Job) -> None:
        """A new job (a half of a split one)."""
        self.jobs[job.id] = job
        self._index(job)

    def _index(self, job: Job) -> None:
        self._order.setdefault(job.id, len(self._order))
        self.count[job.state] += 1
        self.units[job.state] += job.units
        if job.state == "queued":
            self._enqueue(job)

    def set(self, job: Job, state: str) -> None:
        """Every state change of a job goes through here."""
        self.count[job.state] -= 1
        self.units[job.state] -= job.units
        self._token.pop(job.id, None)  # its heap entries are stale from now on
        self._picky.pop(job.id, None)
        job.state = state
        self.count[state] += 1
        self.units[state] += job.units
        if state == "queued":
            self._enqueue(job)

    def queued(self) -> List[Job]:
        return [self.jobs[i] for i in self._token]

    # -- the queue -------------------------------------------------------------------------
    def _enqueue(self, job: Job) -> None:
        self._seq += 1
        self._token[job.id] = self._seq
        if job.not_before > time.time():
            heapq.heappush(self._later, (job.not_before, self._order[job.id], self._seq, job.id))
        else:
            self._ready(job, self._seq)
        if len(self._long) + len(self._short) + len(self._later) > 4 * len(self._token) + 64:
            self._compact()

    def _ready(self, job: Job, token: int) -> None:
        if job.avoid:
            self._picky[job.id] = job
        else:
            order = self._order[job.id]
            heapq.heappush(self._long, (-job.units, order, token, job.id))
            heapq.heappush(self._short, (job.units, order, token, job.id))

    def _compact(self) -> None:
        """Drop stale entries (jobs taken since) so the heaps stay the size of the queue."""
        self._long, self._short, self._later, self._picky = [], [], [], {}
        for job_id, token in self._token.items():
            job = self.jobs[job_id]
            if job.not_before > time.time():
                self._later.append((job.not_before, self._order[job_id], token, job_id))
            else:
                self._ready(job, token)
        for heap in (self._long, self._short, self._later):
            heapq.heapify(heap)

    def _top(self, heap: List[Entry]) -> Job | None:
        while heap:
            _key, _order, token, job_id = heap[0]
            if self._token.get(job_id) == token:
                return self.jobs[job_id]
            heapq.heappop(heap)
        return None

    def pick(
        self, host: str, live: Sequence[str], now: float, limit: float, max_jobs: int, probe: bool = False
    ) -> List[Job]:
        """Jobs for one dispatch on `host`, longest first, up to `limit` units and `max_jobs`
        jobs (the first one always); a probe gets one job, the shortest. A job that failed
        on `host` goes there only when every live host has failed it. The jobs stay queued
        until the caller starts them (set): picking changes nothing. O(batch x log queued)."""
        while self._later and self._later[0][0] <= now:
            _nb, _order, token, job_id = heapq.heappop(self._later)
            if self._token.get(job_id) == token:
                self._ready(self.jobs[job_id], token)
        picky = sorted(
            (j for j in self._picky.values() if host not in j.avoid or all(n in j.avoid for n in live)),
            key=self._rank,
        )
        if probe:
            short = self._top(self._short)
            return sorted([j for j in (short, picky[-1] if picky else None) if j], key=self._rank)[-1:]
        batch: List[Job] = []
        units = 0
        popped: List[Entry] = []  # looked at in the heap: put back once the batch is chosen
        while len(batch) < max_jobs:
            top = self._top(self._long)
            if picky and (top is None or self._rank(picky[0]) < self._rank(top)):
                top = picky[0]
            if top is None or (batch and units + top.units > limit):
                break
            if picky and top is picky[0]:
                picky.pop(0)
            else:
                popped.append(heapq.heappop(self._long))
            batch.append(top)
            units += top.units
        for entry in popped:
            heapq.heappush(self._long, entry)
        return batch

    def _rank(self, job: Job) -> Tuple[int, int]:
        """Longest first, then in plan order."""
        return (-job.units, self._order[job.id])
