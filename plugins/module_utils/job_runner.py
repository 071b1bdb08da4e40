# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Running one job on a host for prng.cluster.gpu_job: GPU binding, the worker env file,
its own process group with a timeout that kills the whole group (i16), the start stagger
lock (i9), and the output validation (i3/i4). Standard library only."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from typing import Any, Dict

from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (
    OutputInvalid,
    validate_output,
)

# Sources the env file, then execs the worker argv given as arguments: no shell string
# is ever built from data.
SOURCE_AND_EXEC = 'set -a; . "$1"; set +a; shift; exec "$@"'
_current: Dict[str, Any] = {}


def binding_env(gpu_type: str, gpu_index: int | None) -> Dict[str, str]:
    """The variables that make exactly one GPU visible (none on CPU hosts)."""
    value = "" if gpu_index is None else str(int(gpu_index))
    if gpu_type == "cuda":
        return {"CUDA_VISIBLE_DEVICES": value}
    # HIP reads both; giving both the same index leaves no second mask to disagree (i1).
    return {"HIP_VISIBLE_DEVICES": value, "CUDA_VISIBLE_DEVICES": value}


def kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the job's process group, then SIGKILL whatever is left (i16)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _on_signal(signum: int, frame: Any) -> None:
    proc = _current.get("proc")
    if proc is not None and proc.poll() is None:
        kill_group(proc, 1.0)
    os._exit(128 + signum)


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
        _current["proc"] = proc
        try:
            rc = proc.wait(timeout=float(timeout) if timeout else None)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc, grace)
            rc = proc.returncode
            timed_out = True
        finally:
            _current.pop("proc", None)
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
