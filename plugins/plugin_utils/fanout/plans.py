# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The plans of the steps: `ListPlan` (a jobs file, ours or the old scripts_coordinator's:
Steps 2 and 5), `ScorePlan` (Step 3), `SievePlan` (Step 1); `make_plan(kind, params)`.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils.job_validate import KINDS, seeds_digest
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import (
    Plan,
    PlanError,
)


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
            job_id = _job_id(item, i, path)
            if job_id in seen:
                raise PlanError(f"job id {job_id} appears twice in {path}")
            seen.add(job_id)
            for key in item:
                if key not in self.OURS and key != "job_id":
                    ignored[key] = ignored.get(key, 0) + 1
            where = f"jobs file {path}: job {job_id}"
            if "argv" in item:
                argv = _words(item["argv"], f"{where}: argv", empty=False)
            elif "script" in item:
                script = _words([item["script"]], f"{where}: script", empty=False)[0]
                argv = [self.params.get("python") or "{worker_bin}/python", script]
                argv += _words(item.get("args", []), f"{where}: args", empty=True)
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
            _check_outputs(outputs, where)
            _check_scalars(item, where)
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


# A job id names its folders (<run_dir>/outputs/<id>, {out} on the host): a plain name.
_JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@=-]{0,199}")


def _job_id(item: Dict[str, Any], i: int, path: str) -> str:
    raw = item.get("id", item.get("job_id"))
    if raw is None:
        return f"job{i:04d}"
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not _JOB_ID.fullmatch(str(raw)):
        raise PlanError(
            f"jobs file {path}: job {i} has id {json.dumps(raw)[:80]}, expected a name of letters, "
            "digits and _.:+@=- (it names the job's folders)"
        )
    return str(raw)


def _words(value: Any, where: str, empty: bool) -> List[str]:
    """argv / args: a list of strings or numbers (a string would run letter by letter)."""
    ok = isinstance(value, list) and (empty or value)
    if ok and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in value):
        return [str(a) for a in value]
    raise PlanError(
        f"{where} is {json.dumps(value)[:80]}, expected a {'' if empty else 'non-empty '}list of strings"
    )


def _check_outputs(outputs: Any, where: str) -> None:
    """Each output lies in the job's own folder: the host's runner deletes an output path
    before the job runs (a stale file must not pass), so /etc/x there would be deleted."""
    if not isinstance(outputs, list):
        raise PlanError(f"{where}: outputs is {json.dumps(outputs)[:80]}, expected a list of objects")
    for out in outputs:
        target = out.get("path") if isinstance(out, dict) else None
        parts = target.split("/") if isinstance(target, str) else []
        if not (parts[:1] == ["{out}"] and len(parts) > 1 and not {"", ".", ".."} & set(parts[1:])):
            raise PlanError(
                f"{where}: output {json.dumps(out)[:80]}, expected a path inside the job's folder, "
                '{"path": "{out}/<file>"}'
            )
        if out.get("kind", "exists") not in KINDS:
            raise PlanError(
                f"{where}: output kind {json.dumps(out['kind'])}, expected one of {', '.join(KINDS)}"
            )


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_scalars(item: Dict[str, Any], where: str) -> None:
    timeout = item.get("timeout")
    if timeout is not None:
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if not number or not math.isfinite(timeout) or timeout < 1:
            raise PlanError(f"{where}: timeout {json.dumps(timeout)}, expected seconds >= 1")
    rng = item.get("range")
    if rng is not None:
        ints = isinstance(rng, list) and len(rng) == 2 and all(_plain_int(v) for v in rng)
        if not ints or not 0 <= rng[0] < rng[1]:
            raise PlanError(
                f"{where}: range {json.dumps(rng)[:80]}, expected [start, stop] with 0 <= start < stop"
            )
    units = item.get("units")
    if units is not None and (not _plain_int(units) or units < 0):
        raise PlanError(f"{where}: units {json.dumps(units)[:80]}, expected an integer >= 0")
    env = item.get("env")
    if env is not None and not isinstance(env, dict):
        raise PlanError(f"{where}: env {json.dumps(env)[:80]}, expected an object of NAME: value")


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
