# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

# Documentation: plugins/modules/fanout_host.py (ansible-doc prng.cluster.fanout_host).
import base64
import os
import socket
import subprocess
import threading
import time
from collections import deque
from typing import Any, Dict, List

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible_collections.prng.cluster.plugins.module_utils import (
    defaults,
    fanout_agent,
    fanout_protocol,
    fsutil,
    job_runner,
    job_validate,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.session import session_command

proto = fanout_protocol
# The agent's code, sent over the session after proto.BOOT (dependencies first).
AGENT_MODULES = [defaults, fsutil, job_validate, job_runner, fanout_protocol, fanout_agent]


class _Agent:
    """The host's agent process at the other end of one SSH session (or a local process
    for `ansible_connection: local`), and the dispatches it holds."""

    def __init__(self, action: ActionModule, argv: List[Any], pass_fds: Any, first: Dict[str, Any]) -> None:
        self.action = action
        self.started = time.time()
        self.ready_s: float | None = None  # agent started -> its hello
        self.inflight: Dict[str, str] = {}  # dispatch id -> controller folder for its outputs
        self.alive = True
        self.errors: deque[str] = deque(maxlen=8)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds or (),
        )
        self.stdin: Any = self.proc.stdin
        self.stdout: Any = self.proc.stdout
        self.stderr: Any = self.proc.stderr
        source = proto.agent_source(AGENT_MODULES)
        self.write(str(len(source)).encode() + b"\n" + source)
        hello = proto.hello(
            run_id=first["run_id"], dispatch_root=first["dispatch_root"], lease=first.get("lease", "")
        )
        self.write(proto.encode(hello))
        self.stderr_reader = threading.Thread(target=self._stderr, daemon=True)
        self.stderr_reader.start()
        threading.Thread(target=self._read, daemon=True).start()

    def write(self, data: bytes) -> None:
        try:
            self.stdin.write(data)
            self.stdin.flush()
        except (OSError, ValueError):
            pass  # its reader sees the end and reports what it held

    def _stderr(self) -> None:
        for line in self.stderr:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.errors.append(text[:300])

    def _read(self) -> None:
        try:
            for line in self.stdout:
                msg = proto.decode(line)
                if msg["op"] == proto.HELLO:
                    self.ready_s = time.time() - self.started
                elif msg["op"] == proto.RESULT:
                    with self.action.lock:
                        incoming = self.inflight.pop(msg["dispatch_id"], None)
                    if incoming is None:
                        continue
                    reply = self.action.pull(msg, incoming)
                    if self.ready_s is not None:  # the agent's start-up, counted once
                        reply["agent_start_s"], self.ready_s = round(self.ready_s, 3), None
                    self.action.tell(reply)
        except proto.ProtocolError as exc:
            self.errors.append(str(exc))
        rc = self.proc.wait()
        self.stderr_reader.join(5)  # its last words name the reason
        with self.action.lock:
            self.alive = False
            lost, self.inflight = self.inflight, {}
        why = "lost the agent on {} (exit {}): {}".format(
            self.action.host, rc, " | ".join(self.errors) or "the session ended"
        )
        for dispatch_id in lost:
            self.action.tell(proto.result(dispatch_id, "unreachable", error=why[:800]))

    def close(self, wait: float) -> None:
        """End of stdin: the agent kills whatever still runs and exits (i16)."""
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # fetch_file needs no remote temp folder
    _VALID_ARGS = frozenset(("socket",))

    def run(self, tmp: Any = None, task_vars: Any = None) -> Dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec={"socket": {"type": "path", "required": True}})[1]
        self.task_vars = task_vars or {}
        self.host = str(self.task_vars.get("inventory_hostname"))
        self.lock = threading.Lock()
        self.agent: _Agent | None = None
        self.agents_started = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args["socket"])
        self.ctl = sock.makefile("rwb")
        self.tell(proto.hello(host=self.host))
        batches = 0
        try:
            while True:
                msg = proto.read(self.ctl)
                if msg is None:
                    return dict(result, failed=True, msg="fan-out controller went away", batches=batches)
                if msg["op"] == proto.BATCH:
                    self.submit(msg)
                    batches += 1
                elif msg["op"] == proto.STOP:
                    if self.agent is not None and self.agent.alive:
                        self.agent.write(proto.encode(msg))
                    return dict(result, changed=batches > 0, batches=batches, agents=self.agents_started)
        finally:
            if self.agent is not None:
                self.agent.close(120.0)
            self.ctl.close()
            sock.close()

    def tell(self, msg: Dict[str, Any]) -> None:
        """To the controller (from the main thread and the agent's reader)."""
        with self.lock:
            try:
                proto.write(self.ctl, msg)
            except (OSError, ValueError):
                pass  # the controller is gone: the main loop reads the end and stops

    def submit(self, msg: Dict[str, Any]) -> None:
        """Hand a batch to the host's agent, starting one (a new SSH session) if there is none."""
        incoming = msg.pop("incoming")
        worker_python = msg.pop("worker_python")
        with self.lock:
            agent = self.agent if self.agent is not None and self.agent.alive else None
        if agent is None:
            try:
                agent = _Agent(self, *self.agent_command(worker_python, msg["run_id"]), msg)
            except Exception as exc:  # cannot even start ssh: like a host that does not answer
                self.tell(
                    proto.result(msg["dispatch_id"], "unreachable", error=f"cannot start the agent: {exc}")
                )
                return
            self.agent = agent
            self.agents_started += 1
        with self.lock:
            registered = agent.alive
            if registered:
                agent.inflight[msg["dispatch_id"]] = incoming
        if not registered:
            self.tell(proto.result(msg["dispatch_id"], "unreachable", error=f"lost the agent on {self.host}"))
            return
        agent.write(proto.encode(msg))

    def agent_command(self, worker_python: str, run_id: str) -> tuple[List[Any], Any]:
        """The agent's argv through this host's own connection settings (the inventory's
        user, key, port, ssh args and ControlPersist socket), and the fds ssh keeps."""
        python = self.task_vars.get("ansible_python_interpreter")
        python = str(self._templar.template(python)) if python else ""
        if not python or python.startswith("auto"):
            python = worker_python  # the worker venv's Python, checked by the step preflight
        remote = [python, "-u", "-c", proto.BOOT, proto.AGENT_TAG, run_id]
        return session_command(self._connection, remote)

    def pull(self, msg: Dict[str, Any], incoming: str) -> Dict[str, Any]:
        """Put a result's outputs under `incoming`/<job id>/: inline ones from the message,
        larger ones fetched over the connection. The controller gets the rest."""
        t0 = time.time()
        reply = {k: v for k, v in msg.items() if k not in ("fetch", "binding")}
        try:
            for item in msg.get("fetch") or []:
                dest_dir = os.path.join(incoming, item["job_id"])
                os.makedirs(dest_dir, exist_ok=True)
                dest = os.path.join(dest_dir, os.path.basename(item["src"]))
                if "content" in item:
                    with open(dest, "wb") as out:
                        out.write(base64.b64decode(item["content"]))
                else:
                    self._connection.fetch_file(item["src"], dest)
        except AnsibleConnectionFailure as exc:
            reply.update(status="unreachable", error=str(exc)[:500])
        except Exception as exc:  # report it; the session's protocol stays intact
            reply.update(status="error", error=f"pull: {type(exc).__name__}: {str(exc)[:500]}")
        reply["pull_s"] = round(time.time() - t0, 3)
        return reply
