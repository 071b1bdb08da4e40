#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_diagnostics
short_description: The GPU host diagnostic battery - memory, GPU health, kernel log, ramdisk, HIP cache
version_added: "0.1.0"
description:
  - Runs on one host every check of the diagnostic battery and returns each finding with a
    severity (V(ok), V(info), V(warning), V(critical)) and the action to take.
  - C(memory) and C(memory_limit) - the real memory limit (cgroup v2, v1, then /proc/meminfo) and what is
    available, as M(prng.cluster.memory_facts). C(shm) - use of the C(/dev/shm) mount (warn/critical
    thresholds).
  - C(gpu_health), C(gpu_count), C(gpu_compute_mode), C(gpu_tool), C(gfxoff) - as M(prng.cluster.gpu_facts)
    (hung GPUs showing N/A / unknown, missing GPUs, EXCLUSIVE_PROCESS, GFXOFF on).
  - C(oom_kills), C(amdgpu_errors), C(nvidia_xid), C(kernel_log) - as M(prng.cluster.kernel_log); an
    unreadable log is an V(info) finding, not a failure.
  - C(gpu_usable) - which GPUs the fan-out gives jobs to, as M(prng.cluster.gpu_facts) decides it
    (tool flags, missing GPUs, kernel log errors since boot or O(since), O(gpu_exclude),
    O(gpu_health_policy)).
  - C(ramdisk) - the steps under the ramdisk root (through the ramdisk module's code), steps
    expected but not loaded, incomplete or damaged steps.
  - C(hip_cache) - size of the HIP kernel caches (C(~/.cache/hip_*)).
author:
  - PRNG cluster team (@prng-cluster)
options:
  min_available_mb:
    description: Available memory below this many MiB is an OOM-risk warning.
    type: float
    default: 4096
  shm_path:
    description: The tmpfs checked.
    type: path
    default: /dev/shm
  shm_warn_pct:
    description: Warn when the tmpfs is used above this percentage.
    type: float
    default: 50
  shm_crit_pct:
    description: Critical above this percentage (preloads are refused).
    type: float
    default: 80
  ramdisk_root:
    description: Root of the ramdisk copies.
    type: path
    default: /dev/shm/prng
  ramdisk_steps:
    description: Steps that should be loaded now (e.g. V(step3)); missing ones are warnings.
    type: list
    elements: str
    default: []
  hip_cache_root:
    description: Folder holding the HIP kernel caches.
    type: path
    default: ~/.cache
  hip_cache_patterns:
    description: Names (globs) of cache entries under O(hip_cache_root).
    type: list
    elements: str
    default: ["hip_*", "comgr*", "miopen"]
  hip_cache_warn_mb:
    description: Warn when the caches hold more than this many MiB.
    type: float
    default: 1024
  expected_gpus:
    description: GPUs the host should have (inventory C(gpu_count)).
    type: int
    default: 0
  gpu_type:
    description: The host's inventory C(gpu_type) (decides which GPU checks apply when no tool answers).
    type: str
    choices: [cuda, rocm, cpu]
  search_path:
    description: Folders searched for the GPU tools first.
    type: list
    elements: path
    default: []
  rocm_path:
    description: ROCm install root.
    type: path
    default: /opt/rocm
  sysfs_root:
    description: sysfs mount.
    type: path
    default: /sys
  proc_root:
    description: procfs mount.
    type: path
    default: /proc
  cgroup_root:
    description: cgroup mount.
    type: path
    default: /sys/fs/cgroup
  kernel_log_sources:
    description: Kernel log sources to try.
    type: list
    elements: str
    choices: [dmesg, journalctl]
    default: [dmesg, journalctl]
  kernel_log_file:
    description: Read this saved kernel log instead.
    type: path
  since:
    description:
      - Kernel log lines before this time are not counted (empty - since boot), as in
        M(prng.cluster.kernel_log).
    type: str
    default: ""
  gpu_exclude:
    description: GPU indexes the inventory leaves out (C(gpu_exclude)).
    type: list
    elements: int
    default: []
  gpu_health_policy:
    description: The inventory's C(gpu_health_policy) (V(ignore) gives flagged GPUs jobs anyway).
    type: str
    choices: [exclude, ignore]
    default: exclude
  timeout:
    description: Seconds one GPU tool or log source may take.
    type: float
    default: 30
extends_documentation_fragment:
  - prng.cluster.read_only
"""

EXAMPLES = r"""
- name: Diagnose a host
  prng.cluster.host_diagnostics:
    expected_gpus: "{{ gpu_count | default(0) }}"
    gpu_type: "{{ gpu_type | default('cpu') }}"
    ramdisk_steps: [step3]
  register: diag

# Ad hoc: ansible rig-6600 -b -m prng.cluster.host_diagnostics -a expected_gpus=12
"""

RETURN = r"""
findings:
  description: Every finding, worst first.
  returned: always
  type: list
  elements: dict
  sample: [{"check": "gpu_health", "severity": "critical",
            "message": "GPU 7 (0000:0B:00.0): performance level 'unknown': SMU not answering,
                        reboot the node or reseat the GPU",
            "action": "Reboot node or reseat GPU (SMU communication failure)"}]
worst:
  description: The worst severity found.
  returned: always
  type: str
  sample: critical
memory:
  description: The result of M(prng.cluster.memory_facts) (without the worker keys).
  returned: always
  type: dict
gpu:
  description: The result of M(prng.cluster.gpu_facts), with C(health) (usable, excluded, ignored, warnings).
  returned: always
  type: dict
kernel_log:
  description: The result of M(prng.cluster.kernel_log).
  returned: always
  type: dict
ramdisk:
  description: Steps under the ramdisk root, their state, and how they were read.
  returned: always
  type: dict
  sample: {"root": "/dev/shm/prng",
           "steps": [{"step": "step3", "state": "valid", "bytes": 35000, "files": 2, "problems": []}],
           "via": "ramdisk"}
hip_cache:
  description: HIP kernel cache entries and their total size.
  returned: always
  type: dict
  sample: {"root": "/home/prng/.cache",
           "entries": [{"name": "hip_kernels", "path": "/home/prng/.cache/hip_kernels",
           "bytes": 1342177280}], "total_bytes": 1342177280, "total_mb": 1280}
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import diagnostics as dg  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.defaults import PRNG_RAMDISK_ROOT  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_health import usable_gpus  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_tools import probe  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.kernel_log import kernel_log_result  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.memory import memory_facts  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            min_available_mb=dict(type="float", default=4096.0),
            shm_path=dict(type="path", default="/dev/shm"),
            shm_warn_pct=dict(type="float", default=50.0),
            shm_crit_pct=dict(type="float", default=80.0),
            ramdisk_root=dict(type="path", default=PRNG_RAMDISK_ROOT),
            ramdisk_steps=dict(type="list", elements="str", default=[]),
            hip_cache_root=dict(type="path", default="~/.cache"),
            hip_cache_patterns=dict(type="list", elements="str", default=["hip_*", "comgr*", "miopen"]),
            hip_cache_warn_mb=dict(type="float", default=1024.0),
            expected_gpus=dict(type="int", default=0),
            gpu_type=dict(type="str", choices=["cuda", "rocm", "cpu"]),
            search_path=dict(type="list", elements="path", default=[]),
            rocm_path=dict(type="path", default="/opt/rocm"),
            sysfs_root=dict(type="path", default="/sys"),
            proc_root=dict(type="path", default="/proc"),
            cgroup_root=dict(type="path", default="/sys/fs/cgroup"),
            kernel_log_sources=dict(
                type="list", elements="str", choices=["dmesg", "journalctl"], default=["dmesg", "journalctl"]
            ),
            kernel_log_file=dict(type="path"),
            timeout=dict(type="float", default=30.0),
            since=dict(type="str", default=""),
            gpu_exclude=dict(type="list", elements="int", default=[]),
            gpu_health_policy=dict(type="str", choices=["exclude", "ignore"], default="exclude"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not 0 < p["shm_warn_pct"] <= p["shm_crit_pct"] <= 100:
        module.fail_json(
            msg=f"need 0 < shm_warn_pct <= shm_crit_pct <= 100, got {p['shm_warn_pct']}"
            f" and {p['shm_crit_pct']}"
        )
    if p["search_path"]:
        os.environ["PATH"] = os.pathsep.join(p["search_path"] + [os.environ.get("PATH", "")])
    try:
        mem = memory_facts(p["cgroup_root"], p["proc_root"], p["shm_path"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot read memory state: {exc}")
    gpu = probe(
        {},
        sysfs_root=p["sysfs_root"],
        rocm_path=p["rocm_path"],
        timeout=p["timeout"],
        proc_root=p["proc_root"],
    )
    try:
        klog = kernel_log_result(
            p["kernel_log_sources"], p["kernel_log_file"], p["timeout"], p["since"], p["proc_root"]
        )
    except ValueError as exc:
        module.fail_json(msg=f"since: {exc}")
    health = usable_gpus(gpu, klog, p["expected_gpus"], p["gpu_exclude"], p["gpu_health_policy"])
    ramdisk = dg.ramdisk_status(p["ramdisk_root"])
    cache = dg.hip_cache_usage(p["hip_cache_root"], p["hip_cache_patterns"])

    findings = (
        dg.memory_findings(mem, p["min_available_mb"])
        + dg.shm_findings(mem["shm"], p["shm_warn_pct"], p["shm_crit_pct"])
        + dg.gpu_findings(gpu, p["expected_gpus"], p["gpu_type"])
        + dg.usable_findings(health, p["expected_gpus"])
        + dg.kernel_findings(klog)
        + dg.ramdisk_findings(ramdisk, p["ramdisk_steps"])
        + dg.hip_cache_findings(cache, p["hip_cache_warn_mb"])
    )
    findings.sort(key=lambda f: -dg.SEVERITIES.index(f["severity"]))
    gpu["health"] = health
    module.exit_json(
        changed=False,
        findings=findings,
        worst=dg.worst(findings),
        memory=mem,
        gpu=gpu,
        kernel_log=klog,
        ramdisk=ramdisk,
        hip_cache=cache,
    )


if __name__ == "__main__":
    main()
