# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Plans: the jobs of a step, what each job's output must hold, and how many slots each
host gets.

Slots on a host = min(gpu_count (CPU host: max_concurrent_jobs), max_concurrent_jobs,
workers that fit its real memory limit by the measured memory model). Slot i binds GPU i
(i1, i10, i11).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils.job_validate import seeds_digest
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


# -- memory model and slots ------------------------------------------------------------
def load_memory_model(path: str | None) -> Dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def predict_peak_mb(model: Dict[str, Any] | None, backend: str, chunk_size: int, n_draws: int) -> float:
    """Predicted peak MiB of one worker (contract in docs/architecture.md)."""
    if not model:
        return 0.0
    models = model.get("models", {})
    m = models.get(backend) or models.get("numpy") or next(iter(models.values()), None)
    if not m:
        return 0.0
    return float(m["base_mb"]) + float(m["bytes_per_seed_draw"]) * chunk_size * n_draws / 2**20


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
    prng_home: str = "~/prng-cluster"
    worker_bin: str = "~/prng-cluster/venv/bin"
    input_dir: str = ""
    env_file: str | None = None
    backend: str = "numpy"
    device: str = "cpu"
    slots: int = 0
    slot_reason: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


def slots_for(host: HostSpec, worker_mb: float) -> int:
    """min(GPU count or CPU limit, configured limit, what fits in memory); at least 1."""
    base = host.gpu_count if host.gpu_type != "cpu" and host.gpu_count > 0 else host.max_concurrent_jobs
    limit = min(base, host.max_concurrent_jobs)
    reason = f"gpu_count={host.gpu_count} max_concurrent_jobs={host.max_concurrent_jobs}"
    if host.memory_available_mb and worker_mb > 0:
        usable = host.memory_available_mb * (1 - host.memory_margin_pct / 100.0)
        fit = int(math.floor(usable / worker_mb))
        reason += f" memory_fit={fit} ({usable:.0f} MiB usable / {worker_mb:.0f} MiB per worker)"
        limit = min(limit, fit)
    host.slot_reason = reason
    host.slots = max(1, limit)
    return host.slots


def model_backend(host: HostSpec) -> str:
    """Which memory model applies: torch workers carry the framework's footprint."""
    return "torch" if host.backend in ("torch", "gpu") else "numpy"


def pick_chunk_size(
    hosts: List[HostSpec],
    model: Dict[str, Any] | None,
    backend: str | None,
    wanted: int,
    n_draws: int,
    min_chunk: int = 100,
) -> int:
    """Largest chunk <= wanted with which every host still runs all its slots in memory;
    smaller chunks, not fewer workers, keep GPUs busy (seed 004). `backend` None: each
    host's own."""
    chunk = wanted
    for host in hosts:
        if not host.memory_available_mb or not model:
            continue
        host_backend = backend or model_backend(host)
        base = host.gpu_count if host.gpu_type != "cpu" and host.gpu_count > 0 else host.max_concurrent_jobs
        want_slots = max(1, min(base, host.max_concurrent_jobs))
        usable = host.memory_available_mb * (1 - host.memory_margin_pct / 100.0)
        while (
            chunk > min_chunk and predict_peak_mb(model, host_backend, chunk, n_draws) * want_slots > usable
        ):
            chunk = max(min_chunk, int(chunk * 0.8))
    return chunk


# -- plans -------------------------------------------------------------------------------
class Plan:
    """Base: a plan makes jobs and says what each job's output must hold."""

    kind = "list"

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = params

    def inputs(self) -> Dict[str, str]:
        return {}

    BACKENDS: Dict[str, str] = {}

    def adapt_host(self, host: HostSpec) -> None:
        """Map the host's `worker_backend` (cpu/numpy/gpu/torch...) onto this worker's names."""
        host.backend = self.BACKENDS.get(host.backend, host.backend)
        if host.device in ("", "auto"):
            host.device = "cuda" if host.backend in ("torch", "gpu") else "cpu"

    def make_jobs(self) -> List[Job]:
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


class ListPlan(Plan):
    """Jobs from a jobs file: {"jobs": [{"id", "script" | "argv", "args", "outputs"...}]}."""

    kind = "list"

    def inputs(self) -> Dict[str, str]:
        return {"jobs_file": self.params["jobs_file"]}

    def make_jobs(self) -> List[Job]:
        path = self.params["jobs_file"]
        try:
            with open(path) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read jobs file {path}: {exc}") from None
        raw = doc["jobs"] if isinstance(doc, dict) else doc
        jobs: List[Job] = []
        seen = set()
        for i, item in enumerate(raw):
            job_id = str(item.get("id") or item.get("job_id") or f"job{i:04d}")
            if job_id in seen:
                raise PlanError(f"job id {job_id} appears twice in {path}")
            seen.add(job_id)
            if "argv" in item:
                argv = [str(a) for a in item["argv"]]
            elif "script" in item:
                argv = [self.params.get("python", "{worker_bin}/python"), str(item["script"])]
                argv += [str(a) for a in item.get("args", [])]
            else:
                raise PlanError(f"job {job_id} has neither argv nor script")
            outputs = item.get("outputs")
            if outputs is None and item.get("output"):
                outputs = [{"path": item["output"], "kind": item.get("output_kind", "json")}]
            if not outputs:
                raise PlanError(f"job {job_id} names no output: success is judged by its output file (i3)")
            rng = item.get("range")
            jobs.append(
                Job(
                    id=job_id,
                    argv=argv,
                    outputs=list(outputs),
                    units=int(item.get("units", (rng[1] - rng[0]) if rng else 1)),
                    range=list(rng) if rng else None,
                    timeout=item.get("timeout", self.params.get("timeout")),
                    env={str(k): str(v) for k, v in (item.get("env") or {}).items()},
                )
            )
        if not jobs:
            raise PlanError(f"jobs file {path} holds no jobs")
        return jobs

    def expect(self, job: Job) -> Dict[str, Any]:
        """A jobs file may say an output holds one record per unit of the job's range
        ("records_from_range": true); then a split child expects its half."""
        if job.range and any(o.get("records_from_range") for o in job.outputs):
            return {"records": job.range[1] - job.range[0]}
        return {}


def read_seeds(path: str) -> Any:
    """uint64 seeds of a survivors file (JSON records or NPZ `seeds`), order kept (i27)."""
    import numpy as np  # controller-only dependency, imported when a score plan is made

    if path.endswith(".npz"):
        with np.load(path) as data:
            key = "seeds" if "seeds" in data.files else "seed"
            return np.asarray(data[key], dtype=np.uint64)
    with open(path) as fh:
        records = json.load(fh)
    return np.array([int(r["seed"]) for r in records], dtype=np.uint64)


class ScorePlan(Plan):
    """Step 3: survivors cut into chunks [start, stop); each output holds exactly that
    slice's seeds."""

    kind = "score"
    BACKENDS = {"gpu": "torch", "cuda": "torch", "rocm": "torch", "cpu": "numpy"}

    def __init__(self, params: Dict[str, Any]) -> None:
        super().__init__(params)
        self._seeds: Any = None

    def inputs(self) -> Dict[str, str]:
        p = self.params
        return {
            "survivors": p["survivors"],
            "train_history": p["train_history"],
            "holdout_history": p.get("holdout_history") or "",
        }

    @property
    def seeds(self) -> Any:
        if self._seeds is None:
            self._seeds = read_seeds(self.params["survivors"])
        return self._seeds

    def n_draws(self) -> int:
        total = 0
        for key in ("train_history", "holdout_history"):
            if self.params.get(key):
                with open(self.params[key]) as fh:
                    total += len(json.load(fh))
        return total

    def argv(self) -> List[str]:
        p = self.params
        names = {
            k: os.path.basename(p[k]) for k in ("survivors", "train_history", "holdout_history") if p.get(k)
        }
        argv = [
            "{worker_bin}/prng-score",
            "--survivors",
            "{input_dir}/" + names["survivors"],
            "--start",
            "{start}",
            "--stop",
            "{stop}",
            "--train-history",
            "{input_dir}/" + names["train_history"],
        ]
        if "holdout_history" in names:
            argv += ["--holdout-history", "{input_dir}/" + names["holdout_history"]]
        argv += [
            "--family",
            str(p["family"]),
            "--mod",
            str(p.get("mod", 1000)),
            "--backend",
            "{backend}",
            "--device",
            "{device}",
            "--out",
            "{out}/{job_id}.json",
            "--job-id",
            "{job_id}",
        ]
        if p.get("globals_file"):
            argv += ["--globals", "{input_dir}/" + os.path.basename(p["globals_file"])]
        return argv

    def make_jobs(self) -> List[Job]:
        n = int(len(self.seeds))
        if n == 0:
            raise PlanError("survivors file {} holds no seeds".format(self.params["survivors"]))
        output = {"path": "{out}/{job_id}.json", "kind": "json_list", "seed_key": "seed"}
        return self.range_jobs("c", 0, n, int(self.params["chunk_size"]), self.argv(), output)

    def expect(self, job: Job) -> Dict[str, Any]:
        if job.range is None:
            raise ValueError(f"job {job.id} has no seed range")
        start, stop = job.range
        chunk = [int(s) for s in self.seeds[start:stop]]
        return {"records": stop - start, "seeds_sha256": seeds_digest(chunk)}


class SievePlan(Plan):
    """Step 1: a seed range cut into jobs of `chunk_size` seeds; a dispatch carries as many
    as the host's measured seeds/s fills in the target time (gpu_optimizer.py's moving
    average), so a fast GPU gets proportionally more seeds per dispatch."""

    kind = "sieve"
    BACKENDS = {"torch": "gpu", "cuda": "gpu", "rocm": "gpu"}
    OPTIONS = ("window", "offset", "skip_min", "skip_max", "threshold", "mod", "sessions", "direction")

    def inputs(self) -> Dict[str, str]:
        return {"history": self.params["history"]}

    def make_jobs(self) -> List[Job]:
        p = self.params
        lo, hi, chunk = int(p["seed_start"]), int(p["seed_stop"]), int(p["chunk_size"])
        if hi <= lo or chunk <= 0:
            raise PlanError(f"empty seed range [{lo}, {hi}) or chunk_size {chunk}")
        argv = [
            "{worker_bin}/prng-sieve",
            "--family",
            str(p["family"]),
            "--history",
            "{input_dir}/" + os.path.basename(p["history"]),
        ]
        for key in self.OPTIONS:
            if p.get(key) is not None and p.get(key) != "":
                argv += ["--" + key.replace("_", "-"), str(p[key])]
        argv += [
            "--seed-start",
            "{start}",
            "--seed-end",
            "{stop}",
            "--backend",
            "{backend}",
            "--out",
            "{out}/{job_id}.npz",
        ]
        output = {"path": "{out}/{job_id}.npz", "kind": "npz", "seed_key": "seeds"}
        return self.range_jobs("s", lo, hi, chunk, argv, output)

    def expect(self, job: Job) -> Dict[str, Any]:
        if job.range is None:
            raise ValueError(f"job {job.id} has no seed range")
        return {"seed_range": list(job.range)}


PLANS = {"list": ListPlan, "score": ScorePlan, "sieve": SievePlan}


def make_plan(kind: str, params: Dict[str, Any]) -> Plan:
    if kind not in PLANS:
        raise PlanError("unknown plan kind {!r} (one of {})".format(kind, ", ".join(sorted(PLANS))))
    return PLANS[kind](params)
