#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fanout
short_description: Run a step's jobs across the GPU slots of many hosts, exactly once each
version_added: "0.1.0"
description:
  - Runs on the controller. Plans the jobs of a step (Step 3 scoring chunks, Step 1 seed
    ranges, or any jobs file), gives every host min(GPU count, C(max_concurrent_jobs),
    workers that fit its memory) slots, slot i bound to GPU i, and lets free slots pull
    work. One ansible-runner play serves every host for the whole step - one
    M(prng.cluster.fanout_host) task and one SSH session per host, whatever its slot
    count - and the host's agent runs the batches of all its slots at once, each job bound
    to its slot's GPU as M(prng.cluster.gpu_job) does, so the controller's cost is paid per
    host, not per slot or per batch. A batch carries as much work as the host's measured
    throughput (moving average) does in C(target_dispatch_seconds), less near the end so
    no slot idles while others finish.
  - A job is done only when its output validated on the host and again after the pull
    to the controller. Failed jobs retry with backoff on another host when one exists; an
    unreachable host's jobs are requeued and the host retried later; a job killed for
    memory (exit 137) is split in half.
  - Before any job starts, the run contract is checked on the controller - every parameter
    typed and range-checked, every input's content (survivors, histories, family) through
    the worker package's own checks, every host's variables against the
    C(prng.cluster.cluster_host) role's argument spec. Bad input fails the task with one
    line naming the file, host or variable; nothing is started and nothing already done is
    touched.
  - Only hosts that passed the step's preflight (O(require_preflight)) get slots; the
    others are listed in RV(left_out) with the reason.
  - Every state change goes to a journal under O(run_dir) first. Running it again with
    the same O(run_dir) resumes without redoing finished jobs; it refuses, naming what
    changed, when the run's identity differs (inputs' content, the parameters that change
    results, the worker code), and runs again any finished job whose output no longer has
    the size and SHA-256 that were validated.
  - A job whose worker reports bad input (exit 2) is not retried; the run stops with that
    message in RV(stopped).
  - Writes C(progress.json) while running and C(fanout_manifest.json) at the end, also
    when jobs failed; the task itself fails only on bad arguments, so a playbook can
    aggregate what finished (incident i15) and decide from RV(complete).
author:
  - PRNG cluster team (@prng-cluster)
options:
  plan:
    description: Which planner makes the jobs.
    type: str
    choices: [score, sieve, list]
    required: true
  params:
    description:
      - Planner parameters. C(score) needs C(survivors), C(train_history), C(family),
        C(chunk_size); optional C(holdout_history), C(mod), C(memory_model), C(timeout).
        C(sieve) needs C(history), C(family), C(seed_start), C(seed_stop), C(chunk_size).
        C(list) needs C(jobs_file).
    type: dict
    required: true
  run_dir:
    description: Controller folder of this run (journal, outputs, progress, manifest).
    type: path
    required: true
  hosts:
    description: Hosts whose slots run the jobs; their inventory variables give GPU type,
      count, limits, paths and C(prng_memory_available_mb) (from M(prng.cluster.memory_facts)).
    type: list
    elements: str
    required: true
  input_dir:
    description: Folder on every host holding the inputs (the step's ramdisk copy). A host
      variable C(fanout_input_dir) overrides it per host.
    type: str
    default: ""
  fresh_run:
    description: Start afresh even if O(run_dir) holds a run; the old folder is renamed aside.
    type: bool
    default: false
  validate_only:
    description: Check the run contract and return it (RV(files), RV(params), RV(identity),
      RV(resume)) without running anything; check mode does the same.
    type: bool
    default: false
  require_preflight:
    description:
      - Name of the step whose preflight each host must have passed. A host gets slots only
        when its C(prng_preflight) fact says C(ok) for this step and names the folder
        holding the step's verified inputs (C(input_dir)) and the files there (C(files));
        its C(lease), the run's ramdisk lease file, is renewed by the host's agent while the
        fan-out runs. Empty - no preflight required (C(fanout_input_dir) or O(input_dir) give the folder).
    type: str
    default: ""
  settings:
    description:
      - Scheduler knobs, e.g. C(target_dispatch_seconds) (60), C(max_attempts) (3),
        C(retry_backoff_seconds) (2), C(host_retry_seconds) (10), C(max_host_failures) (3),
        C(max_requeues) (6), C(max_jobs_per_dispatch) (64), C(ema_alpha) (0.3),
        C(fair_share_fraction) (0.5, the part of a slot's fair share of the work left that
        one batch takes), C(progress_interval) (5), C(poll_seconds) (0.2).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: In check mode it checks the run contract and returns the plan, running nothing.
  diff_mode:
    support: none
    description: Nothing to compare; the run writes new files.
"""

EXAMPLES = r"""
- name: Score the survivors on every GPU of the cluster
  prng.cluster.fanout:
    plan: score
    params:
      survivors: /data/bidirectional_survivors.npz
      train_history: /data/train_history.json
      holdout_history: /data/holdout_history.json
      family: java_lcg
      chunk_size: 1000
    hosts: "{{ groups['gpu_nodes'] }}"
    input_dir: /dev/shm/prng/step3
    run_dir: "{{ playbook_dir }}/../runs/step3"
  run_once: true
  delegate_to: localhost
  register: fan
"""

RETURN = r"""
complete:
  description: Every job done.
  returned: when jobs ran
  type: bool
  sample: true
jobs:
  description: Job counts by final state.
  returned: when jobs ran
  type: dict
  sample: {"expected": 6, "completed": 6, "failed": 0, "split": 0}
outputs:
  description: Validated output files on the controller, in job order.
  returned: when jobs ran
  type: list
  elements: str
  sample: ["/work/runs/step3/outputs/c0000/c0000.json"]
manifest:
  description: Path of the run manifest.
  returned: when jobs ran
  type: str
  sample: /work/runs/step3/fanout_manifest.json
resumed:
  description: Whether an earlier run in O(run_dir) was resumed.
  returned: when jobs ran
  type: bool
  sample: false
stopped:
  description: Why the run stopped early (a worker's input error, not retried), or null.
  returned: when jobs ran
  type: str
  sample: "job c0003: input error on node2: error: train history ..."
left_out:
  description: Hosts that got no slots, with the reason (failed or missed the preflight).
  returned: when jobs ran
  type: dict
  sample: {"node3": "failed the step3 preflight: ramdisk preload refused ..."}
files:
  description: The controller paths of the step's input files (an NPZ with its sidecar), for the preload.
  returned: with O(validate_only) or in check mode
  type: list
  elements: str
params:
  description: The checked parameters, typed and with defaults.
  returned: with O(validate_only) or in check mode
  type: dict
identity:
  description: What the results depend on (plan, parameters, inputs' SHA-256, worker code).
  returned: with O(validate_only) or in check mode
  type: dict
resume:
  description: Run id that the same command would resume, or null for a new run.
  returned: with O(validate_only) or in check mode
  type: str
lease_id:
  description:
    - The name of this run's ramdisk lease (the ramdisk role's C(ramdisk_run_id)), the same for
      a resume of the run (same identity, same run folder). The step playbooks' preload takes
      it on every host, the fan-out's agent renews it while the step runs, the end of the step
      gives it back.
  returned: with O(validate_only) or in check mode
  type: str
  sample: score-3f9a0c2b7d1e4a56
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    """The work happens on the controller (plugins/action/fanout.py); this file documents
    it and fails if it is ever run on a host."""
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="str", required=True, choices=["score", "sieve", "list"]),
            params=dict(type="dict", required=True),
            run_dir=dict(type="path", required=True),
            hosts=dict(type="list", elements="str", required=True),
            input_dir=dict(type="str", default=""),
            fresh_run=dict(type="bool", default=False),
            validate_only=dict(type="bool", default=False),
            require_preflight=dict(type="str", default=""),
            settings=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    module.fail_json(msg="prng.cluster.fanout runs as an action on the controller only")


if __name__ == "__main__":
    main()
