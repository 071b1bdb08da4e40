# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The fan-out's messages, one JSON object per line, the same on both hops:

    controller (scheduler)  <-unix socket->  host task (fanout_host, one per host)
    host task               <-ssh stdio--->  host agent (fanout_agent, runs the host's slots)

  hello   first message each way: the host task names its host to the controller and the
          run to its agent (`run_id`, `dispatch_root`, `lease` = the run's ramdisk lease
          file, renewed by the agent while it runs, or ""); the agent answers with its `pid`
  batch   controller -> task -> agent: one dispatch = jobs for one slot (`dispatch_id`,
          `slot`, `work_dir`, `jobs`, `run` = the gpu_job options of the slot, `remove` =
          folders already pulled; the controller adds `incoming`, where the task puts the
          pulled outputs)
  result  agent -> task -> controller: the dispatch's outcome (`status` ok | unreachable |
          error, `jobs` = one result per job, `fetch` = outputs to pull, inline when small)
  stop    controller -> task -> agent: remove `remove` (this run's folders) and end

Standard library only: the agent imports this on the host.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

HELLO, BATCH, RESULT, STOP = "hello", "batch", "result", "stop"
REQUIRED = {
    HELLO: (),
    BATCH: ("dispatch_id", "slot", "work_dir", "jobs", "run"),
    RESULT: ("dispatch_id", "status"),
    STOP: ("remove",),
}
STATUSES = ("ok", "unreachable", "error")
# Marks the agent's command line on the host (a newer agent of the same run replaces it).
AGENT_TAG = "prng-fanout-agent"
# The agent's bootstrap, run as `python -u -c BOOT prng-fanout-agent <run_id>`: the first
# line on stdin gives the size of the agent's source, which follows; messages come after.
BOOT = (
    "import sys;n=int(sys.stdin.buffer.readline());"
    "exec(compile(sys.stdin.buffer.read(n),'prng-fanout-agent','exec'))"
)


class ProtocolError(ValueError):
    """A line that is not one of the messages above."""


def check(msg: Any) -> Dict[str, Any]:
    if not isinstance(msg, dict) or msg.get("op") not in REQUIRED:
        raise ProtocolError(f"not a fan-out message: {str(msg)[:200]}")
    missing = [k for k in REQUIRED[msg["op"]] if k not in msg]
    if missing:
        raise ProtocolError("{} message without {}".format(msg["op"], ", ".join(missing)))
    if msg["op"] == RESULT and msg["status"] not in STATUSES:
        raise ProtocolError(f"result status {msg['status']!r} is not one of {', '.join(STATUSES)}")
    return msg


def encode(msg: Dict[str, Any]) -> bytes:
    return json.dumps(check(msg), separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    try:
        return check(json.loads(line))
    except ValueError as exc:
        raise ProtocolError(f"not a fan-out message ({exc}): {line[:200]!r}") from None


def write(fh: Any, msg: Dict[str, Any]) -> None:
    fh.write(encode(msg))
    fh.flush()


def read(fh: Any) -> Dict[str, Any] | None:
    """The next message, or None at the end of the stream."""
    line = fh.readline()
    return decode(line) if line else None


def hello(**fields: Any) -> Dict[str, Any]:
    return dict(fields, op=HELLO)


def batch(
    dispatch_id: str, slot: int, work_dir: str, jobs: List[Dict[str, Any]], run: Dict[str, Any], **more: Any
) -> Dict[str, Any]:
    return dict(more, op=BATCH, dispatch_id=dispatch_id, slot=slot, work_dir=work_dir, jobs=jobs, run=run)


def result(dispatch_id: str, status: str, error: str = "", **more: Any) -> Dict[str, Any]:
    return dict(more, op=RESULT, dispatch_id=dispatch_id, status=status, error=error)


def stop(remove: List[str]) -> Dict[str, Any]:
    return {"op": STOP, "remove": list(remove)}


def agent_source(modules: List[Any]) -> bytes:
    """The agent's source as sent after BOOT: each module (job_validate, job_runner, this
    one, fanout_agent; dependencies first) registered under its own name, then the agent's
    main(). Nothing is written to the host's disk."""
    parts = ["import sys"]
    for mod in modules:
        with open(mod.__file__, encoding="utf-8") as fh:
            parts.append(f"_register({mod.__name__!r}, {fh.read()!r})")
    parts.append(f"sys.modules[{modules[-1].__name__!r}].main()")
    return "\n".join([_REGISTER, *parts]).encode()


_REGISTER = """
def _register(name, source):
    import sys, types
    parts = name.split(".")
    for i in range(1, len(parts)):
        pkg = ".".join(parts[:i])
        if pkg not in sys.modules:
            sys.modules[pkg] = types.ModuleType(pkg)
            sys.modules[pkg].__path__ = []
    module = types.ModuleType(name)
    module.__file__ = "<prng-fanout>/" + parts[-1] + ".py"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
"""
