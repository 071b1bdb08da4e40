#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: GPU vendor, model, count, architecture, driver/runtime versions and per-GPU health
version_added: "0.1.0"
description:
  - Asks C(amd-smi), then C(rocm-smi) (AMD), and C(nvidia-smi) (NVIDIA) about the GPUs of the
    host; when no tool answers, lists the cards found in sysfs
    (C(/sys/class/drm/card*/device/vendor) 0x1002 AMD, 0x10de NVIDIA). A host with no tool
    and no GPU gets C(count=0) and C(gpu_type=cpu), not a failure.
  - Flags unhealthy GPUs, for example an RX 6600 whose clocks read C(N/A) and whose
    performance level reads C(unknown) in rocm-smi (hung, reboot the node), an NVIDIA GPU
    that nvidia-smi cannot reach, and an NVIDIA GPU in C(Exclusive_Process) compute mode,
    which refuses a second process.
  - Reports the GFXOFF setting of the amdgpu driver (boot command line and loaded module
    parameters; C(amdgpu.ppfeaturemask=0xffff7fff) disables it).
  - Decides which GPUs may be given jobs (RV(usable), RV(health), fact C(prng_gpu_health)).
    A GPU is left out when the tool flags it (as above), when it is missing (fewer found
    than O(expected_count)), or when the kernel log since boot (or since O(since)) holds an
    amdgpu ring timeout, GPU reset or SMU failure, or an NVIDIA Xid, for its PCI address
    (see M(prng.cluster.kernel_log)). O(exclude) leaves GPUs out by hand;
    O(health_policy=ignore) gives jobs to flagged GPUs anyway. The fan-out binds slot i to
    the i-th usable GPU.
  - Every tool runs as an argument list with a timeout, since a hung GPU can hang the tool.
author:
  - PRNG cluster team (@prng-cluster)
options:
  amd_smi_path:
    description: Path of C(amd-smi). Default is to look on E(PATH), then in O(rocm_path)/bin.
    type: path
  rocm_smi_path:
    description: Path of C(rocm-smi). Default is to look on E(PATH), then in O(rocm_path)/bin.
    type: path
  nvidia_smi_path:
    description: Path of C(nvidia-smi). Default is to look on E(PATH).
    type: path
  search_path:
    description: Folders searched for the tools before E(PATH) (e.g. a folder of stand-ins in tests).
    type: list
    elements: path
    default: []
  rocm_path:
    description: ROCm install root (its C(bin/) and C(.info/version) are read).
    type: path
    default: /opt/rocm
  sysfs_root:
    description: Mount point of sysfs.
    type: path
    default: /sys
  proc_root:
    description: Mount point of procfs (C(cmdline) is read for the GFXOFF setting).
    type: path
    default: /proc
  timeout:
    description: Seconds one tool call may take before it counts as hung.
    type: float
    default: 30
  default_arch:
    description:
      - gfx target assumed for the AMD GPUs when no tool reports one (for example the
        inventory's C(gpu_arch) on a host whose ROCm is not installed yet); used for
        RV(hsa_override_gfx_version) only.
    type: str
  expected_count:
    description:
      - GPUs the inventory says the host has (C(gpu_count)). Fewer found is reported in
        RV(problems) as missing GPUs, and the missing indexes are not usable. Default is
        the number found.
    type: int
  exclude:
    description:
      - GPU indexes never to give jobs to, whatever their health (inventory C(gpu_exclude)).
    type: list
    elements: int
    default: []
  health_policy:
    description:
      - V(exclude) leaves unhealthy GPUs out of RV(usable); V(ignore) keeps them (the
        reasons are still reported, under C(ignored)). Inventory C(gpu_health_policy).
    type: str
    choices: [exclude, ignore]
    default: exclude
  kernel_log_sources:
    description:
      - Kernel log sources read for GPU errors (as M(prng.cluster.kernel_log)); V([]) skips
        the kernel log. dmesg may need become where C(kernel.dmesg_restrict=1); an
        unreadable log is a warning in RV(health), not a failure.
    type: list
    elements: str
    choices: [dmesg, journalctl]
    default: [dmesg, journalctl]
  kernel_log_file:
    description: Read this saved kernel log instead of the live sources.
    type: path
  since:
    description:
      - Only kernel log lines after this time count (inventory C(gpu_health_since)). Empty
        means since boot; V(@<epoch>), an age (V(6h), V(90m), V(2d)) or a local time
        V(2024-06-10 14:00). Use it after resetting a GPU by hand.
    type: str
    default: ""
extends_documentation_fragment:
  - prng.cluster.read_only
  - prng.cluster.read_only.facts
"""

EXAMPLES = r"""
- name: GPU facts of every host
  prng.cluster.gpu_facts:
    expected_count: "{{ gpu_count | default(0) }}"
  register: gpu

- name: Stop when a GPU is hung
  ansible.builtin.assert:
    that: gpu.unhealthy | length == 0
    fail_msg: "GPUs {{ gpu.unhealthy }} are unhealthy: {{ gpu.problems }}"

- name: Which GPUs get jobs (sets the fact prng_gpu_health)
  prng.cluster.gpu_facts:
    expected_count: "{{ gpu_count }}"
    exclude: "{{ gpu_exclude }}"
    health_policy: "{{ gpu_health_policy }}"
    since: "{{ gpu_health_since }}"
  become: true  # dmesg may be restricted to root

# Ad hoc: ansible rig-6600 -b -m prng.cluster.gpu_facts -a 'expected_count=12 since=6h'

# Ad hoc: ansible rig-6600 -m prng.cluster.gpu_facts
"""

RETURN = r"""
vendor:
  description: V(amd), V(nvidia), V(mixed) or V(none).
  returned: always
  type: str
  sample: amd
gpu_type:
  description: The matching inventory C(gpu_type), V(rocm), V(cuda) or V(cpu).
  returned: always
  type: str
  sample: rocm
tool:
  description: The tool(s) whose answer was used (V(sysfs) when none answered), null when no GPU.
  returned: always
  type: str
  sample: rocm-smi
tools_tried:
  description: The tools found and run, in order.
  returned: always
  type: list
  elements: str
  sample: ["amd-smi", "rocm-smi"]
tool_paths:
  description: Path of each tool found and run.
  returned: always
  type: dict
  sample: {"rocm-smi": "/opt/rocm/bin/rocm-smi"}
count:
  description: Number of GPUs found.
  returned: always
  type: int
  sample: 12
model:
  description: GPU model (a list when the host mixes models).
  returned: always
  type: raw
  sample: Navi 23 [Radeon RX 6600/6600 XT/6600M]
arch:
  description: Architecture (AMD gfx target, NVIDIA sm_XY), a list when mixed.
  returned: always
  type: raw
  sample: gfx1032
driver_version:
  description: Kernel driver version (amdgpu or NVIDIA).
  returned: always
  type: str
  sample: 6.8.5
runtime_version:
  description: ROCm version (amd-smi or O(rocm_path)/.info/version) or CUDA version of the driver.
  returned: always
  type: str
  sample: 6.2.4
gpus:
  description: One record per GPU.
  returned: always
  type: list
  elements: dict
  sample: [{"index": 7, "vendor": "amd", "source": "rocm-smi",
            "model": "Navi 23 [Radeon RX 6600/6600 XT/6600M]",
            "arch": "gfx1032", "pci_bus": "0000:0B:00.0", "sclk_mhz": null, "mclk_mhz": null,
            "perf_level": "unknown", "compute_mode": null, "healthy": false,
            "problems": ["performance level 'unknown': SMU not answering,
                          reboot the node or reseat the GPU"]}]
unhealthy:
  description: Indexes of GPUs that are not healthy (the scheduler can exclude them).
  returned: always
  type: list
  elements: int
  sample: [7]
healthy_count:
  description: GPUs without a health problem.
  returned: always
  type: int
  sample: 11
compute_modes:
  description: NVIDIA compute modes seen on the host.
  returned: always
  type: list
  elements: str
  sample: ["Default", "Exclusive_Process"]
gfxoff:
  description:
    - GFXOFF configuration. C(gfxoff_disabled) is true when ppfeaturemask has bit 15 clear
      (or amdgpu.gfxoff=0), false when GFXOFF is on, null when unknown (amdgpu not loaded).
  returned: always
  type: dict
  sample: {"amdgpu_loaded": true, "cmdline": {"amdgpu.ppfeaturemask": "0xffff7fff"},
           "module_params": {"ppfeaturemask": "0xffff7fff"}, "ppfeaturemask": "0xffff7fff",
           "gfxoff_disabled": true}
hsa_override_gfx_version:
  description:
    - HSA_OVERRIDE_GFX_VERSION the AMD GPUs need (their family's base target, e.g. 10.3.0
      for gfx1032), null when the target is native to ROCm, unknown, or mixed.
  returned: always
  type: str
  sample: 10.3.0
errors:
  description: Tool failures (exit codes, timeouts, unreadable output), one line each.
  returned: always
  type: list
  elements: str
  sample: ["nvidia-smi rc=9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."]
usable:
  description: Indexes (0 to O(expected_count) - 1) of the GPUs that may be given jobs.
  returned: always
  type: list
  elements: int
  sample: [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
health:
  description:
    - The decision per GPU. C(excluded) and C(ignored) map a GPU index to the reason
      (C(ignored) - unhealthy, but kept by O(health_policy=ignore)); C(warnings) are
      findings not tied to one GPU; C(kernel_log) says what was read.
  returned: always
  type: dict
  sample: {"usable": [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11], "gpu_count": 12, "policy": "exclude",
           "excluded": {"7": "performance level 'unknown': SMU not answering, reboot the node or
                        reseat the GPU; kernel log: amdgpu ring timeout at 2024-06-10T13:02:11Z"},
           "ignored": {}, "warnings": [], "checked": "2024-06-10T14:00:00Z",
           "kernel_log": {"readable": true, "source": "dmesg", "since": null, "errors": []}}
problems:
  description: Every per-GPU problem and host-level problem, one line each, prefixed by the GPU index.
  returned: always
  type: list
  elements: str
  sample: ["GPU 7: performance level 'unknown': SMU not answering, reboot the node or reseat the GPU"]
ansible_facts:
  description: The same result as the fact C(prng_gpu).
  returned: always
  type: dict
  contains:
    prng_gpu:
      description: Every key above.
      type: dict
      returned: always
    prng_gpu_health:
      description: RV(health), read by the fan-out to bind slots to usable GPUs only.
      type: dict
      returned: always
"""

import datetime  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_health import usable_gpus  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_tools import hsa_override_for, probe  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.kernel_log import kernel_log_result  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            amd_smi_path=dict(type="path"),
            rocm_smi_path=dict(type="path"),
            nvidia_smi_path=dict(type="path"),
            search_path=dict(type="list", elements="path", default=[]),
            rocm_path=dict(type="path", default="/opt/rocm"),
            sysfs_root=dict(type="path", default="/sys"),
            proc_root=dict(type="path", default="/proc"),
            timeout=dict(type="float", default=30.0),
            default_arch=dict(type="str"),
            expected_count=dict(type="int"),
            exclude=dict(type="list", elements="int", default=[]),
            health_policy=dict(type="str", choices=["exclude", "ignore"], default="exclude"),
            kernel_log_sources=dict(
                type="list", elements="str", choices=["dmesg", "journalctl"], default=["dmesg", "journalctl"]
            ),
            kernel_log_file=dict(type="path"),
            since=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["timeout"] <= 0:
        module.fail_json(msg="timeout must be > 0, got {}".format(p["timeout"]))
    if p["expected_count"] is not None and p["expected_count"] < 0:
        module.fail_json(
            msg="expected_count (gpu_count): expected an integer >= 0, got {}".format(p["expected_count"])
        )
    if p["search_path"]:
        # tools are looked up on PATH; the given folders come first
        os.environ["PATH"] = os.pathsep.join(p["search_path"] + [os.environ.get("PATH", "")])
    paths = {"amd_smi": p["amd_smi_path"], "rocm_smi": p["rocm_smi_path"], "nvidia_smi": p["nvidia_smi_path"]}
    facts = probe(
        paths,
        sysfs_root=p["sysfs_root"],
        rocm_path=p["rocm_path"],
        timeout=p["timeout"],
        proc_root=p["proc_root"],
    )
    if facts["hsa_override_gfx_version"] is None and not facts["arch"] and p["default_arch"]:
        facts["hsa_override_gfx_version"] = hsa_override_for(p["default_arch"])
    problems = ["GPU {}: {}".format(g["index"], text) for g in facts["gpus"] for text in g["problems"]]
    expected = p["expected_count"]
    if expected is not None and facts["count"] < expected:
        problems.insert(
            0,
            f"{facts['count']} of {expected} expected GPUs found:"
            " missing GPUs (reseat or check power/risers)",
        )
    facts["problems"] = problems
    if p["kernel_log_sources"] or p["kernel_log_file"]:
        try:
            klog = kernel_log_result(
                p["kernel_log_sources"], p["kernel_log_file"], p["timeout"], p["since"], p["proc_root"]
            )
        except ValueError as exc:
            module.fail_json(msg=f"since (gpu_health_since): {exc}")
    else:
        klog = {
            "readable": None,
            "source": None,
            "since": None,
            "errors": ["not read (kernel_log_sources: [])"],
        }
    gpu_count = facts["count"] if expected is None else expected
    health = usable_gpus(facts, klog, gpu_count, p["exclude"], p["health_policy"])
    for gpu in facts["gpus"]:
        gpu["usable"] = gpu["index"] in health["usable"]
        gpu["excluded_reason"] = health["excluded"].get(gpu["index"])
    health["gpu_count"] = gpu_count
    health["checked"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    health["kernel_log"] = {k: klog.get(k) for k in ("readable", "source", "since", "errors")}
    health["kernel_log"]["events"] = len(klog.get("gpu_events") or [])
    facts["usable"] = health["usable"]
    facts["health"] = health
    module.exit_json(changed=False, ansible_facts={"prng_gpu": facts, "prng_gpu_health": health}, **facts)


if __name__ == "__main__":
    main()
