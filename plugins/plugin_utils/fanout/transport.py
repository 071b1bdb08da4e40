# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out's transport: one long-lived task per host, fed batches over a local socket.

One ansible-runner play serves every host of the step (run_play): each host runs one
prng.cluster.fanout_host task, in one forked Ansible worker, for as long as the step lasts.
That task connects back to this module's Unix socket (in a mode-0700 folder) and starts the
host's agent over ONE SSH session, which runs all of the host's slots (fanout_agent).
The controller's cost is one fork and one SSH session per host, whatever its slot count.

send() is non-blocking: the batch goes to the host's task and its result comes back
through the `reply` callback, from the host's reader thread. A host whose task ended (its
worker died, the play ended) gets a play of its own on its next batch. The controller
never touches a GPU (i6).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from ansible_collections.prng.cluster.plugins.module_utils import fanout_protocol as proto
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import dispatcher
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.dispatcher import DispatchResult
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import Job
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.runner import run_play

Reply = Callable[[DispatchResult], None]


@dataclass
class _Pending:
    reply: Reply
    jobs: List[Job]
    slot: int
    started: float
    incoming: str
    work_dir: str
    remove: List[str]


@dataclass
class _Link:
    """One host's task: starting (its play runs, no hello yet), up, or ended."""

    host: HostSpec
    play: int
    state: str = "starting"
    conn: Any = None
    fh: Any = None
    outbox: List[Dict[str, Any]] = field(default_factory=list)
    pending: Dict[str, _Pending] = field(default_factory=dict)
    error: str = ""
    used: bool = False  # it got a batch: its run folder on the host is to be removed
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    settled: threading.Event = field(default_factory=threading.Event)  # up or ended


class HostLinks:
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
        self.links: Dict[str, _Link] = {}
        self.pulled: Dict[str, List[str]] = {}  # host -> dispatch folders already pulled
        self.plays: Dict[int, threading.Thread] = {}
        self.sock_dir = tempfile.mkdtemp(prefix="fanout-")  # mode 0700: only we connect
        self.sock_path = os.path.join(self.sock_dir, "s")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.sock_path)
        self.server.listen(1024)
        threading.Thread(target=self._accept, name="fanout-accept", daemon=True).start()

    # -- plays -----------------------------------------------------------------------------
    def start(self, hosts: List[HostSpec]) -> None:
        """One play for all hosts: paid once per step, not per host or per batch."""
        if hosts:
            with self.lock:
                self._launch(hosts)

    def _launch(self, hosts: List[HostSpec]) -> None:
        """Start a play serving `hosts` (lock held)."""
        play = len(self.plays) + 1
        for host in hosts:
            old = self.links.get(host.name)
            link = _Link(host, play)
            if old is not None:
                link.used = old.used
            self.links[host.name] = link
        by_host = {h.name: self.links[h.name] for h in hosts}

        def on_event(event: Dict[str, Any]) -> None:
            data = event.get("event_data") or {}
            link = by_host.get(str(data.get("host", "")))
            name = event.get("event", "")
            if link is None or name not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
                return
            res = data.get("res") or {}
            link.error = link.error or str(res.get("msg") or name)[:500]
            if link.state == "starting":  # it ended without ever connecting
                self._end(link, f"fan-out task for {link.host.name} ended: {link.error}")

        thread, _runner = run_play(
            os.path.join(self.run_dir, "dispatch", f"play-{play}"),
            [h.name for h in hosts],
            [{"name": "serve host", "prng.cluster.fanout_host": {"socket": self.sock_path}}],
            self.inventory,
            self.envvars,
            on_event,
            self.cancel,
            self.keep_artifacts,
        )

        def watch() -> None:
            thread.join()
            for link in by_host.values():
                self._end(link, f"fan-out play for {link.host.name} ended: {link.error or 'no reason given'}")

        self.plays[play] = thread
        threading.Thread(target=watch, name=f"fanout-play-{play}", daemon=True).start()

    # -- the socket ------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="fanout-link", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Read one host task's messages: hello, then results until it ends."""
        fh = conn.makefile("rwb")
        link = None
        try:
            hello = proto.read(fh)
            with self.lock:
                found = self.links.get(str((hello or {}).get("host")))
                if hello is None or hello["op"] != proto.HELLO or found is None or found.state != "starting":
                    return
                link = found
                link.conn, link.fh, link.state = conn, fh, "up"
                outbox, link.outbox = link.outbox, []
            link.settled.set()
            for msg in outbox:
                self._write(link, msg)
            while True:
                msg = proto.read(fh)
                if msg is None:
                    break
                if msg["op"] == proto.RESULT:
                    self._result(link, msg)
        except (OSError, proto.ProtocolError) as exc:
            if link is not None:
                link.error = link.error or str(exc)[:500]
        finally:
            if link is not None:
                self._end(link, f"lost the fan-out task of {link.host.name}: {link.error or 'it ended'}")
            fh.close()
            conn.close()

    def _write(self, link: _Link, msg: Dict[str, Any]) -> None:
        with link.write_lock:
            try:
                proto.write(link.fh, msg)
            except (OSError, ValueError) as exc:  # its reader sees the end and reports
                link.error = link.error or f"write: {exc}"

    def _end(self, link: _Link, why: str) -> None:
        """The host's task is gone: every dispatch it held comes back unreachable (its jobs
        are requeued, the host probed later) or cancelled when we are stopping."""
        with self.lock:
            if link.state == "ended":
                return
            link.state = "ended"
            pending, link.pending = link.pending, {}
        link.settled.set()
        for dispatch_id, p in pending.items():
            status = "cancelled" if self.cancel.is_set() else "unreachable"
            self._deliver(link, dispatch_id, p, {"status": status, "error": why})

    # -- dispatches ------------------------------------------------------------------------
    def send(
        self,
        dispatch_id: str,
        host: HostSpec,
        slot: int,
        jobs: List[Job],
        expect: Callable[[Job], Dict[str, Any]],
        reply: Reply,
    ) -> None:
        incoming = os.path.join(self.run_dir, "incoming", dispatch_id)
        os.makedirs(incoming, exist_ok=True)
        with self.lock:
            link = self.links.get(host.name)
            if link is None or link.state == "ended":
                self._launch([host])  # its task ended: a play of its own (the probe's)
                link = self.links[host.name]
            remove = self.pulled.pop(host.name, [])
            msg = dispatcher.batch(dispatch_id, host, slot, jobs, expect, self.run_id, remove, incoming)
            link.pending[dispatch_id] = _Pending(
                reply, jobs, slot, time.time(), incoming, msg["work_dir"], remove
            )
            link.used = True
            if link.state != "up":
                link.outbox.append(msg)
                return
        self._write(link, msg)

    def _result(self, link: _Link, msg: Dict[str, Any]) -> None:
        with self.lock:
            p = link.pending.pop(msg["dispatch_id"], None)
        if p is not None:
            self._deliver(link, msg["dispatch_id"], p, msg)

    def _deliver(self, link: _Link, dispatch_id: str, p: _Pending, msg: Dict[str, Any]) -> None:
        res = DispatchResult(
            dispatch_id,
            link.host.name,
            p.slot,
            p.jobs,
            status=msg["status"],
            error=str(msg.get("error") or ""),
            job_results={str(j.get("id")): j for j in msg.get("jobs") or []},
            incoming=p.incoming,
            started=p.started,
            wall_s=time.time() - p.started,
            agent_start_s=float(msg.get("agent_start_s") or 0.0),
            run_s=float(msg.get("run_s") or 0.0),
            pull_s=float(msg.get("pull_s") or 0.0),
        )
        with self.lock:  # pulled: removed with the next batch; not pulled: retry the removal
            self.pulled.setdefault(link.host.name, []).extend(
                [p.work_dir] if res.status == "ok" else p.remove
            )
        p.reply(res)

    def cleanup(self, res: DispatchResult) -> None:
        """Drop a dispatch's pulled copies once the scheduler moved them (kept on errors)."""
        if res.status == "ok" and not self.keep_artifacts and res.incoming:
            shutil.rmtree(res.incoming, ignore_errors=True)

    # -- the end ---------------------------------------------------------------------------
    def finish(self, live: List[HostSpec], wait: float = 120.0) -> None:
        """One stop per host: its task removes this run's folder there (live hosts that got
        work) and ends; then the plays end."""
        names = {h.name for h in live}
        deadline = time.time() + wait
        for link in list(self.links.values()):
            link.settled.wait(max(0.0, min(60.0, deadline - time.time())))
            if link.state != "up":
                continue
            remove = (
                [dispatcher.run_folder(link.host, self.run_id)]
                if link.used and link.host.name in names
                else []
            )
            self._write(link, proto.stop(remove))
        for thread in list(self.plays.values()):
            thread.join(max(0.0, deadline - time.time()))

    def close(self) -> None:
        """Stop whatever still runs (a play whose stop was not delivered is cancelled, so no
        host task outlives the fan-out) and remove the socket."""
        if any(t.is_alive() for t in self.plays.values()):
            self.cancel.set()
            for link in list(self.links.values()):
                if link.conn is None:
                    continue
                try:  # the host task reads the end of its socket and ends its agent (i16)
                    link.conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for thread in list(self.plays.values()):
                thread.join(30)
        try:
            self.server.close()
        finally:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
