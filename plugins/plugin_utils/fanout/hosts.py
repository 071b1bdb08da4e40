# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""A host as the scheduler sees it while a step runs: its busy slots, measured rate and
counts, and its losses of contact (i38): one outage counts once however many of its
slots' dispatches it takes down, a lost host is probed after a growing wait and rejoins
with all its slots when it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec

# A lost host is probed after host_retry_seconds, doubled per consecutive loss up to this.
HOST_RETRY_CAP = 8


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

    def lose(self, now: float, retry_s: float, max_losses: int) -> float:
        """One loss of contact, counted once; returns the wait until the next probe. After
        `max_losses` in a row the host is left out (still probed while others work)."""
        self.epoch += 1
        self.consecutive_failures += 1
        if not self.down:
            self.down, self.down_since = True, now
            self.outages += 1
            self.downtime.append([round(now, 3), None])
        wait = min(retry_s * 2 ** (self.consecutive_failures - 1), retry_s * HOST_RETRY_CAP)
        self.down_until = now + wait
        self.excluded = self.excluded or self.consecutive_failures >= max_losses
        return wait

    def back(self, now: float) -> float:
        """It answered a probe: all its slots take work again. Returns the time it was down."""
        down = now - self.down_since
        self.down_s += down
        self.down = self.excluded = False
        self.rejoins += 1
        if self.downtime:
            self.downtime[-1][1] = round(now, 3)
        return down
