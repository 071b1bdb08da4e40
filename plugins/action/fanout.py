# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

# Documentation: plugins/modules/fanout.py (ansible-doc prng.cluster.fanout).
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.prng.cluster.plugins.module_utils.defaults import PRNG_CACHE
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import contract
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import manifest as manifest_mod
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.contract import ContractError
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.eligible import (
    eligible_hosts,
    fitting_hosts,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import (
    Journal,
    ResumeRefused,
    atomic_write_json,
    file_sha256,
    hash_inputs,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, PlanError
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import make_plan
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.runner import runner_envvars
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.scheduler import FanOut, Settings
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.sizing import (
    load_throughput,
    plan_preview,
    size_hosts,
    stored_rate,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.transport import HostLinks

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            "plan",
            "params",
            "run_dir",
            "hosts",
            "input_dir",
            "fresh_run",
            "settings",
            "validate_only",
            "require_preflight",
        )
    )

    def run(self, tmp: Any = None, task_vars: Any = None) -> Dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        try:
            run = self._contract(args, task_vars)
        except (ContractError, PlanError, ResumeRefused, FileNotFoundError) as exc:
            raise AnsibleActionFail(f"fanout: {exc}") from None
        if args.get("validate_only") or self._task.check_mode:
            return dict(result, changed=False, **run.preview())
        try:
            os.makedirs(run.run_dir, exist_ok=True)
            lock = self._lock(run.run_dir)
        except RunInUse as exc:
            # the same run goes on in another fan-out: its ramdisk lease is not ours to give back
            raise AnsibleActionFail(f"fanout: {exc}", result={"run_in_use": True}) from None
        except OSError as exc:
            raise AnsibleActionFail(f"fanout: {exc}") from None
        try:
            return self._run(result, task_vars, args, run)
        finally:
            lock.close()

    def _contract(self, args: Any, task_vars: Any) -> Run:
        """Everything checked before a host is touched (i31-i33): parameters typed and in
        range, inputs' content, settings, every host's variables, and, when the run folder
        holds a run, that this command is the same run (i30)."""
        for key in ("plan", "params", "run_dir"):
            if args.get(key) in (None, "", {}):
                raise ContractError(f"{key}: required, not given")
        if not args.get("hosts"):
            raise ContractError("hosts: none given (is the host group, e.g. gpu_nodes, in the inventory?)")
        kind = str(args["plan"])
        params = contract.check_params(kind, dict(args["params"]))
        settings = contract.check_settings(args.get("settings") or {}, Settings)
        run_dir = contract.check_run_dir(args["run_dir"])  # a file there is found before any host
        names = args["hosts"]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        hostvars = task_vars.get("hostvars", {})
        missing = [n for n in names if n not in hostvars]
        if missing:
            raise ContractError("hosts: not in the inventory: {}".format(", ".join(missing)))
        for name in names:
            contract.check_host(name, hostvars[name])
        plan = make_plan(kind, params)
        inputs = hash_inputs(plan.inputs())
        ident = contract.identity(kind, params, inputs)
        journal = Journal(run_dir)
        fresh = contract.check_bool("fresh_run", args.get("fresh_run", False))
        resume = None
        if journal.exists() and not fresh:
            header = journal.header()
            old = header.get("identity") or {
                "plan": header.get("plan"),
                "params": {k: v for k, v in (header.get("params") or {}).items() if k in ident["params"]},
                "inputs": {k: v.get("sha256") for k, v in (header.get("inputs") or {}).items()},
                "worker": ident["worker"],  # a run from before identities: its worker is unknown
            }
            changes = contract.identity_changes(old, ident)
            if changes:
                raise ResumeRefused(
                    f"run folder {run_dir} holds run {header.get('run_id')}, started with other settings: "
                    + "; ".join(changes)
                    + ". Refusing to mix results: fresh_run=true starts over (the old run is kept aside), "
                    "or give another run_dir"
                )
            resume = header.get("run_id")
        found = _checked_inputs(kind, params, ident)  # after the resume check: a changed run is named first
        if kind == "list":  # the jobs file is read whole here, before anything starts
            found = {"jobs": len(plan.make_jobs()), "notes": list(plan.notes)}
        if kind == "score" and not self._task.check_mode:  # validated JSON -> one NPZ for the hosts
            try:
                converted = plan.convert_survivors(_npz_cache())
            except OSError as exc:
                raise ContractError(f"survivors: cannot convert to NPZ: {exc}") from None
            if converted:
                found = dict(found, survivors_npz=converted)
        run = Run(kind, params, settings, run_dir, list(names), plan, inputs, ident, found, fresh, resume)
        if self._task.check_mode and not args.get("validate_only"):
            run.planned = self._plan(run, task_vars, args)
        return run

    def _plan(self, run: Run, task_vars: Any, args: Any) -> Dict[str, Any]:
        """The plan preview of --check: the run's jobs, slots and ETA, nothing started."""
        try:
            hosts, left_out = _eligible(run, task_vars.get("hostvars", {}), args)
        except ContractError as exc:
            return {"hosts": {}, "eta": "no host can run this step", "reason": str(exc)}
        size_hosts(run.plan, run.params, hosts)
        return plan_preview(run.plan, run.params, hosts, left_out, load_throughput(throughput_path()))

    @staticmethod
    def _lock(run_dir: str, wait: float = 90.0) -> Any:
        """One fan-out per run folder at a time; a dying earlier one gets `wait` seconds."""
        import fcntl

        fh = open(os.path.join(run_dir, ".lock"), "a+")
        deadline = time.time() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fh
            except BlockingIOError:
                if time.time() > deadline:
                    fh.close()
                    raise RunInUse(f"run folder {run_dir} is in use by another fan-out") from None
                time.sleep(0.5)

    def _run(self, result: Dict[str, Any], task_vars: Any, args: Any, run: Run) -> Dict[str, Any]:
        run_dir, plan, params, settings = run.run_dir, run.plan, run.params, run.settings
        try:
            hosts, left_out = _eligible(run, task_vars["hostvars"], args)
            note = size_hosts(plan, params, hosts)
            if note:
                display.display(f"fan-out: {note}")
            hosts = fitting_hosts(hosts, left_out)
            journal = Journal(run_dir)
            if journal.exists() and run.fresh:
                aside = "{}.prev-{}".format(run_dir, journal.header().get("run_id", int(time.time())))
                os.rename(run_dir, aside)
                os.makedirs(run_dir)
                display.display(f"fan-out: earlier run moved aside to {aside}")
            resumed = journal.exists()
            if resumed:
                header = journal.header()
                if header.get("plan") != run.kind:
                    raise ResumeRefused(
                        f"run folder {run_dir} holds a {header.get('plan')} run, not {run.kind}"
                    )
                jobs = journal.load()
                self._resume(run_dir, journal, jobs)
            else:
                job_list = plan.make_jobs()
                header = {
                    "run_id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
                    "created": round(time.time(), 3),
                    "plan": run.kind,
                    "params": params,
                    "inputs": run.inputs,
                    "identity": run.identity,
                }
                if plan.shard_info:  # shard K/N: its slice of the full plan, for the merge (shards.py)
                    header["shard"] = plan.shard_info
                journal.create(header, job_list)
                jobs = {j.id: j for j in job_list}
        except (ContractError, PlanError, ResumeRefused, FileNotFoundError, OSError) as exc:
            raise AnsibleActionFail(f"fanout: {exc}") from None
        for name, reason in left_out.items():
            display.warning(f"fan-out: host {name} left out of this run: {reason}")
        display.display(
            f"fan-out: {sum(1 for j in jobs.values() if j.state != 'split')} jobs over "
            + ", ".join(f"{h.name} ({h.slots} slots)" for h in hosts)
        )
        from ansible import constants as C
        from ansible.utils.collection_loader import AnsibleCollectionConfig

        # One play for all hosts, one task and one SSH session per host (transport.py).
        links = HostLinks(
            run_dir,
            header["run_id"],
            list(task_vars.get("ansible_inventory_sources") or []),
            runner_envvars(C.CONFIG_FILE, list(AnsibleCollectionConfig.collection_paths)),
        )
        fan = FanOut(
            run_dir,
            plan,
            hosts,
            jobs,
            journal,
            links.send,
            settings,
            display.display,
            cancel=links.cancel,
            cleanup=links.cleanup,
        )
        stored = load_throughput(throughput_path())
        for host in hosts:  # the last runs' measured rate sizes the first batches (gpu_optimizer.py)
            fan.hosts[host.name].rate = stored_rate(stored, plan.kind, host)[0]
        session_started = time.time()
        try:
            if any(j.state == "queued" for j in jobs.values()):
                links.start(hosts)
            fan.run()
            now = time.time()
            links.finish([h.spec for h in fan.hosts.values() if h.live(now)])  # one cleanup per host
        finally:
            links.close()
            manifest = manifest_mod.build(header, fan, session_started)
            manifest["left_out"] = left_out
            path = manifest_mod.write(run_dir, manifest)
        outputs = [os.path.join(run_dir, o["path"]) for o in manifest["outputs"]]
        return dict(
            result,
            changed=bool(manifest["timings"]["dispatches"]) or not resumed,
            complete=manifest["complete"],
            stopped=getattr(fan, "stopped", None),
            jobs=manifest["jobs"],
            outputs=outputs,
            manifest=path,
            resumed=resumed,
            run_id=header["run_id"],
            run_dir=run_dir,
            hosts={
                n: {"slots": h["slots"], "jobs_done": h["jobs_done"], "jobs_failed": h["jobs_failed"]}
                for n, h in manifest["hosts"].items()
            },
            left_out=left_out,
            timings=manifest["timings"],
            failures=manifest["failures"][-20:],
        )

    @staticmethod
    def _resume(run_dir: str, journal: Journal, jobs: Dict[str, Any]) -> None:
        """Failed jobs get a fresh chance; a done job whose output no longer matches what
        was validated (size, sha256 in the journal) is queued again (i34)."""
        requeued = []
        for job in jobs.values():
            if job.state == "failed":
                job.state, job.attempts, job.avoid, job.requeues = "queued", 0, [], 0
            elif job.state == "done":
                problem = job.output_problem(run_dir)
                if problem:
                    job.state = "queued"
                    journal.append("requeue", job=job.id, reason=problem)
                    requeued.append(f"{job.id} ({problem})")
        done = sum(1 for j in jobs.values() if j.state == "done")
        display.display(
            f"fan-out: resuming run {journal.header()['run_id']} in {run_dir}: {done} of "
            f"{sum(1 for j in jobs.values() if j.state != 'split')} jobs already done"
        )
        if requeued:
            display.warning(
                f"fan-out: {len(requeued)} finished jobs run again, their outputs changed: "
                + ", ".join(requeued[:10])
                + (" ..." if len(requeued) > 10 else "")
            )


def _eligible(run: Run, hostvars: Any, args: Any) -> Tuple[List[HostSpec], Dict[str, str]]:
    return eligible_hosts(
        run, hostvars, str(args.get("require_preflight") or ""), str(args.get("input_dir") or "")
    )


def throughput_path() -> str:
    """The stored throughput (data/throughput.json next to the memory model; PRNG_THROUGHPUT overrides)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("PRNG_THROUGHPUT") or os.path.join(here, "..", "..", "data", "throughput.json")


def _npz_cache() -> str:
    """Where JSON survivors are converted to NPZ, once per content (PRNG_NPZ_CACHE overrides)."""
    return os.environ.get("PRNG_NPZ_CACHE") or os.path.expanduser(PRNG_CACHE + "/npz")


def _checked_inputs(kind: str, params: Dict[str, Any], ident: Dict[str, Any]) -> Dict[str, Any]:
    """contract.check_inputs, once per content: its verdict on the same inputs (content
    hashes), parameters, memory model and worker code is kept on the controller. A step
    playbook checks its contract in its first play and again in the fan-out task, a
    resume again: a 1 M-survivor JSON costs ~2 CPU-s each time, its hash 0.1 s."""
    model = params.get("memory_model")  # Step 3's or Step 1's (a list plan has none)
    key = json.dumps(
        [ident, params, file_sha256(model) if model and os.path.isfile(model) else None], sort_keys=True
    )
    path = os.path.join(
        os.path.expanduser(PRNG_CACHE), "contract", hashlib.sha256(key.encode()).hexdigest() + ".json"
    )
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        pass
    found = contract.check_inputs(kind, params)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, found)
    except OSError:
        pass  # no cache: checked again next time
    return found


class RunInUse(OSError):
    """Another fan-out holds the run folder's lock."""


@dataclass
class Run:
    """A run as its contract describes it, before anything is started."""

    kind: str
    params: Dict[str, Any]
    settings: Settings
    run_dir: str
    hosts: List[str]
    plan: Any
    inputs: Dict[str, Dict[str, Any]]
    identity: Dict[str, Any]
    found: Dict[str, Any]
    fresh: bool
    resume: str | None
    planned: Dict[str, Any] | None = None  # --check: the plan preview

    def lease_id(self) -> str:
        """The name of this run's ramdisk lease (ramdisk run_id): the same for a resume of
        the run (same identity, same folder), another for any other run."""
        key = json.dumps([self.identity, self.run_dir], sort_keys=True, default=str)
        return f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def preview(self) -> Dict[str, Any]:
        """What validate_only and check mode return: the checked contract, no job run."""
        files = []
        for path in sorted(p for p in self.plan.host_inputs().values() if p):
            files.append(path)
            if os.path.isfile(path + ".meta.json"):  # an NPZ travels with its sidecar
                files.append(path + ".meta.json")
        return {
            "params": self.params,
            "files": files,
            "inputs": self.inputs,
            "identity": self.identity,
            "checked": self.found,
            "plan": self.planned,
            "run_dir": self.run_dir,
            "lease_id": self.lease_id(),
            "resume": self.resume,
            "msg": (
                f"resumes run {self.resume} in {self.run_dir}"
                if self.resume
                else f"new run in {self.run_dir}"
            )
            + (" (the earlier run is moved aside)" if self.fresh and Journal(self.run_dir).exists() else ""),
        }
