#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_job
short_description: Run worker jobs on one GPU slot of a host and validate their outputs
version_added: "0.1.0"
description:
  - Runs the jobs listed in a jobs file, one after the other, each as its own process
    group bound to exactly one GPU (C(CUDA_VISIBLE_DEVICES) on CUDA hosts,
    C(HIP_VISIBLE_DEVICES) and C(CUDA_VISIBLE_DEVICES) with the same index on ROCm hosts;
    C(ROCR_VISIBLE_DEVICES) is removed so no second mask can point elsewhere, incident i1).
  - Job parameters travel as a file (incident i5), never as a long command line.
    Each job gives an argument vector, never a shell string.
  - Sources the host's worker environment file first when it exists (ROCm variables).
  - A job that runs past its timeout has its whole process group killed (incident i16);
    so has a job still running when the module itself is told to stop.
  - A job counts as done only when every output file it names exists and the whole file
    parses with the expected record count and seeds (incidents i3, i4). Stdout is
    never taken as proof of success.
  - Concurrent starts on one host are spaced by O(start_stagger_seconds) through a lock
    file in O(state_dir), so parallel GPU initialisation cannot freeze a host (incident i9).
  - Used by the fan-out (P(prng.cluster.fanout#action)) for every dispatch; can be run by hand.
author:
  - PRNG cluster team
options:
  jobs:
    description:
      - The jobs, inline, as a list or as its JSON text (the fan-out sends JSON marked
        unsafe so that no job argument is ever templated). They travel inside the
        module's payload (over SFTP or the pipelined SSH stdin, never on a command line)
        and are written to C(jobs.json) in O(work_dir) before the first job starts. Same
        format as the list in O(jobs_file).
    type: raw
  work_dir:
    description:
      - Folder of this call on the host (jobs file, logs). Must lie inside O(dispatch_root).
        Needed with O(jobs); defaults to the folder of O(jobs_file).
    type: path
  dispatch_root:
    description: Root of all dispatch folders; O(work_dir) and O(remove) must lie inside it.
    type: path
    default: ~/prng-cluster/dispatch
  remove:
    description:
      - Folders of earlier dispatches whose outputs the controller already pulled; removed
        before the jobs start. Each must lie inside O(dispatch_root), else the module fails.
    type: list
    elements: path
    default: []
  jobs_file:
    description:
      - JSON file on the host, C({"jobs": [...]}). Each job has C(id), C(argv) (list of
        strings), optional C(cwd), C(env) (dict), C(timeout) (seconds) and C(outputs), a
        list of C({path, kind, records, seeds_sha256, seed_key}) where C(kind) is one of
        C(exists), C(json), C(json_list), C(npz).
      - A leading C(~) in an argument or output path is the host user's home.
      - One of O(jobs) and O(jobs_file) is required.
    type: path
  gpu_type:
    description: GPU vendor of the host; decides which variables bind the GPU.
    type: str
    choices: [cuda, rocm, cpu]
    default: cpu
  gpu_index:
    description:
      - Index of the one GPU this slot binds. Omitted on CPU hosts, where no GPU is made
        visible (the variables are set to an empty string).
    type: int
  env_file:
    description:
      - Shell file of C(export NAME=value) lines sourced before each worker starts, when
        it exists. Missing file means no extra environment.
    type: path
  start_stagger_seconds:
    description: Least time between two worker starts on this host (all slots together).
    type: float
    default: 0
  state_dir:
    description: Host folder for the start-stagger lock file.
    type: path
    default: ~/prng-cluster/run
  kill_grace_seconds:
    description: Seconds between SIGTERM and SIGKILL when a job's process group is killed.
    type: float
    default: 5
attributes:
  check_mode:
    support: none
    description: It runs jobs; in check mode Ansible skips it.
  diff_mode:
    support: none
notes:
  - Exit status 137 or death by SIGKILL is reported as RV(jobs[].status=oom), so the
    fan-out can split the job and retry it smaller (incident i10).
"""

EXAMPLES = r"""
- name: Run one job inline on GPU 1 of a CUDA host
  prng.cluster.gpu_job:
    jobs:
      - id: trial_01
        argv: [python3, trial.py, --out, /tmp/prng/trial_01.json]
        outputs: [{path: /tmp/prng/trial_01.json, kind: json}]
        timeout: 600
    work_dir: ~/prng-cluster/dispatch/manual-01
    gpu_type: cuda
    gpu_index: 1

- name: Run one scoring chunk on GPU 3 of a ROCm host
  prng.cluster.gpu_job:
    jobs_file: ~/prng-cluster/dispatch/d0007/jobs.json
    gpu_type: rocm
    gpu_index: 3
    env_file: ~/prng-cluster/worker.env
    start_stagger_seconds: 1.0
  register: dispatch

- name: Show the status of every job
  ansible.builtin.debug:
    msg: "{{ dispatch.jobs | map(attribute='status') | list }}"
"""

RETURN = r"""
jobs:
  description: One entry per job, in the order of the jobs file.
  returned: always
  type: list
  elements: dict
  sample:
    - id: c0001
      status: ok
      rc: 0
      reason: ""
      duration_s: 4.2
      started: 1764150000.1
      summary: {"records": 1000, "device": "cpu", "visible_devices": "3"}
      outputs: [{"path": "/home/prng/prng-cluster/dispatch/d0007/out/c0001.json", "bytes": 123456, "records": 1000}]
      stderr_tail: ""
      binding: {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
fetch:
  description: Output files of the jobs that validated, for the fan-out to pull.
  returned: always
  type: list
  elements: dict
  sample: [{"src": "/home/prng/prng-cluster/dispatch/d0007/out/c0001.json", "job_id": "c0001"}]
binding:
  description: The GPU variables every job of this call started with.
  returned: always
  type: dict
  sample: {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.prng.cluster.plugins.module_utils.job_validate import (
    OutputInvalid,
    validate_output,
)

# Sources the env file, then execs the worker argv given as arguments: no shell string
# is ever built from data.
SOURCE_AND_EXEC = 'set -a; . "$1"; set +a; shift; exec "$@"'
_current: Dict[str, Any] = {}


def binding_env(gpu_type: str, gpu_index: Optional[int]) -> Dict[str, str]:
    """The variables that make exactly one GPU visible (none on CPU hosts)."""
    value = "" if gpu_index is None else str(int(gpu_index))
    if gpu_type == "cuda":
        return {"CUDA_VISIBLE_DEVICES": value}
    # HIP reads both; giving both the same index leaves no second mask to disagree (i1).
    return {"HIP_VISIBLE_DEVICES": value, "CUDA_VISIBLE_DEVICES": value}


def kill_group(proc: "subprocess.Popen[bytes]", grace: float) -> None:
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
        fh.write("%.6f" % time.time())
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


def _summary(stdout_path: str) -> Optional[Dict[str, Any]]:
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


def run_one(job: Dict[str, Any], log_dir: str, binding: Dict[str, str], env_file: Optional[str],
            stagger_s: float, state_dir: str, grace: float) -> Dict[str, Any]:
    job_id = str(job["id"])
    # The controller cannot know each host's home: a leading ~ is the host's.
    argv = [os.path.expanduser(str(a)) if str(a).startswith("~") else str(a) for a in job["argv"]]
    for spec in job.get("outputs") or []:
        spec["path"] = os.path.expanduser(spec["path"])
    result: Dict[str, Any] = {"id": job_id, "status": "failed", "rc": None, "reason": "",
                              "outputs": [], "summary": None, "binding": binding}
    env = dict(os.environ)
    env.pop("ROCR_VISIBLE_DEVICES", None)
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    env.update(binding)
    if env_file and os.path.isfile(env_file):
        # The env file might set its own GPU masks: re-apply the binding after it.
        pinned = ["%s=%s" % kv for kv in sorted(binding.items())]
        argv = ["/bin/sh", "-c", SOURCE_AND_EXEC, "prng-job", env_file,
                "env", "-u", "ROCR_VISIBLE_DEVICES"] + pinned + argv
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
            proc = subprocess.Popen(argv, cwd=job.get("cwd") or None, env=env, stdout=out_fh,
                                    stderr=err_fh, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            result.update(status="error", reason="cannot start %s: %s" % (argv[0], exc),
                          duration_s=0.0)
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
        result.update(status="timeout", reason="ran past its %ss timeout; process group killed" % timeout)
    elif rc in (137, -signal.SIGKILL):
        result.update(status="oom", reason="killed (exit %s): out of memory or SIGKILL" % rc)
    elif rc != 0:
        last = result["stderr_tail"].strip().splitlines()
        result.update(status="failed", reason="exit %s: %s" % (rc, last[-1][:300] if last else ""))
    else:
        try:
            result["outputs"] = [validate_output(spec) for spec in job.get("outputs") or []]
            result["status"] = "ok"
        except OutputInvalid as exc:
            result.update(status="invalid", reason=str(exc))
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            jobs=dict(type="raw"),
            work_dir=dict(type="path"),
            dispatch_root=dict(type="path", default="~/prng-cluster/dispatch"),
            remove=dict(type="list", elements="path", default=[]),
            jobs_file=dict(type="path"),
            gpu_type=dict(type="str", default="cpu", choices=["cuda", "rocm", "cpu"]),
            gpu_index=dict(type="int"),
            env_file=dict(type="path"),
            start_stagger_seconds=dict(type="float", default=0.0),
            state_dir=dict(type="path", default="~/prng-cluster/run"),
            kill_grace_seconds=dict(type="float", default=5.0),
        ),
        supports_check_mode=False,
        required_one_of=[("jobs", "jobs_file")],
        mutually_exclusive=[("jobs", "jobs_file")],
    )
    p = module.params
    root = os.path.realpath(p["dispatch_root"])
    for path in p["remove"]:
        if not inside(root, path):
            module.fail_json(msg="refusing to remove %s: not inside %s" % (path, root))
    for path in p["remove"]:
        shutil.rmtree(path, ignore_errors=True)
    if p["jobs"] is not None:
        jobs: List[Dict[str, Any]] = p["jobs"]
        if isinstance(jobs, str):
            try:
                jobs = json.loads(jobs)
            except ValueError as exc:
                module.fail_json(msg="jobs is not valid JSON: %s" % exc)
        if not isinstance(jobs, list) or not all(isinstance(j, dict) and "id" in j and "argv" in j for j in jobs):
            module.fail_json(msg="jobs must be a list of {id, argv, ...} objects")
        if not jobs:  # only the removals were asked for
            module.exit_json(changed=bool(p["remove"]), jobs=[], fetch=[], binding={})
        work_dir = p["work_dir"]
        if not work_dir or not inside(root, work_dir):
            module.fail_json(msg="work_dir %s must lie inside %s" % (work_dir, root))
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        jobs_file = os.path.join(work_dir, "jobs.json")
        with open(jobs_file + ".tmp", "w") as fh:
            json.dump({"jobs": jobs}, fh, indent=1)
        os.replace(jobs_file + ".tmp", jobs_file)
    else:
        jobs_file = p["jobs_file"]
        work_dir = os.path.dirname(jobs_file)
        try:
            with open(jobs_file, "rb") as fh:
                jobs = json.load(fh)["jobs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            module.fail_json(msg="cannot read jobs file %s: %s" % (jobs_file, exc))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    binding = binding_env(p["gpu_type"], p["gpu_index"])
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    results = []
    fetch = []
    for job in jobs:
        res = run_one(job, log_dir, binding, p["env_file"], p["start_stagger_seconds"],
                      p["state_dir"], p["kill_grace_seconds"])
        results.append(res)
        if res["status"] == "ok":
            for spec in job.get("outputs") or []:
                fetch.append({"src": spec["path"], "job_id": res["id"]})
                if os.path.exists(spec["path"] + ".meta.json"):
                    fetch.append({"src": spec["path"] + ".meta.json", "job_id": res["id"]})
    module.exit_json(changed=True, jobs=results, fetch=fetch, binding=binding)


if __name__ == "__main__":
    main()
