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

from ansible_collections.prng.cluster.plugins.module_utils import defaults
from ansible_collections.prng.cluster.plugins.module_utils.job_validate import seeds_digest
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


# -- memory model and slots ------------------------------------------------------------
def load_memory_model(path: str | None) -> Dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def host_memory_model(path: str | None, host: HostSpec) -> tuple[Dict[str, Any] | None, str]:
    """The memory model for `host`: measured on that host (`memory_models/<host>.json` next to
    the controller's model, written by playbooks/measure_memory.yml), else on a host of its
    gpu_type (`memory_models/gpu_type-<type>.json`), else the controller's CPU measurement,
    the fallback; the second value says which, for the plan."""
    folder = os.path.join(os.path.dirname(path), "memory_models") if path else ""
    for name, source in (
        (f"{host.name}.json", "measured on this host"),
        (f"gpu_type-{host.gpu_type}.json", f"measured on a {host.gpu_type} host"),
    ):
        model = load_memory_model(os.path.join(folder, name)) if folder else None
        if model:
            return model, source
    model = load_memory_model(path)
    return model, ("the controller's measurement (fallback)" if model else "no memory model")


def predict_peak_mb(model: Dict[str, Any] | None, backend: str, chunk_size: int, n_draws: int) -> float:
    """Predicted peak MiB of one worker: the workers' own formula
    (prng_workers.scoring.memory_model.predict_peak_mb, the contract). No model at all: 0.0,
    memory does not limit the slots (the plan says "no memory model"); a model without
    `backend` is a PlanError naming the backends it has."""
    if not model:
        return 0.0
    from prng_workers.scoring.memory_model import predict_peak_mb as workers_peak_mb

    try:
        return workers_peak_mb(model, backend, chunk_size, n_draws)
    except ValueError as exc:  # the workers' InputError
        raise PlanError(str(exc)) from None


# -- throughput remembered between runs ---------------------------------------------------
THROUGHPUT_VERSION = 1


def load_throughput(path: str | None) -> Dict[str, Any]:
    """Measured rates (units per slot-second) by plan kind, per host and per gpu_type, kept
    between runs next to the memory model (as gpu_optimizer.py kept its profiles)."""
    if not path or not os.path.exists(path):
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    if not isinstance(doc, dict) or doc.get("version") != THROUGHPUT_VERSION:
        return {"version": THROUGHPUT_VERSION, "rates": {}}
    return doc


def stored_rate(table: Dict[str, Any], kind: str, host: HostSpec) -> tuple[float | None, str]:
    """(units per slot-second, where it came from): the host's own, else its gpu_type's."""
    rates = (table.get("rates") or {}).get(kind) or {}
    for key, label in ((f"host:{host.name}", "this host"), (f"gpu_type:{host.gpu_type}", host.gpu_type)):
        rec = rates.get(key)
        if isinstance(rec, dict) and float(rec.get("rate") or 0) > 0:
            return float(rec["rate"]), f"{label}, {rec.get('runs', 1)} runs"
    return None, "no stored rate"


def remember_throughput(path: str, kind: str, hosts: Dict[str, Any], alpha: float = 0.5) -> Dict[str, Any]:
    """Fold a finished run's measured rates (the manifest's `hosts`) into the stored ones
    (moving average per host and per gpu_type) and write the file atomically."""
    import tempfile
    import time

    doc = load_throughput(path)
    rates = doc.setdefault("rates", {}).setdefault(kind, {})
    for name, h in hosts.items():
        rate = float(h.get("rate_units_per_slot_s") or 0)
        if rate <= 0 or not h.get("jobs_done"):
            continue
        for key in (f"host:{name}", f"gpu_type:{h.get('gpu_type', 'cpu')}"):
            old = rates.get(key) or {}
            runs = int(old.get("runs", 0))
            new = rate if not runs else alpha * rate + (1 - alpha) * float(old["rate"])
            rates[key] = {"rate": round(new, 4), "runs": runs + 1, "updated": round(time.time(), 1)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".throughput-")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return doc


def plan_preview(
    plan: Plan,
    params: Dict[str, Any],
    hosts: List[HostSpec],
    left_out: Dict[str, str],
    table: Dict[str, Any],
) -> Dict[str, Any]:
    """What a run would do, without running a job: chunk size, slots per host with the reason,
    predicted memory per worker against the host's limit, job count, ETA from stored rates."""
    jobs = plan.make_jobs()
    units = sum(j.units for j in jobs)
    per_host: Dict[str, Any] = {}
    capacity, unknown = 0.0, []
    worker_mb = params.get("worker_mb") or {}
    for h in hosts:
        rate, source = stored_rate(table, plan.kind, h)
        usable = h.memory_available_mb * (1 - h.memory_margin_pct / 100.0) if h.memory_available_mb else None
        mb = worker_mb.get(h.name)
        per_host[h.name] = {
            "slots": h.slots,
            "slot_reason": h.slot_reason,
            "backend": h.backend,
            "predicted_worker_mb": mb,
            "memory_usable_mb": round(usable, 1) if usable else None,
            "memory_limit": (
                f"{h.slots} x {mb} MiB = {round(h.slots * mb, 1)} of {round(usable, 1)} MiB usable"
                if mb and usable
                else "no memory model for this plan"
                if not mb
                else "host memory unknown"
            ),
            "rate_units_per_slot_s": rate,
            "rate_source": source,
        }
        if rate:
            capacity += rate * h.slots
        else:
            unknown.append(h.name)
    eta = round(units / capacity, 1) if capacity and not unknown else None
    return {
        "chunk_size": params.get("chunk_size"),
        "jobs": len(jobs),
        "units": units,
        "hosts": per_host,
        "left_out": left_out,
        "eta_s": eta,
        "eta": (
            f"{eta} s at the stored rates"
            if eta is not None
            else "unknown: no stored throughput for " + ", ".join(unknown or ["any host"])
        ),
    }


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


def slots_for(host: HostSpec, worker_mb: float) -> int:
    """min(usable GPUs or CPU limit, configured limit, what fits in memory). 0 when no worker
    fits: the host is then left out with `slot_reason`, never given a slot anyway."""
    limit = host.base_slots()
    reason = f"gpu_count={host.gpu_count} max_concurrent_jobs={host.max_concurrent_jobs}"
    if host.gpu_indices is not None and host.gpu_type != "cpu":
        reason += f" usable_gpus={host.gpu_indices}"
    if host.memory_available_mb and worker_mb > 0:
        usable = host.memory_available_mb * (1 - host.memory_margin_pct / 100.0)
        fit = int(math.floor(usable / worker_mb))
        reason += f" memory_fit={fit} ({usable:.0f} MiB usable / {worker_mb:.0f} MiB per worker)"
        limit = min(limit, fit)
    host.slots = max(0, limit)
    host.slot_reason = reason if host.slots else "no worker fits: " + reason
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
        want_slots = max(1, host.base_slots())
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


class ListPlan(Plan):
    """Jobs from a jobs file, ours or the old scripts_coordinator's (seed 002 §5.4).

    Ours: {"jobs": [{"id", "script" | "argv", "args", "outputs" | "output", "range", "units",
    "timeout", "env"}]}. Old: {"jobs": [{"job_id", "script", "args", "gpu_id"}]} with the
    output path inside args (`--output PATH`): that path becomes `{out}/<name>` (the job's own
    folder, pulled back), and `gpu_id` is ignored (each slot binds its own GPU, i11).
    `files` (params) are the step's inputs, preloaded into each host's ramdisk: an argument
    (or a relative script) naming one of them, by its controller path, its name, a relative
    path or an old /dev/shm path, runs as `{input_dir}/<name>`. What was ignored or rewritten
    is listed in `notes`."""

    kind = "list"
    OURS = (
        "id",
        "argv",
        "script",
        "args",
        "outputs",
        "output",
        "output_kind",
        "range",
        "units",
        "timeout",
        "env",
    )
    OLD = ("job_id", "gpu_id")
    OUTPUT_FLAGS = ("--output", "--output-file", "--out", "--output-json", "--results")

    def __init__(self, params: Dict[str, Any]) -> None:
        super().__init__(params)
        self.notes: List[str] = []

    def files(self) -> Dict[str, str]:
        """The step's input files by name (their names must differ: one ramdisk folder)."""
        out: Dict[str, str] = {}
        for path in self.params.get("files") or []:
            name = os.path.basename(path)
            if name in out or name == os.path.basename(self.params["jobs_file"]):
                raise PlanError(f"files: two inputs named {name}; the step's ramdisk folder holds one")
            out[name] = path
        return out

    def inputs(self) -> Dict[str, str]:
        files = {"file:" + name: path for name, path in self.files().items()}
        return dict({"jobs_file": self.params["jobs_file"]}, **files)

    def _input_arg(self, arg: str, names: Dict[str, str]) -> str | None:
        """`{input_dir}/<name>` when `arg` names a preloaded file, else None."""
        if "{" in arg or not arg:
            return None
        name = os.path.basename(arg)
        if name not in names:
            return None
        if arg in (name, names[name]) or not os.path.isabs(arg) or arg.startswith("/dev/shm/"):
            return "{input_dir}/" + name
        return None

    def full_jobs(self) -> List[Job]:
        path = self.params["jobs_file"]
        try:
            with open(path) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read jobs file {path}: {exc}") from None
        raw = doc.get("jobs") if isinstance(doc, dict) else doc
        if not isinstance(raw, list):
            raise PlanError(f'jobs file {path}: expected a list of jobs (or {{"jobs": [...]}})')
        names = self.files()
        jobs: List[Job] = []
        seen = set()
        ignored: Dict[str, int] = {}
        rewritten = {"inputs": 0, "outputs": 0}
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise PlanError(f"jobs file {path}: job {i} is not an object")
            job_id = str(item.get("id") or item.get("job_id") or f"job{i:04d}")
            if job_id in seen:
                raise PlanError(f"job id {job_id} appears twice in {path}")
            seen.add(job_id)
            for key in item:
                if key not in self.OURS and key != "job_id":
                    ignored[key] = ignored.get(key, 0) + 1
            if "argv" in item:
                argv = [str(a) for a in item["argv"]]
            elif "script" in item:
                script = str(item["script"])
                argv = [self.params.get("python") or "{worker_bin}/python", script]
                argv += [str(a) for a in item.get("args", [])]
            else:
                raise PlanError(f"job {job_id} has neither argv nor script")
            outputs = item.get("outputs")
            if outputs is None and item.get("output"):
                outputs = [{"path": item["output"], "kind": item.get("output_kind", "json")}]
            for j, arg in enumerate(argv[1:], start=1):
                flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
                target = self._input_arg(value, names)
                if target is not None:
                    argv[j] = flag + eq + target
                    rewritten["inputs"] += 1
                named = argv[j - 1] in self.OUTPUT_FLAGS or (eq and flag in self.OUTPUT_FLAGS)
                if target is None and outputs is None and named:
                    # old format: the output path is an argument; run it in the job's own folder
                    out = "{out}/" + os.path.basename(value)
                    argv[j] = flag + eq + out if eq else out
                    kind = {".json": "json", ".npz": "npz"}.get(os.path.splitext(value)[1].lower(), "exists")
                    outputs = [{"path": out, "kind": kind}]
                    rewritten["outputs"] += 1
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
        self.notes = []
        if "gpu_id" in ignored:
            self.notes.append(
                f"ignored gpu_id in {ignored.pop('gpu_id')} jobs: each slot binds its own GPU "
                "(CUDA/HIP_VISIBLE_DEVICES), jobs go to whichever slot is free (i11)"
            )
        if ignored:
            self.notes.append(
                "ignored unknown fields: " + ", ".join(f"{k} ({n} jobs)" for k, n in sorted(ignored.items()))
            )
        if rewritten["outputs"]:
            self.notes.append(
                f"{rewritten['outputs']} output paths given as --output arguments now write to the job's "
                "own folder ({out}/<name>), pulled back into <run_dir>/outputs/<job>/"
            )
        if rewritten["inputs"]:
            self.notes.append(
                f"{rewritten['inputs']} arguments naming the step's files now read the host's ramdisk copy "
                "({input_dir}/<name>)"
            )
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
        #: the NPZ the hosts read when the survivors were given as JSON (convert_survivors)
        self.host_survivors: str | None = None

    def inputs(self) -> Dict[str, str]:
        p = self.params
        return {
            "survivors": p["survivors"],
            "train_history": p["train_history"],
            "holdout_history": p.get("holdout_history") or "",
        }

    def host_inputs(self) -> Dict[str, str]:
        return dict(self.inputs(), survivors=self.host_survivors or self.params["survivors"])

    def convert_survivors(self, cache_dir: str) -> Dict[str, Any] | None:
        """JSON survivors become one NPZ on the controller, once per source content
        (`<cache_dir>/<sha256>/<name>.npz`), before the preload: every worker of a host then
        memory-maps the same file instead of parsing the JSON whole (seed 003)."""
        src = self.params["survivors"]
        if not src.lower().endswith(".json"):
            return None
        from prng_workers.formats import file_sha256, survivors_to_npz

        stem = os.path.splitext(os.path.basename(src))[0]
        dst = os.path.join(cache_dir, file_sha256(src), stem + ".npz")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        done = survivors_to_npz(src, dst)
        self.host_survivors = dst
        return done

    @property
    def seeds(self) -> Any:
        if self._seeds is None:
            self._seeds = read_seeds(self.host_survivors or self.params["survivors"])
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
        names = {k: os.path.basename(v) for k, v in self.host_inputs().items() if v}
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

    def full_jobs(self) -> List[Job]:
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
    OPTIONS = (
        "window",
        "offset",
        "skip_min",
        "skip_max",
        "threshold",
        "mod",
        "sessions",
        "direction",
        "reverse_window",
    )

    def inputs(self) -> Dict[str, str]:
        return {"history": self.params["history"]}

    def full_jobs(self) -> List[Job]:
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
            if p.get(key) is not None and p.get(key) != "" and not (key == "reverse_window" and not p[key]):
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
