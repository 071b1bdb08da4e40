# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""One dispatch = one ansible-runner run on one host slot: send the jobs file, run
prng.cluster.gpu_job bound to the slot's GPU, pull the outputs that validated, clean up.

The controller never touches a GPU (i6): it only starts ansible-playbook processes.
SSH connections are bounded (one per busy slot) and reuse persistent control sockets
(i5); job parameters travel as a file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

import yaml
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec

# Outputs up to this size ride back in the module result (no extra transfer per file).
INLINE_MAX_BYTES = 8 << 20


class Unsafe(str):
    """Written as `!unsafe`: job arguments are data, never templated by Ansible."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))
# Values from the inventory arrive as Ansible's tagged str/int/float subclasses.
_Dumper.add_multi_representer(str, lambda dumper, value: dumper.represent_str(str(value)))
_Dumper.add_multi_representer(int, lambda dumper, value: dumper.represent_int(int(value)))
_Dumper.add_multi_representer(float, lambda dumper, value: dumper.represent_float(float(value)))


@dataclass
class DispatchResult:
    dispatch_id: str
    host: str
    slot: int
    jobs: List[Job]
    status: str = "ok"  # ok | unreachable | error | cancelled
    error: str = ""
    job_results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    incoming: str = ""
    started: float = 0.0
    wall_s: float = 0.0
    session_start_s: float = 0.0  # part of wall_s spent starting a slot session
    module_s: float = 0.0  # gpu_job module call, as the slot saw it (jobs + module overhead)
    slot_s: float = 0.0  # module call + pulling the outputs


def fill(value: str, tokens: Dict[str, str]) -> str:
    for key, val in tokens.items():
        value = value.replace("{" + key + "}", val)
    return value


def host_job(job: Job, host: HostSpec, slot: int, out_root: str, expect: Dict[str, Any]) -> Dict[str, Any]:
    """The job as the host runs it: tokens filled, expectations attached to its outputs.
    {out} is a folder of its own per job, so two jobs of one batch never share a file."""
    start, stop = job.range or [0, 0]
    out_dir = f"{out_root}/{job.id}"
    tokens = {
        "worker_bin": host.worker_bin,
        "input_dir": host.input_dir,
        "out": out_dir,
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


class RunnerDispatcher:
    """Runs dispatches through ansible-runner, from threads, one private dir each."""

    def __init__(
        self,
        run_dir: str,
        run_id: str,
        inventory: List[str],
        envvars: Dict[str, str],
        keep_artifacts: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.inventory = inventory
        self.envvars = envvars
        self.keep_artifacts = keep_artifacts
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.pulled: Dict[str, List[str]] = {}  # host -> remote folders already pulled

    def play(
        self, host: HostSpec, slot: int, jobs_json: str, remote: str, incoming: str, remove: List[str]
    ) -> List[Dict[str, Any]]:
        gpu_args: Dict[str, Any] = {
            "jobs": Unsafe(jobs_json),
            "work_dir": remote,
            "dispatch_root": host.prng_home + "/dispatch",
            "remove": remove,
            "gpu_type": host.gpu_type,
            "start_stagger_seconds": host.start_stagger_seconds,
            "state_dir": host.prng_home + "/run",
        }
        if host.gpu_type != "cpu":
            gpu_args["gpu_index"] = slot
        if host.env_file:
            gpu_args["env_file"] = host.env_file
        # Two tasks only: each task costs controller CPU, and a dispatch's fixed cost is
        # what decides how much work it must carry.
        return [
            {
                "name": "fan-out dispatch",
                "hosts": host.name,
                "gather_facts": False,
                "tasks": [
                    {"name": "run jobs", "prng.cluster.gpu_job": gpu_args, "register": "dispatch"},
                    {
                        "name": "pull outputs",
                        "ansible.builtin.fetch": {
                            "src": "{{ item.src }}",
                            "dest": incoming + "/{{ item.job_id }}/",
                            "flat": True,
                        },
                        "loop": "{{ dispatch.fetch }}",
                        "loop_control": {"label": "{{ item.job_id }}"},
                    },
                ],
            }
        ]

    def remote_dir(self, host: HostSpec, dispatch_id: str) -> str:
        return f"{host.prng_home}/dispatch/{self.run_id}/{dispatch_id}"

    def run(
        self,
        dispatch_id: str,
        host: HostSpec,
        slot: int,
        jobs: List[Job],
        expect: Callable[[Job], Dict[str, Any]],
    ) -> DispatchResult:
        import ansible_runner  # controller-only dependency

        res = DispatchResult(
            dispatch_id=dispatch_id, host=host.name, slot=slot, jobs=jobs, started=time.time()
        )
        pdir = os.path.join(self.run_dir, "dispatch", dispatch_id)
        incoming = os.path.join(pdir, "incoming")
        os.makedirs(os.path.join(pdir, "project"), exist_ok=True)
        os.makedirs(incoming, exist_ok=True)
        remote = self.remote_dir(host, dispatch_id)
        out_dir = remote + "/out"
        jobs_json = json.dumps([host_job(j, host, slot, out_dir, expect(j)) for j in jobs])
        with self.lock:
            remove, self.pulled[host.name] = self.pulled.get(host.name, []), []
        with open(os.path.join(pdir, "project", "dispatch.yml"), "w") as fh:
            yaml.dump(
                self.play(host, slot, jobs_json, remote, incoming, remove),
                fh,
                Dumper=_Dumper,
                default_flow_style=False,
                sort_keys=False,
                width=1 << 20,
            )
        captured: Dict[str, Any] = {}

        def on_event(event: Dict[str, Any]) -> bool:
            name = event.get("event", "")
            data = event.get("event_data", {})
            if name == "runner_on_ok" and data.get("task") == "run jobs":
                captured["jobs"] = data.get("res", {}).get("jobs", [])
            elif name == "runner_on_unreachable":
                captured["unreachable"] = str(data.get("res", {}).get("msg", "unreachable"))[:500]
            elif name in ("runner_on_failed", "runner_item_on_failed") and not data.get("ignore_errors"):
                msg = data.get("res", {}).get("msg") or data.get("res", {}).get("stderr") or "failed"
                captured.setdefault("failed", "{}: {}".format(data.get("task"), str(msg)[:500]))
            return False  # nothing of the event stream is kept on disk

        timeouts = [j.timeout for j in jobs]
        limit = None if any(t is None for t in timeouts) else int(sum(timeouts)) + 300
        try:
            runner = ansible_runner.run(
                private_data_dir=pdir,
                playbook="dispatch.yml",
                inventory=self.inventory,
                limit=host.name,
                envvars=self.envvars,
                quiet=True,
                event_handler=on_event,
                cancel_callback=self.cancel.is_set,
                timeout=limit,
                settings={"suppress_ansible_output": True},
                ident="run",
            )
            rc, status = runner.rc, runner.status
        except Exception as exc:  # a runner failure must not take the fan-out down (i15)
            rc, status = -1, "error"
            captured.setdefault("failed", f"ansible-runner: {exc}")
        res.wall_s = time.time() - res.started
        res.incoming = incoming
        res.job_results = {str(j.get("id")): j for j in captured.get("jobs", [])}
        if status == "canceled":
            res.status, res.error = "cancelled", "controller stopped"
        elif "unreachable" in captured:
            res.status, res.error = "unreachable", captured["unreachable"]
        elif status == "timeout":
            res.status, res.error = "error", f"dispatch ran past its {limit}s limit"
        elif rc != 0 or "failed" in captured:
            res.status, res.error = "error", captured.get("failed", f"ansible-runner rc={rc} status={status}")
        if res.status == "ok":
            with self.lock:
                self.pulled.setdefault(host.name, []).append(remote)
        else:
            with self.lock:  # not pulled: retry the removal with the next dispatch
                self.pulled.setdefault(host.name, []).extend(remove)
        return res

    def finish(self, hosts: List[HostSpec]) -> None:
        """Remove this run's dispatch folders on every reachable host (one run per host)."""
        import ansible_runner

        def clean(host: HostSpec) -> None:
            pdir = os.path.join(self.run_dir, "dispatch", "cleanup-" + host.name)
            os.makedirs(pdir, exist_ok=True)
            play = [
                {
                    "name": "remove dispatch folders",
                    "hosts": host.name,
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "remove this run's dispatch folder",
                            "ansible.builtin.file": {
                                "path": f"{host.prng_home}/dispatch/{self.run_id}",
                                "state": "absent",
                            },
                        }
                    ],
                }
            ]
            try:
                runner = ansible_runner.run(
                    private_data_dir=pdir,
                    playbook=play,
                    inventory=self.inventory,
                    limit=host.name,
                    envvars=self.envvars,
                    quiet=True,
                    timeout=120,
                    settings={"suppress_ansible_output": True},
                    ident="run",
                )
                if runner.rc == 0:
                    shutil.rmtree(pdir, ignore_errors=True)
            except Exception:  # cleanup is best effort; the folder is inside prng_home
                pass

        threads = [threading.Thread(target=clean, args=(h,), daemon=True) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)

    def close(self) -> None:
        """Nothing held between dispatches."""

    def cleanup(self, res: DispatchResult) -> None:
        """Drop the runner's private folder once its results are taken (kept on errors)."""
        if res.status == "ok" and not self.keep_artifacts:
            shutil.rmtree(os.path.join(self.run_dir, "dispatch", res.dispatch_id), ignore_errors=True)


def runner_envvars(config_file: str | None, collections_paths: List[str]) -> Dict[str, str]:
    """Environment of the runner's ansible-playbook: the same ansible.cfg, collections
    and Python as the playbook that called the fan-out."""
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(collections_paths),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_GATHERING": "explicit",
    }
    if config_file:
        env["ANSIBLE_CONFIG"] = config_file
    return env


class _Session:
    """One slot's long-lived ansible-runner run, talking over the fan-out's socket."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.conn: Any | None = None
        self.fh: Any | None = None
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.captured: Dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        self.own_thread = True  # False: the session is one task of a shared pool run

    def alive(self) -> bool:
        return self.fh is not None and not self.ended.is_set()


class SlotDispatcher(RunnerDispatcher):
    """Reuses one ansible-runner run per slot for many batches (prng.cluster.fanout_slot):
    the ~1-2 s of controller CPU that starting ansible-playbook costs is paid once per
    slot, not once per batch. A slot whose run ends (host unreachable) gets a new run on
    its next batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import socket
        import tempfile

        self.sock_dir = tempfile.mkdtemp(prefix="fanout-")  # mode 0700: only we connect
        self.sock_path = os.path.join(self.sock_dir, "s")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.sock_path)
        self.server.listen(256)
        self.sessions: Dict[str, _Session] = {}
        self.hosts: Dict[str, HostSpec] = {}
        threading.Thread(target=self._accept, name="fanout-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.server.accept()
            except OSError:
                return
            fh = conn.makefile("rwb")
            line = fh.readline()
            try:
                hello = json.loads(line)
                key = f"{hello['host']}/{int(hello['slot'])}"
            except (ValueError, KeyError, TypeError):
                conn.close()
                continue
            with self.lock:
                sess = self.sessions.get(key)
            if sess is None:
                conn.close()
                continue
            sess.conn, sess.fh = conn, fh
            sess.connected.set()

    @staticmethod
    def gpu_args(host: HostSpec, slot: int) -> Dict[str, Any]:
        """Host-level options of prng.cluster.gpu_job for one slot (slot i binds GPU i)."""
        args: Dict[str, Any] = {
            "gpu_type": host.gpu_type,
            "dispatch_root": host.prng_home + "/dispatch",
            "start_stagger_seconds": host.start_stagger_seconds,
            "state_dir": host.prng_home + "/run",
            "inline_max_bytes": INLINE_MAX_BYTES,
        }
        if host.gpu_type != "cpu":
            args["gpu_index"] = slot
        if host.env_file:
            args["env_file"] = host.env_file
        return args

    def _start(self, host: HostSpec, slot: int) -> _Session:
        import ansible_runner

        key = f"{host.name}/{slot}"
        sess = _Session(key)
        with self.lock:
            self.sessions[key] = sess
            self.seq_sessions = getattr(self, "seq_sessions", 0) + 1
            n = self.seq_sessions
        self.hosts[host.name] = host
        pdir = os.path.join(self.run_dir, "dispatch", f"slot-{host.name}-{slot}-{n}")
        os.makedirs(os.path.join(pdir, "project"), exist_ok=True)
        gpu_args = self.gpu_args(host, slot)
        play = [
            {
                "name": "fan-out slot",
                "hosts": host.name,
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "serve slot",
                        "prng.cluster.fanout_slot": {
                            "socket": self.sock_path,
                            "host": host.name,
                            "slot": slot,
                            "gpu_args": gpu_args,
                        },
                    }
                ],
            }
        ]
        with open(os.path.join(pdir, "project", "slot.yml"), "w") as fh:
            yaml.dump(play, fh, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=1 << 20)

        def on_event(event: Dict[str, Any]) -> bool:
            name = event.get("event", "")
            data = event.get("event_data", {})
            if name == "runner_on_unreachable":
                sess.captured["unreachable"] = str(data.get("res", {}).get("msg", "unreachable"))[:500]
            elif name == "runner_on_failed":
                sess.captured["failed"] = str(data.get("res", {}).get("msg", "failed"))[:500]
            return False

        def work() -> None:
            try:
                runner = ansible_runner.run(
                    private_data_dir=pdir,
                    playbook="slot.yml",
                    inventory=self.inventory,
                    limit=host.name,
                    envvars=self.envvars,
                    quiet=True,
                    event_handler=on_event,
                    cancel_callback=self.cancel.is_set,
                    settings={"suppress_ansible_output": True},
                    ident="run",
                )
                sess.captured["status"] = runner.status
                if runner.rc == 0 and not self.keep_artifacts:
                    shutil.rmtree(pdir, ignore_errors=True)
            except Exception as exc:
                sess.captured["failed"] = f"ansible-runner: {exc}"
            finally:
                sess.ended.set()
                sess.connected.set()

        sess.thread = threading.Thread(target=work, name="fanout-slot-" + key, daemon=True)
        sess.thread.start()
        return sess

    def _ended_result(self, res: DispatchResult, sess: _Session) -> DispatchResult:
        if sess.thread is not None and sess.own_thread:
            sess.thread.join(30)
        sess.ended.set()
        if self.cancel.is_set():
            res.status, res.error = "cancelled", "controller stopped"
        elif "unreachable" in sess.captured:
            res.status, res.error = "unreachable", sess.captured["unreachable"]
        else:
            res.status = "error"
            res.error = sess.captured.get("failed", "slot run ended ({})".format(sess.captured.get("status")))
        return res

    def run(
        self,
        dispatch_id: str,
        host: HostSpec,
        slot: int,
        jobs: List[Job],
        expect: Callable[[Job], Dict[str, Any]],
    ) -> DispatchResult:
        res = DispatchResult(
            dispatch_id=dispatch_id, host=host.name, slot=slot, jobs=jobs, started=time.time()
        )
        key = f"{host.name}/{slot}"
        with self.lock:
            sess = self.sessions.get(key)
        if sess is not None and sess.fh is None and not sess.ended.is_set():
            sess.connected.wait(600)  # a pool session still starting
            res.session_start_s = time.time() - res.started
        if sess is None or not sess.alive():
            sess = self._start(host, slot)
            sess.connected.wait(600)
            res.session_start_s = time.time() - res.started
        if not sess.alive():
            res.wall_s = time.time() - res.started
            return self._ended_result(res, sess)
        incoming = os.path.join(self.run_dir, "incoming", dispatch_id)
        os.makedirs(incoming, exist_ok=True)
        remote = self.remote_dir(host, dispatch_id)
        with self.lock:
            remove, self.pulled[host.name] = self.pulled.get(host.name, []), []
        msg = {
            "op": "batch",
            "dispatch_id": dispatch_id,
            "work_dir": remote,
            "remove": remove,
            "incoming": incoming,
            "jobs": [host_job(j, host, slot, remote + "/out", expect(j)) for j in jobs],
        }
        reply: Dict[str, Any] | None = None
        try:
            if sess.fh is None:
                raise OSError("slot session has no connection")
            sess.fh.write((json.dumps(msg) + "\n").encode())
            sess.fh.flush()
            line = sess.fh.readline()
            reply = json.loads(line) if line else None
        except (OSError, ValueError):
            reply = None
        res.incoming = incoming
        res.wall_s = time.time() - res.started
        if reply is None:
            sess.fh = None
            with self.lock:
                self.pulled.setdefault(host.name, []).extend(remove)
            return self._ended_result(res, sess)
        res.job_results = {str(j.get("id")): j for j in reply.get("jobs", [])}
        res.module_s, res.slot_s = float(reply.get("module_s", 0.0)), float(reply.get("slot_s", 0.0))
        res.status, res.error = reply.get("status", "error"), reply.get("error", "")
        with self.lock:
            self.pulled.setdefault(host.name, []).extend([remote] if res.status == "ok" else remove)
        if res.status == "unreachable":
            sess.fh = None
        return res

    def cleanup(self, res: DispatchResult) -> None:
        if res.status == "ok" and not self.keep_artifacts and res.incoming:
            shutil.rmtree(res.incoming, ignore_errors=True)

    def finish(self, hosts: List[HostSpec]) -> None:
        """Stop every slot session; each removes this run's folders on its host."""
        live = {h.name for h in hosts}
        with self.lock:
            sessions = list(self.sessions.values())
        for sess in sessions:
            host = sess.key.rsplit("/", 1)[0]
            if sess.fh is None and not sess.ended.is_set():
                sess.connected.wait(60)  # a pool slot that never got work: stop it too
            if not sess.alive():
                continue
            spec = self.hosts.get(host)
            remove = [f"{spec.prng_home}/dispatch/{self.run_id}"] if spec and host in live else []
            try:
                if sess.fh is None:
                    raise OSError("slot session has no connection")
                sess.fh.write((json.dumps({"op": "stop", "remove": remove}) + "\n").encode())
                sess.fh.flush()
            except OSError:
                pass
        for sess in sessions:
            if sess.thread is not None:
                sess.thread.join(60)
        self.close()

    def close(self) -> None:
        try:
            self.server.close()
        finally:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            # Any slot run still alive now (stop not delivered) is ended, not orphaned.
            if any(not sess.ended.is_set() for sess in self.sessions.values()):
                self.cancel.set()


class PoolDispatcher(SlotDispatcher):
    """One ansible-runner run for every slot of every host: each slot is an alias host
    (`<host>__s<slot>`) in a generated inventory, its fanout_slot task is delegated to the
    real host (so the real host's connection settings apply) and the play's `free`
    strategy runs all of them at once, one forked worker each. The ~1-2 s of CPU that
    starting ansible-playbook costs is paid once per run. A slot whose task ended (its
    host went away) gets a run of its own on its next batch."""

    def start_pool(self, hosts: List[HostSpec]) -> None:
        import ansible_runner

        aliases: Dict[str, Any] = {}
        sessions: Dict[str, _Session] = {}
        for host in hosts:
            self.hosts[host.name] = host
            for slot in range(host.slots):
                alias = f"{host.name}__s{slot}"
                aliases[alias] = {
                    "fanout_real_host": host.name,
                    "fanout_slot": slot,
                    "fanout_gpu_args": self.gpu_args(host, slot),
                }
                sess = _Session(f"{host.name}/{slot}")
                sess.own_thread = False
                sessions[alias] = sess
        if not aliases:
            return
        with self.lock:
            for sess in sessions.values():
                self.sessions[sess.key] = sess
        pdir = os.path.join(self.run_dir, "dispatch", "pool")
        os.makedirs(os.path.join(pdir, "project"), exist_ok=True)
        slots_inv = os.path.join(pdir, "slots.yml")
        with open(slots_inv, "w") as fh:
            yaml.dump({"fanout_slots": {"hosts": aliases}}, fh, Dumper=_Dumper, sort_keys=False)
        play = [
            {
                "name": "fan-out slots",
                "hosts": "fanout_slots",
                "gather_facts": False,
                "strategy": "free",
                "tasks": [
                    {
                        "name": "serve slot",
                        "prng.cluster.fanout_slot": {
                            "socket": self.sock_path,
                            "host": "{{ fanout_real_host }}",
                            "slot": "{{ fanout_slot }}",
                            "gpu_args": "{{ fanout_gpu_args }}",
                        },
                        "delegate_to": "{{ fanout_real_host }}",
                    }
                ],
            }
        ]
        with open(os.path.join(pdir, "project", "pool.yml"), "w") as fh:
            yaml.dump(play, fh, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=1 << 20)

        def on_event(event: Dict[str, Any]) -> bool:
            data = event.get("event_data", {})
            sess = sessions.get(str(data.get("host", "")))
            if sess is None:
                return False
            name = event.get("event", "")
            if name == "runner_on_unreachable":
                sess.captured["unreachable"] = str(data.get("res", {}).get("msg", "unreachable"))[:500]
                sess.ended.set()
            elif name == "runner_on_failed":
                sess.captured["failed"] = str(data.get("res", {}).get("msg", "failed"))[:500]
                sess.ended.set()
            elif name == "runner_on_ok":
                sess.ended.set()
            if sess.ended.is_set():
                sess.connected.set()
            return False

        def work() -> None:
            try:
                runner = ansible_runner.run(
                    private_data_dir=pdir,
                    playbook="pool.yml",
                    inventory=[*self.inventory, slots_inv],
                    limit="fanout_slots",
                    envvars=self.envvars,
                    quiet=True,
                    event_handler=on_event,
                    forks=len(aliases) + 1,
                    cancel_callback=self.cancel.is_set,
                    settings={"suppress_ansible_output": True},
                    ident="run",
                )
                status = runner.status
                if runner.rc == 0 and not self.keep_artifacts:
                    shutil.rmtree(pdir, ignore_errors=True)
            except Exception as exc:
                status = f"error: {exc}"
            for sess in sessions.values():
                sess.captured.setdefault("status", status)
                sess.ended.set()
                sess.connected.set()

        thread = threading.Thread(target=work, name="fanout-pool", daemon=True)
        for sess in sessions.values():
            sess.thread = thread
        thread.start()
