# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out's agent on a host: one process per host and run, started by the host's
fanout_host task over one SSH session, that runs the batches of all the host's slots at
once (a thread per busy slot; each job its own process group bound to its slot's GPU, see
job_runner.run_batch) and streams each batch's result back when it ends.

The session is its lifeline: when stdin ends (the controller stopped or died, the link
went away) or a signal comes, every job's process group is killed (i16). A newer agent of
the same run on this host (a rerun, or the host's task reconnecting after a cut link)
replaces an older one, so two never race. Standard library only; nothing of it is written
to the host's disk (fanout_protocol.BOOT).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from typing import Any, Dict

from ansible_collections.prng.cluster.plugins.module_utils import fanout_protocol as proto
from ansible_collections.prng.cluster.plugins.module_utils.job_runner import (
    kill_all,
    remove_inside,
    run_batch,
    stop_on_signals,
)


class Agent:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.lock = threading.Lock()  # one writer at a time on stdout
        self.root = ""
        self.pidfile = ""

    def send(self, msg: Dict[str, Any]) -> None:
        with self.lock:
            try:
                proto.write(self.out, msg)
            except (BrokenPipeError, ValueError):
                pass  # the session is gone: stdin ends next and everything stops

    def serve(self, stdin: Any) -> None:
        msg = proto.read(stdin)
        if msg is None or msg["op"] != proto.HELLO:
            return
        self.claim(str(msg["run_id"]), str(msg["dispatch_root"]))
        if msg.get("lease"):
            threading.Thread(target=renew_lease, args=(str(msg["lease"]),), daemon=True).start()
        self.send(proto.hello(pid=os.getpid(), python=platform.python_version()))
        while True:
            msg = proto.read(stdin)
            if msg is None:
                return  # the controller or the link is gone
            if msg["op"] == proto.BATCH:
                threading.Thread(target=self.run, args=(msg,), daemon=True).start()
            elif msg["op"] == proto.STOP:
                remove_inside(self.root, msg["remove"])
                return

    def run(self, msg: Dict[str, Any]) -> None:
        """One dispatch on one slot; its result goes back as soon as it ends."""
        started = time.time()
        gone = inputs_gone(str(msg.get("inputs") or ""))
        if gone:  # a host restarted or cleared: never run a job without its inputs (i29)
            self.send(proto.result(msg["dispatch_id"], "unreachable", error=gone))
            return
        try:
            remove_inside(self.root, msg.get("remove") or [])
            res = run_batch(msg["jobs"], msg["work_dir"], self.root, **msg["run"])
            reply = proto.result(msg["dispatch_id"], "ok", run_s=round(time.time() - started, 3), **res)
        except Exception as exc:  # report it; the other slots keep running
            traceback.print_exc()
            reply = proto.result(msg["dispatch_id"], "error", error=f"{type(exc).__name__}: {exc}"[:500])
        self.send(reply)

    def claim(self, run_id: str, dispatch_root: str) -> None:
        """Become this run's agent on this host: an older one (its controller is gone, or
        its link was cut) is stopped first, which kills its jobs."""
        self.root = os.path.realpath(os.path.expanduser(dispatch_root))
        folder = os.path.join(self.root, run_id)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.pidfile = os.path.join(folder, "agent.pid")
        try:
            with open(self.pidfile) as fh:
                old = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and _is_agent(old, run_id):
            os.kill(old, signal.SIGTERM)
            deadline = time.time() + 15
            while time.time() < deadline and _is_agent(old, run_id):
                time.sleep(0.1)
        with open(self.pidfile + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(self.pidfile + ".tmp", self.pidfile)

    def release(self) -> None:
        try:
            with open(self.pidfile) as fh:
                mine = fh.read().strip() == str(os.getpid())
            if mine:
                os.unlink(self.pidfile)
        except OSError:
            pass


def inputs_gone(folder: str) -> str:
    """Why the step's verified ramdisk copy in `folder` is no longer there ('' while it is,
    or when the batch names none): its manifest (written last by the preload) and every
    file it lists at its recorded size. A host that restarted (tmpfs emptied) must not run
    jobs that would fail on missing inputs and stop the whole run as an input error."""
    if not folder:
        return ""
    manifest = os.path.join(folder, ".manifest.json")
    try:
        with open(manifest) as fh:
            records = json.load(fh)["files"]
        for rec in records:
            if os.path.getsize(os.path.join(folder, rec["name"])) != int(rec["size"]):
                raise ValueError(f"{rec['name']} is not the size the manifest records")
    except FileNotFoundError as exc:
        why = f"{exc.filename} is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"{manifest} does not match the folder ({exc})"
    else:
        return ""
    return (
        f"the step's verified inputs are gone: {why} (ramdisk cleared or host restarted); "
        "its jobs go to the other hosts; run the step again to preload them here"
    )[:500]


def renew_lease(path: str, every_max: float = 300.0) -> None:
    """Keep the run's ramdisk lease alive while this agent runs (a lease lives until its
    file's mtime + lease_seconds): touch it every quarter lease, at most every `every_max`
    seconds. A lease given back or cleared is not brought back; a crashed controller's agent
    ends with its session, and the lease then ends by itself."""
    while True:
        try:
            with open(path) as fh:
                seconds = float(json.load(fh).get("lease_seconds") or 0)
            os.utime(path)
        except (OSError, ValueError, TypeError, AttributeError):
            return
        time.sleep(max(1.0, min(every_max, seconds / 4)))


def _is_agent(pid: int, run_id: str) -> bool:
    """True while `pid` is an agent of this run (its command line says so)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return proto.AGENT_TAG.encode() in args and run_id.encode() in args


def main() -> None:
    stop_on_signals()
    agent = Agent(sys.stdout.buffer)
    try:
        agent.serve(sys.stdin.buffer)
    finally:
        kill_all(2.0)  # nothing this agent started outlives it (i16)
        agent.release()
