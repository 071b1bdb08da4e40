#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: memory_facts
short_description: Real memory limit, use and /dev/shm state of a host, and how many workers fit
version_added: "0.1.0"
description:
  - Reads the memory limit that really applies to processes on the host, in this order
    the cgroup v2 limit (the smallest C(memory.max) from the process's cgroup up to the
    root), then the cgroup v1 limit (C(memory.limit_in_bytes)), then C(/proc/meminfo).
    C(free -h) shows the host's memory inside a container, not its limit.
  - Reports used and available memory under that limit, the size and use of the
    C(/dev/shm) tmpfs read from the real mount, and, given the measured peak size of one
    worker, how many workers fit with a safety margin.
  - Read-only. Every root path is an option so tests can point the module at fixture trees.
author:
  - PRNG cluster team (@prng-cluster)
options:
  worker_mb:
    description:
      - Measured peak memory of one worker in MiB (from the memory model). When set,
        O(worker_mb) and O(margin_pct) give RV(workers_fit).
    type: float
  margin_pct:
    description:
      - Share of the available memory kept free as a safety margin, in percent.
    type: float
    default: 20
  cgroup_root:
    description: Mount point of the cgroup tree (v2 unified, or the v1 hierarchies below it).
    type: path
    default: /sys/fs/cgroup
  proc_root:
    description: Mount point of procfs (C(meminfo) and C(self/cgroup) are read below it).
    type: path
    default: /proc
  shm_path:
    description: The tmpfs whose size and use are reported.
    type: path
    default: /dev/shm
extends_documentation_fragment:
  - prng.cluster.read_only
  - prng.cluster.read_only.facts
notes:
  - Pages written to C(/dev/shm) are charged to the memory cgroup of the writer, so ramdisk
    copies reduce RV(available_mb) too.
"""

EXAMPLES = r"""
- name: Read the real memory limit of every host
  prng.cluster.memory_facts:
  register: mem

- name: How many 900 MiB workers fit, keeping 20 % free
  prng.cluster.memory_facts:
    worker_mb: 900
    margin_pct: 20
  register: mem

- name: Use the answer
  ansible.builtin.debug:
    msg: "{{ mem.workers_fit }} workers fit in {{ mem.available_mb }} MiB ({{ mem.limit_source }})"

# Ad hoc: ansible rig-6600 -m prng.cluster.memory_facts -a worker_mb=900
"""

RETURN = r"""
limit_bytes:
  description: The memory limit that applies (cgroup limit if lower than the host's RAM).
  returned: always
  type: int
  sample: 8268038144
limit_mb:
  description: RV(limit_bytes) in MiB.
  returned: always
  type: int
  sample: 7885
limit_source:
  description: Where the limit came from, V(cgroup_v2), V(cgroup_v1) or V(meminfo).
  returned: always
  type: str
  sample: cgroup_v2
cgroup_version:
  description: cgroup version whose memory controller was found (0 when none).
  returned: always
  type: int
  sample: 2
cgroup_limit_dir:
  description: The cgroup directory whose limit is the effective one, if limited.
  returned: always
  type: str
  sample: /sys/fs/cgroup/system.slice/prng.scope
host_total_bytes:
  description: MemTotal of the host (what C(free) shows).
  returned: always
  type: int
  sample: 8268038144
host_total_mb:
  description: RV(host_total_bytes) in MiB.
  returned: always
  type: int
  sample: 7885
host_available_bytes:
  description: MemAvailable of the host.
  returned: always
  type: int
  sample: 5138022400
used_bytes:
  description: Memory in use under the limit, less reclaimable page cache.
  returned: always
  type: int
  sample: 3130015744
used_mb:
  description: RV(used_bytes) in MiB.
  returned: always
  type: int
  sample: 2985
available_bytes:
  description: Memory still available under the limit (never more than MemAvailable).
  returned: always
  type: int
  sample: 5138022400
available_mb:
  description: RV(available_bytes) in MiB.
  returned: always
  type: int
  sample: 4900
used_pct:
  description: Used share of the limit in percent.
  returned: always
  type: float
  sample: 37.9
shm:
  description: Size and use of the O(shm_path) tmpfs (C(present=false) and C(error) if missing).
  returned: always
  type: dict
  sample: {"path": "/dev/shm", "present": true, "size_bytes": 4134019072, "used_bytes": 36864,
           "free_bytes": 4133982208, "used_percent": 0.0, "size_mb": 3942, "used_mb": 0, "free_mb": 3942}
worker_mb:
  description: The O(worker_mb) asked for (null when not given).
  returned: always
  type: float
  sample: 900.0
margin_pct:
  description: The safety margin used.
  returned: always
  type: float
  sample: 20.0
workers_fit:
  description:
    - Workers of O(worker_mb) that fit in the memory available now, less O(margin_pct).
      Null without O(worker_mb).
  returned: always
  type: int
  sample: 4
workers_fit_limit:
  description:
    - Workers of O(worker_mb) that fit in the whole limit less O(margin_pct) (an idle
      host). Null without O(worker_mb).
  returned: always
  type: int
  sample: 7
ansible_facts:
  description: The same result as the fact C(prng_memory).
  returned: always
  type: dict
  contains:
    prng_memory:
      description: Every key above.
      type: dict
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.memory import memory_facts, workers_fit  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            worker_mb=dict(type="float"),
            margin_pct=dict(type="float", default=20.0),
            cgroup_root=dict(type="path", default="/sys/fs/cgroup"),
            proc_root=dict(type="path", default="/proc"),
            shm_path=dict(type="path", default="/dev/shm"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["worker_mb"] is not None and p["worker_mb"] <= 0:
        module.fail_json(msg="worker_mb must be > 0, got {}".format(p["worker_mb"]))
    if not 0 <= p["margin_pct"] < 100:
        module.fail_json(msg="margin_pct must be in [0, 100), got {}".format(p["margin_pct"]))
    try:
        facts = memory_facts(p["cgroup_root"], p["proc_root"], p["shm_path"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot read memory state: {exc}")
    facts["worker_mb"] = p["worker_mb"]
    facts["margin_pct"] = p["margin_pct"]
    if p["worker_mb"] is None:
        facts["workers_fit"] = None
        facts["workers_fit_limit"] = None
    else:
        facts["workers_fit"] = workers_fit(int(facts["available_bytes"]), p["worker_mb"], p["margin_pct"])
        facts["workers_fit_limit"] = workers_fit(int(facts["limit_bytes"]), p["worker_mb"], p["margin_pct"])
    module.exit_json(changed=False, ansible_facts={"prng_memory": facts}, **facts)


if __name__ == "__main__":
    main()
