#!/usr/bin/python
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
  - Runs a batch the way the fan-out's host agent does (M(prng.cluster.fanout), same code in
    C(module_utils/job_runner.py), same option names); for running jobs by hand.
author:
  - PRNG cluster team (@prng-cluster)
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
      - JSON file on the host holding an object whose C(jobs) key lists the jobs. Each
        job has C(id), C(argv) (list of strings), optional C(cwd), C(env) (dict),
        C(timeout) (seconds) and C(outputs), a list of C({path, kind, records,
        seeds_sha256, seed_range, seed_key}) where C(kind) is one of C(exists), C(json),
        C(json_list), C(npz).
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
  inline_max_bytes:
    description:
      - Output files up to this size come back inside the result (base64 in
        RV(fetch[].content)), saving the fan-out one transfer per file; larger ones are
        pulled with a file transfer. V(0) never inlines.
    type: int
    default: 0
attributes:
  check_mode:
    support: none
    description: It runs jobs; in check mode Ansible skips it.
  diff_mode:
    support: none
    description: Nothing to compare; jobs write new files.
notes:
  - Exit status 137 or death by SIGKILL is reported as V(oom) in the job's RV(jobs) status, so the
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
      outputs: [{"path": "/home/prng/prng-cluster/dispatch/r1/d7/out/c0001/c0001.json", "bytes": 12345}]
      stderr_tail: ""
      binding: {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
fetch:
  description: Output files of the jobs that validated, for the fan-out to pull.
  returned: always
  type: list
  elements: dict
  sample: [{"src": "/home/prng/prng-cluster/dispatch/r1/d7/out/c0001/c0001.json", "job_id": "c0001"}]
  contains:
    src:
      description: Path of the output on the host.
      type: str
    job_id:
      description: The job it belongs to.
      type: str
    content:
      description: The file's bytes, base64, when not larger than O(inline_max_bytes).
      type: str
      returned: when inlined
binding:
  description: The GPU variables every job of this call started with.
  returned: always
  type: dict
  sample: {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
"""

import json  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.defaults import (  # noqa: E402
    PRNG_DISPATCH_ROOT,
    PRNG_STATE_DIR,
)
from ansible_collections.prng.cluster.plugins.module_utils.job_runner import (  # noqa: E402
    BatchError,
    parse_jobs,
    remove_inside,
    run_batch,
    stop_on_signals,
)

# The options that decide how a batch runs: the same names in the fan-out's batches.
RUN_OPTIONS = (
    "gpu_type",
    "gpu_index",
    "env_file",
    "start_stagger_seconds",
    "state_dir",
    "kill_grace_seconds",
    "inline_max_bytes",
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            jobs=dict(type="raw"),
            work_dir=dict(type="path"),
            dispatch_root=dict(type="path", default=PRNG_DISPATCH_ROOT),
            remove=dict(type="list", elements="path", default=[]),
            jobs_file=dict(type="path"),
            gpu_type=dict(type="str", default="cpu", choices=["cuda", "rocm", "cpu"]),
            gpu_index=dict(type="int"),
            env_file=dict(type="path"),
            start_stagger_seconds=dict(type="float", default=0.0),
            state_dir=dict(type="path", default=PRNG_STATE_DIR),
            kill_grace_seconds=dict(type="float", default=5.0),
            inline_max_bytes=dict(type="int", default=0),
        ),
        supports_check_mode=False,
        required_one_of=[("jobs", "jobs_file")],
        mutually_exclusive=[("jobs", "jobs_file")],
    )
    p = module.params
    try:
        remove_inside(p["dispatch_root"], p["remove"])
        if p["jobs"] is not None:
            jobs = parse_jobs(p["jobs"])
            if not jobs:  # only the removals were asked for
                module.exit_json(changed=bool(p["remove"]), jobs=[], fetch=[], binding={})
            work_dir, root = p["work_dir"] or "", p["dispatch_root"]
        else:
            try:
                with open(p["jobs_file"], "rb") as fh:
                    jobs = parse_jobs(json.load(fh)["jobs"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                module.fail_json(msg=f"cannot read jobs file {p['jobs_file']}: {exc}")
            work_dir, root = os.path.dirname(p["jobs_file"]), None
        stop_on_signals()
        result = run_batch(jobs, work_dir, root, **{k: p[k] for k in RUN_OPTIONS})
    except BatchError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
