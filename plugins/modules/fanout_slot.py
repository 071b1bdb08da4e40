#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fanout_slot
short_description: One GPU slot's session of a fan-out (internal)
version_added: "0.1.0"
description:
  - Internal to M(prng.cluster.fanout), which runs this task once per GPU slot (one
    ansible-runner run for all slots, each task delegated to the slot's host). The task
    connects to the fan-out's local socket and, until told to stop, takes a batch of
    jobs, runs it on its host with M(prng.cluster.gpu_job) bound to the slot's GPU, pulls
    the outputs that validated, and reports back.
  - One task serves many batches, so the fixed cost of starting ansible-playbook is paid
    once per step instead of once per batch.
options:
  socket:
    description: Path of the fan-out's Unix socket on the controller.
    type: path
    required: true
  host:
    description: Inventory name of the host the slot belongs to (the task is delegated to it).
    type: str
  slot:
    description: Slot index on the host (the GPU index it binds).
    type: int
    required: true
  gpu_args:
    description: Host-level options of M(prng.cluster.gpu_job) (gpu_type, gpu_index, env_file...).
    type: dict
    required: true
attributes:
  check_mode:
    support: none
    description: Only started by the fan-out, which does not run in check mode.
  diff_mode:
    support: none
    description: Nothing to compare.
author:
  - PRNG cluster team (@prng-cluster)
"""

EXAMPLES = r"""
# Not for playbooks: the fan-out writes this task into each slot's runner play.
- name: Serve slot 0
  prng.cluster.fanout_slot:
    socket: /tmp/fanout-abc/s
    slot: 0
    gpu_args: {gpu_type: cuda, gpu_index: 0}
"""

RETURN = r"""
batches:
  description: Batches this session ran.
  returned: always
  type: int
  sample: 7
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    """The work happens on the controller (plugins/action/fanout_slot.py); this file documents
    it and fails if it is ever run on a host."""
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            host=dict(type="str"),
            slot=dict(type="int", required=True),
            gpu_args=dict(type="dict", required=True),
        ),
    )
    module.fail_json(msg="prng.cluster.fanout_slot runs as an action on the controller only")


if __name__ == "__main__":
    main()
