# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""What a plan is: the tokens a job may hold, the plan error, a host as the fan-out sees it
(`HostSpec`: its slots, and which GPU each slot binds) and the base `Plan` (jobs, their
splitting, what each job's output must hold). The plans of the steps are in plans.py; how
many slots and how big a chunk each host gets, in sizing.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils import defaults
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import shards
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job

# Tokens a job's argv and output paths may hold; the dispatcher fills them per host/slot.
TOKENS = (
    "{worker_bin}",
    "{input_dir}",
    "{out}",
    "{backend}",
    "{device}",
    "{job_id}",
    "{start}",
    "{stop}",
    "{gpu}",
)


class PlanError(ValueError):
    """Bad plan input; message is one line for the operator."""


@dataclass
class HostSpec:
    """A host as the fan-out sees it; resolved from inventory variables by the action."""

    name: str
    gpu_type: str = "cpu"
    gpu_count: int = 0
    max_concurrent_jobs: int = 1
    memory_available_mb: float | None = None
    memory_margin_pct: float = 20.0
    start_stagger_seconds: float = 0.0
    prng_home: str = defaults.PRNG_HOME
    worker_bin: str = defaults.PRNG_WORKER_BIN
    input_dir: str = ""
    lease_file: str = ""  # the run's ramdisk lease on input_dir; the host's agent renews it
    env_file: str | None = None
    backend: str = "numpy"
    device: str = "cpu"
    slots: int = 0
    slot_reason: str = ""
    gpu_indices: List[int] | None = None  # usable GPUs (health preflight); None: 0..gpu_count-1
    extra: Dict[str, Any] = field(default_factory=dict)

    def gpu_for_slot(self, slot: int) -> int | None:
        """The GPU index slot `slot` binds (i1): the slot-th usable GPU (i23, i24); None on a
        CPU host (no GPU visible). The one place that maps slots to GPUs."""
        if self.gpu_type == "cpu":
            return None
        return self.gpu_indices[slot] if self.gpu_indices is not None else slot

    def gpus(self) -> int:
        """GPUs the host may use: the usable ones when its health was checked."""
        return len(self.gpu_indices) if self.gpu_indices is not None else self.gpu_count

    def base_slots(self) -> int:
        """Slots before memory: min(usable GPUs, or the CPU limit, and max_concurrent_jobs)."""
        base = self.gpus() if self.gpu_type != "cpu" and self.gpu_count > 0 else self.max_concurrent_jobs
        return min(base, self.max_concurrent_jobs)


# -- plans -------------------------------------------------------------------------------
class Plan:
    """Base: a plan makes jobs and says what each job's output must hold."""

    kind = "list"

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = params
        #: a shard's record for run.json (slice, full plan's job count and digest); None: no shard
        self.shard_info: Dict[str, Any] | None = None

    def inputs(self) -> Dict[str, str]:
        return {}

    def host_inputs(self) -> Dict[str, str]:
        """The files the hosts get (the step's ramdisk preload): the inputs, unless a plan
        hands the hosts a converted copy of one (ScorePlan: JSON survivors as NPZ)."""
        return self.inputs()

    BACKENDS: Dict[str, str] = {}

    def adapt_host(self, host: HostSpec) -> None:
        """Map the host's `worker_backend` (cpu/numpy/gpu/torch...) onto this worker's names."""
        host.backend = self.BACKENDS.get(host.backend, host.backend)
        if host.device in ("", "auto"):
            host.device = "cuda" if host.backend in ("torch", "gpu") else "cpu"

    def make_jobs(self) -> List[Job]:
        """The run's jobs: the full plan's, or with `shard: K/N` only shard K's contiguous
        part of them (shards.py), the same part on every controller."""
        jobs = self.full_jobs()
        if not self.params.get("shard"):
            return jobs
        try:
            part, self.shard_info = shards.select(jobs, self.params["shard"])
        except shards.ShardError as exc:
            raise PlanError(str(exc)) from None
        return part

    def full_jobs(self) -> List[Job]:
        raise NotImplementedError

    def expect(self, job: Job) -> Dict[str, Any]:
        """Per-output expectations merged into the job's output specs at dispatch."""
        return {}

    def range_jobs(
        self, prefix: str, lo: int, hi: int, chunk: int, argv: List[str], output: Dict[str, Any]
    ) -> List[Job]:
        """One job per `chunk` of [lo, hi): ids `<prefix>0000`..., the same argv and output."""
        width = max(4, len(str((hi - lo + chunk - 1) // chunk)))
        return [
            Job(
                id=f"{prefix}{i:0{width}d}",
                argv=list(argv),
                outputs=[dict(output)],
                units=min(hi, start + chunk) - start,
                range=[start, min(hi, start + chunk)],
                timeout=self.params.get("timeout"),
            )
            for i, start in enumerate(range(lo, hi, chunk))
        ]

    def child(self, job: Job, start: int, stop: int, suffix: str) -> Job:
        spec = job.spec()
        spec.update(id=job.id + suffix, range=[start, stop], units=stop - start, parent=job.id)
        return Job.from_spec(spec)

    def split(self, job: Job) -> List[Job]:
        if job.range is None:
            raise ValueError(f"job {job.id} has no seed range")
        start, stop = job.range
        mid = (start + stop) // 2
        return [self.child(job, start, mid, ".a"), self.child(job, mid, stop, ".b")]
