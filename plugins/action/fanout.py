# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

# Documentation: plugins/modules/fanout.py (ansible-doc prng.cluster.fanout).
import os
import time
import uuid
from typing import Any, Dict, List

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import manifest as manifest_mod
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import (
    PoolDispatcher,
    RunnerDispatcher,
    SlotDispatcher,
    runner_envvars,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import (
    Journal,
    ResumeRefused,
    hash_inputs,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import (
    HostSpec,
    PlanError,
    load_memory_model,
    make_plan,
    model_backend,
    pick_chunk_size,
    predict_peak_mb,
    slots_for,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.scheduler import FanOut, Settings

display = Display()


def _num(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("plan", "params", "run_dir", "hosts", "input_dir", "fresh_run", "settings"))

    def host_spec(self, name: str, hostvars: Any, input_dir: str) -> HostSpec:
        hv = hostvars[name]

        def get(key: str, default: Any) -> Any:
            value = hv.get(key, default)
            return default if value is None else value

        gpu_type = str(get("gpu_type", "cpu"))
        prng_home = str(get("prng_home", "~/prng-cluster")).rstrip("/")
        venv = str(get("worker_venv", prng_home + "/venv")).rstrip("/")
        backend = str(get("worker_backend", "numpy"))
        return HostSpec(
            name=name,
            gpu_type=gpu_type,
            gpu_count=int(get("gpu_count", 0)),
            max_concurrent_jobs=int(get("max_concurrent_jobs", 1)),
            memory_available_mb=_num(hv.get("prng_memory_available_mb"), 0.0) or None,
            memory_margin_pct=_num(get("memory_margin_pct", 20), 20.0),
            start_stagger_seconds=_num(get("start_stagger_seconds", 0), 0.0),
            prng_home=prng_home,
            worker_bin=venv + "/bin",
            input_dir=str(get("fanout_input_dir", input_dir)).rstrip("/"),
            env_file=str(get("worker_env_file", prng_home + "/worker.env")),
            backend=backend,
            device=str(get("worker_device", "auto")),
        )

    def run(self, tmp: Any = None, task_vars: Any = None) -> Dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        if self._task.check_mode:
            return dict(result, changed=False, skipped=True, msg="fan-out runs jobs: skipped in check mode")
        for key in ("plan", "params", "run_dir", "hosts"):
            if not args.get(key):
                raise AnsibleActionFail(f"fanout: {key} is required")
        run_dir = os.path.abspath(os.path.expanduser(str(args["run_dir"])))
        params: Dict[str, Any] = dict(args["params"])
        user_settings = dict(args.get("settings") or {})
        known = set(Settings.__dataclass_fields__)
        unknown = sorted(set(user_settings) - known)
        if unknown:
            raise AnsibleActionFail(f"fanout: unknown settings {unknown} (known: {sorted(known)})")
        settings = Settings(**{k: type(getattr(Settings, k))(v) for k, v in user_settings.items()})
        try:
            os.makedirs(run_dir, exist_ok=True)
            lock = self._lock(run_dir)
        except OSError as exc:
            raise AnsibleActionFail(f"fanout: {exc}") from None
        try:
            return self._run(result, task_vars, args, run_dir, params, settings)
        finally:
            lock.close()

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
                    raise OSError(f"run folder {run_dir} is in use by another fan-out") from None
                time.sleep(0.5)

    def _run(
        self,
        result: Dict[str, Any],
        task_vars: Any,
        args: Any,
        run_dir: str,
        params: Dict[str, Any],
        settings: Settings,
    ) -> Dict[str, Any]:
        try:
            plan = make_plan(str(args["plan"]), params)
            hostvars = task_vars["hostvars"]
            names = args["hosts"]
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
            missing = [n for n in names if n not in hostvars]
            if missing:
                raise PlanError("hosts not in the inventory: {}".format(", ".join(missing)))
            hosts = [self.host_spec(h, hostvars, str(args.get("input_dir") or "")) for h in names]
            for host in hosts:
                plan.adapt_host(host)
            self._size(plan, params, hosts)
            inputs = hash_inputs(plan.inputs())
            journal = Journal(run_dir)
            resumed = False
            if journal.exists() and args.get("fresh_run"):
                aside = "{}.prev-{}".format(run_dir, journal.header().get("run_id", int(time.time())))
                os.rename(run_dir, aside)
                display.display(f"fan-out: earlier run moved aside to {aside}")
            if journal.exists():
                journal.check_inputs(inputs)
                header = journal.header()
                if header.get("plan") != args["plan"]:
                    raise ResumeRefused(
                        "run folder {} holds a {} run, not {}".format(
                            run_dir, header.get("plan"), args["plan"]
                        )
                    )
                jobs = journal.load()
                for job in jobs.values():
                    if job.state == "failed":  # a new run gives failed jobs a fresh chance
                        job.state, job.attempts, job.avoid, job.requeues = "queued", 0, [], 0
                    elif job.state == "done" and not self._outputs_present(run_dir, job):
                        job.state = "queued"
                resumed = True
                done = sum(1 for j in jobs.values() if j.state == "done")
                display.display(
                    f"fan-out: resuming run {header['run_id']} in {run_dir}: {done} of "
                    f"{sum(1 for j in jobs.values() if j.state != 'split')} jobs already done"
                )
            else:
                job_list = plan.make_jobs()
                header = {
                    "run_id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
                    "created": round(time.time(), 3),
                    "plan": args["plan"],
                    "params": params,
                    "inputs": inputs,
                }
                journal.create(header, job_list)
                jobs = {j.id: j for j in job_list}
        except (PlanError, ResumeRefused, FileNotFoundError, ValueError, KeyError) as exc:
            raise AnsibleActionFail(f"fanout: {exc}") from None

        display.display(
            f"fan-out: {sum(1 for j in jobs.values() if j.state != 'split')} jobs over "
            + ", ".join(f"{h.name} ({h.slots} slots)" for h in hosts)
        )
        from ansible import constants as C
        from ansible.utils.collection_loader import AnsibleCollectionConfig

        kinds = {"pool": PoolDispatcher, "slot": SlotDispatcher, "dispatch": RunnerDispatcher}
        if settings.transport not in kinds:
            raise AnsibleActionFail("fanout: settings.transport must be one of pool, slot, dispatch")
        kind = kinds[settings.transport]
        dispatcher = kind(
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
            dispatcher.run,
            settings,
            display.display,
            cancel=dispatcher.cancel,
            cleanup=dispatcher.cleanup,
        )
        session_started = time.time()
        try:
            if isinstance(dispatcher, PoolDispatcher) and any(j.state == "queued" for j in jobs.values()):
                dispatcher.start_pool(hosts)
            fan.run()
            now = time.time()
            dispatcher.finish([h.spec for h in fan.hosts.values() if h.live(now)])
        finally:
            dispatcher.close()
            manifest = manifest_mod.build(header, fan, session_started)
            path = manifest_mod.write(run_dir, manifest)
        outputs = [os.path.join(run_dir, o["path"]) for o in manifest["outputs"]]
        return dict(
            result,
            changed=bool(manifest["timings"]["dispatches"]) or not resumed,
            complete=manifest["complete"],
            jobs=manifest["jobs"],
            outputs=outputs,
            manifest=path,
            resumed=resumed,
            run_dir=run_dir,
            hosts={
                n: {"slots": h["slots"], "jobs_done": h["jobs_done"], "jobs_failed": h["jobs_failed"]}
                for n, h in manifest["hosts"].items()
            },
            timings=manifest["timings"],
            failures=manifest["failures"][-20:],
        )

    @staticmethod
    def _outputs_present(run_dir: str, job: Any) -> bool:
        return all(
            os.path.exists(os.path.join(run_dir, o["path"])) for o in job.result.get("outputs", [])
        ) and bool(job.result.get("outputs"))

    @staticmethod
    def _size(plan: Any, params: Dict[str, Any], hosts: List[HostSpec]) -> None:
        """Chunk size and slots from the measured memory model and each host's limit."""
        if plan.kind != "score":
            for host in hosts:
                slots_for(host, 0.0)
            return
        model = load_memory_model(params.get("memory_model"))
        n_draws = plan.n_draws()
        wanted = int(params.get("chunk_size", 1000))
        params["chunk_size"] = pick_chunk_size(hosts, model, None, wanted, n_draws)
        if params["chunk_size"] != wanted:
            display.display(
                f"fan-out: chunk_size {wanted} -> {params['chunk_size']} so every slot fits in memory"
            )
        worker_mb = {}
        for host in hosts:
            mb = predict_peak_mb(model, model_backend(host), params["chunk_size"], n_draws)
            worker_mb[host.name] = round(mb, 1)
            slots_for(host, mb)
        params["worker_mb"] = worker_mb
