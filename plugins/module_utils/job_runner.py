# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Running a batch of jobs on one GPU slot of a host, for prng.cluster.gpu_job and the
fan-out's host agent: GPU binding, the worker env file, each job its own process group with
a timeout that kills the whole group (i16), the start stagger lock (i9), the output
validation (i3/i4), and the outputs to pull. Standard library only; several slots may run
batches at once from threads of one process."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Sequence

from ansible_collections.prng.cluster.plugins.module_utils.defaults import PRNG_STATE_DIR
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import atomic_write_json
from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (
    OutputInvalid,
    validate_output,
)

# Sources the env file, then execs the worker argv given as arguments: no shell string
# is ever built from data.
SOURCE_AND_EXEC = 'set -a; . "$1"; set +a; shift; exec "$@"'
# Every job process group running in this process, so that a signal or the end of the
# agent kills them all (i16).
_running: Dict[int, subprocess.Popen[bytes]] = {}
_running_lock = threading.Lock()


class BatchError(ValueError):
    """A batch that cannot run as given (bad jobs, a folder outside the dispatch root)."""


def binding_env(gpu_type: str, gpu_index: int | None) -> Dict[str, str]:
    """The variables that make exactly one GPU visible (none on CPU hosts)."""
    value = "" if gpu_index is None else str(int(gpu_index))
    if gpu_type == "cuda":
        return {"CUDA_VISIBLE_DEVICES": value}
    # HIP reads both; giving both the same index leaves no second mask to disagree (i1).
    return {"HIP_VISIBLE_DEVICES": value, "CUDA_VISIBLE_DEVICES": value}


def kill_groups(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each job's process group, then SIGKILL whatever is left after `grace` (i16)."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def kill_all(grace: float) -> None:
    """Kill every job still running in this process (the module or the agent is stopping)."""
    with _running_lock:
        procs = [p for p in _running.values() if p.poll() is None]
    kill_groups(procs, grace)


def _on_signal(signum: int, frame: Any) -> None:
    kill_all(1.0)
    os._exit(128 + signum)


def stop_on_signals() -> None:
    """SIGTERM, SIGHUP (the SSH session is gone) or SIGINT kill the running jobs' groups."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)


def stagger(state_dir: str, seconds: float) -> float:
    """Wait until `seconds` have passed since the last worker start on this host."""
    if seconds <= 0:
        return 0.0
    os.makedirs(state_dir, exist_ok=True)
    waited = 0.0
    with open(os.path.join(state_dir, "start.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        try:
            last = float(fh.read().strip() or 0)
        except ValueError:
            last = 0.0
        wait = last + seconds - time.time()
        if wait > 0:
            time.sleep(wait)
            waited = wait
        fh.seek(0)
        fh.truncate()
        fh.write(f"{time.time():.6f}")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    return waited


def inside(root: str, path: str) -> bool:
    """True when `path` lies strictly below `root` (never the root itself, never '/')."""
    real = os.path.realpath(path)
    return root not in ("", "/") and real != root and real.startswith(root.rstrip("/") + "/")


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _summary(stdout_path: str) -> Dict[str, Any] | None:
    """The worker's last JSON line, kept as a report only (never as proof, i3)."""
    for line in reversed(_tail(stdout_path, 65536).splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_one(
    job: Dict[str, Any],
    log_dir: str,
    binding: Dict[str, str],
    env_file: str | None,
    stagger_s: float,
    state_dir: str,
    grace: float,
) -> Dict[str, Any]:
    job_id = str(job["id"])
    # The controller cannot know each host's home: a leading ~ is the host's.
    argv = [os.path.expanduser(str(a)) if str(a).startswith("~") else str(a) for a in job["argv"]]
    for spec in job.get("outputs") or []:
        spec["path"] = os.path.expanduser(spec["path"])
    result: Dict[str, Any] = {
        "id": job_id,
        "status": "failed",
        "rc": None,
        "reason": "",
        "outputs": [],
        "summary": None,
        "binding": binding,
    }
    env = dict(os.environ)
    env.pop("ROCR_VISIBLE_DEVICES", None)
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    env.update(binding)
    if env_file and os.path.isfile(env_file):
        # The env file might set its own GPU masks: re-apply the binding after it.
        pinned = ["{}={}".format(*kv) for kv in sorted(binding.items())]
        argv = (
            ["/bin/sh", "-c", SOURCE_AND_EXEC, "prng-job", env_file, "env", "-u", "ROCR_VISIBLE_DEVICES"]
            + pinned
            + argv
        )
    out_log = os.path.join(log_dir, job_id + ".stdout")
    err_log = os.path.join(log_dir, job_id + ".stderr")
    for spec in job.get("outputs") or []:
        parent = os.path.dirname(spec["path"])
        if parent:
            os.makedirs(parent, exist_ok=True)
        # A stale file from an earlier attempt must never pass for this run's output.
        for stale in (spec["path"], spec["path"] + ".meta.json"):
            if os.path.isfile(stale):
                os.unlink(stale)
    result["stagger_wait_s"] = round(stagger(state_dir, stagger_s), 3)
    timeout = job.get("timeout")
    start = time.time()
    result["started"] = start
    with open(out_log, "wb") as out_fh, open(err_log, "wb") as err_fh:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=job.get("cwd") or None,
                env=env,
                stdout=out_fh,
                stderr=err_fh,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            result.update(status="error", reason=f"cannot start {argv[0]}: {exc}", duration_s=0.0)
            return result
        with _running_lock:
            _running[proc.pid] = proc
        try:
            rc = proc.wait(timeout=float(timeout) if timeout else None)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_groups([proc], grace)
            rc = proc.returncode
            timed_out = True
        finally:
            with _running_lock:
                _running.pop(proc.pid, None)
        # Children the worker left behind die with its group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    result["duration_s"] = round(time.time() - start, 3)
    result["rc"] = rc
    result["summary"] = _summary(out_log)
    result["stderr_tail"] = _tail(err_log, 1500)
    if timed_out:
        result.update(status="timeout", reason=f"ran past its {timeout}s timeout; process group killed")
    elif rc in (137, -signal.SIGKILL):
        result.update(status="oom", reason=f"killed (exit {rc}): out of memory or SIGKILL")
    elif rc != 0:
        last = result["stderr_tail"].strip().splitlines()
        result.update(status="failed", reason="exit {}: {}".format(rc, last[-1][:300] if last else ""))
    else:
        try:
            result["outputs"] = [validate_output(spec) for spec in job.get("outputs") or []]
            result["status"] = "ok"
        except OutputInvalid as exc:
            result.update(status="invalid", reason=str(exc))
    return result


def pull_entry(src: str, job_id: str, inline_max: int) -> Dict[str, Any]:
    """One output to pull: small files ride back inline (base64), saving a transfer each."""
    entry: Dict[str, Any] = {"src": src, "job_id": job_id}
    if inline_max > 0 and os.path.getsize(src) <= inline_max:
        with open(src, "rb") as fh:
            entry["content"] = base64.b64encode(fh.read()).decode("ascii")
    return entry


def parse_jobs(jobs: Any) -> List[Dict[str, Any]]:
    """The jobs of a batch, as a list or its JSON text (the fan-out's `!unsafe` string)."""
    if isinstance(jobs, str):
        try:
            jobs = json.loads(jobs)
        except ValueError as exc:
            raise BatchError(f"jobs is not valid JSON: {exc}") from None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and "id" in j and "argv" in j for j in jobs):
        raise BatchError("jobs must be a list of {id, argv, ...} objects")
    return jobs


def remove_inside(root: str, paths: Sequence[str]) -> None:
    """Remove folders of earlier dispatches; each must lie inside the dispatch root."""
    root = os.path.realpath(os.path.expanduser(root))
    paths = [os.path.expanduser(p) for p in paths]
    for path in paths:
        if not inside(root, path):
            raise BatchError(f"refusing to remove {path}: not inside {root}")
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def run_batch(
    jobs: List[Dict[str, Any]],
    work_dir: str,
    dispatch_root: str | None,
    gpu_type: str = "cpu",
    gpu_index: int | None = None,
    env_file: str | None = None,
    start_stagger_seconds: float = 0.0,
    state_dir: str = PRNG_STATE_DIR,
    kill_grace_seconds: float = 5.0,
    inline_max_bytes: int = 0,
) -> Dict[str, Any]:
    """Run a batch on one slot, one job after the other: the gpu_job module's options
    (built once on the controller, see plugin_utils/fanout/dispatcher.py). Jobs sent
    inline (`dispatch_root` given) are written to work_dir/jobs.json, which must lie inside
    the dispatch root; `dispatch_root` None: they came from a jobs file in work_dir.
    Returns the module's result: `jobs` (one result each), `fetch` (outputs to pull),
    `binding`."""
    work_dir = os.path.expanduser(work_dir)
    if dispatch_root is not None:
        root = os.path.realpath(os.path.expanduser(dispatch_root))
        if not inside(root, work_dir):
            raise BatchError(f"work_dir {work_dir} must lie inside {root}")
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        # job parameters as a file on the host, never a command line (i5)
        atomic_write_json(os.path.join(work_dir, "jobs.json"), {"jobs": jobs})
    binding = binding_env(gpu_type, gpu_index)
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    state_dir = os.path.expanduser(state_dir)
    env_file = os.path.expanduser(env_file) if env_file else None
    results, fetch = [], []
    for job in jobs:
        res = run_one(job, log_dir, binding, env_file, start_stagger_seconds, state_dir, kill_grace_seconds)
        results.append(res)
        if res["status"] == "ok":
            for spec in job.get("outputs") or []:
                for src in (spec["path"], spec["path"] + ".meta.json"):
                    if os.path.exists(src):
                        fetch.append(pull_entry(src, res["id"], inline_max_bytes))
    return {"jobs": results, "fetch": fetch, "binding": binding}
