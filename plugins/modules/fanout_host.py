#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fanout_host
short_description: One host's session of a fan-out (internal)
version_added: "0.1.0"
description:
  - Internal to M(prng.cluster.fanout), which runs this task once per host (one
    ansible-runner play for all hosts of a step). The task connects to the fan-out's local
    socket and, on the first batch, starts the host's agent over ONE SSH session built from
    the host's own connection settings (user, key, port, ssh args, ControlPersist socket).
    The agent runs the batches of all the host's slots at once, each job its own process
    group bound to its slot's GPU (the same code as M(prng.cluster.gpu_job)); the task pulls
    each batch's outputs (inline in the result when small, else with a file transfer) and
    reports back, until it is told to stop.
  - The controller's cost is one forked worker and one SSH session per host, whatever the
    host's slot count; a host with 24 slots stays within a stock sshd's C(MaxSessions 10).
  - The agent's code travels over the session (nothing is installed on the host). It runs
    with the host's C(ansible_python_interpreter), or the worker venv's Python when that is
    not set or C(auto). When the session ends (the controller stopped, the link went away)
    the agent kills every job it started. Works over the C(ssh) and C(local) connections.
options:
  socket:
    description: Path of the fan-out's Unix socket on the controller.
    type: path
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
# Not for playbooks: the fan-out writes this task into its runner play, one per host.
- name: Serve this host's slots
  prng.cluster.fanout_host:
    socket: /tmp/fanout-abc/s
"""

RETURN = r"""
batches:
  description: Batches this host ran.
  returned: always
  type: int
  sample: 7
agents:
  description: Agents started on the host (more than one when its link was lost and it rejoined).
  returned: success
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    """The work happens on the controller (plugins/action/fanout_host.py); this file documents
    it and fails if it is ever run on a host."""
    module = AnsibleModule(argument_spec=dict(socket=dict(type="path", required=True)))
    module.fail_json(msg="prng.cluster.fanout_host runs as an action on the controller only")


if __name__ == "__main__":
    main()
