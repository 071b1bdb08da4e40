# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""One dispatch as the controller sees it: the batch message a host is sent (its jobs with
the tokens filled for that host and slot, and the gpu_job options of the slot, built here
and nowhere else) and the result that comes back (DispatchResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils import fanout_protocol as proto
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec

# Outputs up to this size ride back inside the result (no extra transfer per file).
INLINE_MAX_BYTES = 8 << 20


@dataclass
class DispatchResult:
    dispatch_id: str
    host: str
    slot: int
    jobs: List[Job]
    status: str = "ok"  # ok | unreachable | error | cancelled
    error: str = ""
    job_results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    incoming: str = ""  # controller folder holding the pulled outputs, <job id>/<file>
    started: float = 0.0
    wall_s: float = 0.0  # sent -> result handed back, as the controller saw it
    agent_start_s: float = 0.0  # part of wall_s spent starting the host's agent
    run_s: float = 0.0  # the batch on the host (its jobs one after the other)
    pull_s: float = 0.0  # writing / fetching its outputs on the controller


def fill(value: str, tokens: Dict[str, str]) -> str:
    for key, val in tokens.items():
        value = value.replace("{" + key + "}", val)
    return value


def host_job(job: Job, host: HostSpec, slot: int, out_root: str, expect: Dict[str, Any]) -> Dict[str, Any]:
    """The job as the host runs it: tokens filled, expectations attached to its outputs.
    {out} is a folder of its own per job, so two jobs of one batch never share a file."""
    start, stop = job.range or [0, 0]
    tokens = {
        "worker_bin": host.worker_bin,
        "input_dir": host.input_dir,
        "out": f"{out_root}/{job.id}",
        "backend": host.backend,
        "device": host.device,
        "gpu": str(slot),
        "job_id": job.id,
        "start": str(start),
        "stop": str(stop),
    }
    outputs = []
    for spec in job.outputs:
        spec = dict(spec)
        spec["path"] = fill(spec["path"], tokens)
        for key, val in expect.items():
            spec.setdefault(key, val)
        outputs.append(spec)
    return {
        "id": job.id,
        "argv": [fill(a, tokens) for a in job.argv],
        "outputs": outputs,
        "timeout": job.timeout,
        "env": job.env,
    }


def run_options(host: HostSpec, slot: int) -> Dict[str, Any]:
    """The prng.cluster.gpu_job options a batch on this slot runs with (job_runner.run_batch
    takes the same names): the slot's GPU (HostSpec.gpu_for_slot), the env file, the start
    stagger shared by the host's slots, inline outputs."""
    return {
        "gpu_type": host.gpu_type,
        "gpu_index": host.gpu_for_slot(slot),
        "env_file": host.env_file,
        "start_stagger_seconds": host.start_stagger_seconds,
        "state_dir": host.prng_home + "/run",
        "inline_max_bytes": INLINE_MAX_BYTES,
    }


def dispatch_root(host: HostSpec) -> str:
    return host.prng_home + "/dispatch"


def run_folder(host: HostSpec, run_id: str) -> str:
    """This run's folder on the host: every dispatch folder, removed at the end."""
    return f"{dispatch_root(host)}/{run_id}"


def batch(
    dispatch_id: str,
    host: HostSpec,
    slot: int,
    jobs: List[Job],
    expect: Callable[[Job], Dict[str, Any]],
    run_id: str,
    remove: List[str],
    incoming: str,
) -> Dict[str, Any]:
    """The batch message for one dispatch (fanout_protocol.batch)."""
    work_dir = f"{run_folder(host, run_id)}/{dispatch_id}"
    return proto.batch(
        dispatch_id,
        slot,
        work_dir,
        [host_job(j, host, slot, work_dir + "/out", expect(j)) for j in jobs],
        run_options(host, slot),
        remove=remove,
        incoming=incoming,
        run_id=run_id,
        dispatch_root=dispatch_root(host),
        worker_python=host.worker_bin + "/python",
        lease=host.lease_file,
        # a preflighted step's verified ramdisk folder: the agent checks it is still there
        inputs=host.input_dir if host.lease_file else "",
    )
