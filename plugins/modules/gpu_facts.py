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
        RV(problems) as missing GPUs.
    type: int
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
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.gpu_tools import hsa_override_for, probe  # noqa: E402


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
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["timeout"] <= 0:
        module.fail_json(msg="timeout must be > 0, got {}".format(p["timeout"]))
    if p["search_path"]:
        # tools are looked up on PATH; the given folders come first
        os.environ["PATH"] = os.pathsep.join(p["search_path"] + [os.environ.get("PATH", "")])
    paths = {"amd_smi": p["amd_smi_path"], "rocm_smi": p["rocm_smi_path"], "nvidia_smi": p["nvidia_smi_path"]}
    facts = probe(paths, sysfs_root=p["sysfs_root"], rocm_path=p["rocm_path"], timeout=p["timeout"],
                  proc_root=p["proc_root"])
    if facts["hsa_override_gfx_version"] is None and not facts["arch"] and p["default_arch"]:
        facts["hsa_override_gfx_version"] = hsa_override_for(p["default_arch"])
    problems = ["GPU {}: {}".format(g["index"], text) for g in facts["gpus"] for text in g["problems"]]
    expected = p["expected_count"]
    if expected is not None and facts["count"] < expected:
        problems.insert(0, f"{facts['count']} of {expected} expected GPUs found:"
                           " missing GPUs (reseat or check power/risers)")
    facts["problems"] = problems
    module.exit_json(changed=False, ansible_facts={"prng_gpu": facts}, **facts)


if __name__ == "__main__":
    main()
