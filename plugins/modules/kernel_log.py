#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_log
short_description: OOM kills and GPU driver errors in a host's kernel log
version_added: "0.1.0"
description:
  - Reads the kernel log of the current boot (C(dmesg), else C(journalctl -k -b)) and
    reports OOM-killer kills (with pid and process name), amdgpu / KFD errors (ring
    timeouts, SMU not answering, GPU resets, failed GFXOFF changes) and NVIDIA Xid errors.
  - RV(gpu_events) lists the lines that make a GPU unusable (amdgpu ring timeout, GPU
    reset, SMU not answering; an NVIDIA Xid other than the application errors 13, 31, 43,
    45; a GPU fallen off the bus), each with the PCI address of its GPU. M(prng.cluster.gpu_facts)
    uses them to mark GPUs unusable.
  - O(since) keeps only what was logged after a time, for example after a GPU was reset
    by hand, instead of everything since boot.
  - When no source is readable (for example C(kernel.dmesg_restrict=1) without root), the
    module succeeds with RV(readable=false) and says why, instead of failing.
author:
  - PRNG cluster team (@prng-cluster)
options:
  sources:
    description: Log sources to try, in order.
    type: list
    elements: str
    choices: [dmesg, journalctl]
    default: [dmesg, journalctl]
  log_file:
    description: Read this file (a saved kernel log) instead of the live sources.
    type: path
  max_lines:
    description: Most recent matching lines kept per kind.
    type: int
    default: 20
  timeout:
    description: Seconds a source may take.
    type: float
    default: 30
  since:
    description:
      - Only lines logged after this time. Empty means since boot. V(@1718000000) (epoch
        seconds), an age such as V(6h), V(90m), V(2d), or a local time V(2024-06-10 14:00).
      - dmesg lines are compared through their seconds-since-boot stamp and the boot time
        (C(btime) in O(proc_root)/stat); C(journalctl) is asked with C(--since).
    type: str
    default: ""
  proc_root:
    description: Mount point of procfs (C(stat) gives the boot time for O(since)).
    type: path
    default: /proc
extends_documentation_fragment:
  - prng.cluster.read_only
"""

EXAMPLES = r"""
- name: OOM kills and amdgpu errors since boot
  prng.cluster.kernel_log:
  register: klog

- name: Only what happened in the last 6 hours (after the GPU was reset by hand)
  prng.cluster.kernel_log:
    since: 6h

# Ad hoc: ansible rig-6600 -b -m prng.cluster.kernel_log
"""

RETURN = r"""
readable:
  description: Whether a source could be read.
  returned: always
  type: bool
  sample: true
source:
  description: The source read (V(dmesg), V(journalctl), V(file)), null when none.
  returned: always
  type: str
  sample: dmesg
errors:
  description: Why sources could not be read.
  returned: always
  type: list
  elements: str
  sample: ["dmesg: dmesg: read kernel buffer failed: Operation not permitted"]
oom_kills:
  description: The most recent OOM kills.
  returned: always
  type: list
  elements: dict
  sample: [{"pid": 41877, "process": "python3",
            "line": "[38211.446421] Out of memory: Killed process 41877 (python3) ..."}]
oom_kill_count:
  description: OOM kills in the log.
  returned: always
  type: int
  sample: 3
oom_invocations:
  description: Times the OOM killer was invoked.
  returned: always
  type: int
  sample: 3
amdgpu_errors:
  description: The most recent amdgpu / KFD error lines.
  returned: always
  type: list
  elements: str
  sample: ["[40132.358210] [drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout,
            signaled seq=1194821, emitted seq=1194823"]
amdgpu_error_count:
  description: amdgpu / KFD error lines in the log.
  returned: always
  type: int
  sample: 4
nvidia_xid:
  description: NVIDIA Xid errors (PCI address, Xid number, line).
  returned: always
  type: list
  elements: dict
  sample: [{"pci": "0000:65:00", "xid": 79,
            "line": "NVRM: Xid (PCI:0000:65:00): 79, pid=2231, GPU has fallen off the bus."}]
nvidia_xid_count:
  description: Xid lines in the log.
  returned: always
  type: int
  sample: 1
gpu_events:
  description:
    - Lines that make a GPU unusable, oldest first. C(pci) is the GPU's address
      (V(dddd:bb:dd)), taken from the line or from the nearest driver line of the same
      burst, null when the log does not say. C(excludes) is false for NVIDIA Xids caused by
      the application (13, 31, 43, 45).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "amdgpu ring timeout", "pci": "0000:0b:00", "time": "2024-06-10T13:02:11Z",
            "line": "[40132.358210] [drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout",
            "excludes": true}]
since:
  description: The O(since) time as UTC, null for since boot.
  returned: always
  type: str
  sample: "2024-06-10T08:00:00Z"
lines_before_since:
  description: dmesg lines skipped because they were logged before O(since).
  returned: always
  type: int
  sample: 1532
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.kernel_log import kernel_log_result  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            sources=dict(
                type="list", elements="str", choices=["dmesg", "journalctl"], default=["dmesg", "journalctl"]
            ),
            log_file=dict(type="path"),
            max_lines=dict(type="int", default=20),
            timeout=dict(type="float", default=30.0),
            since=dict(type="str", default=""),
            proc_root=dict(type="path", default="/proc"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_lines"] < 1:
        module.fail_json(msg="max_lines must be >= 1, got {}".format(p["max_lines"]))
    try:
        result = kernel_log_result(
            p["sources"], p["log_file"], p["timeout"], p["since"], p["proc_root"], p["max_lines"]
        )
    except ValueError as exc:
        module.fail_json(msg=f"since: {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
