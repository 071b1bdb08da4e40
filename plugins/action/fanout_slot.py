# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)

from __future__ import annotations

# Documentation: plugins/modules/fanout_slot.py (ansible-doc prng.cluster.fanout_slot).
import base64
import json
import os
import socket
import time
from typing import Any, Dict

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(("socket", "host", "slot", "gpu_args"))

    def _send(self, fh: Any, msg: Dict[str, Any]) -> None:
        fh.write((json.dumps(msg) + "\n").encode())
        fh.flush()

    def _recv(self, fh: Any) -> Dict[str, Any] | None:
        line = fh.readline()
        return json.loads(line) if line else None

    def run(self, tmp: Any = None, task_vars: Any = None) -> Dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(args["socket"]))
        fh = sock.makefile("rwb")
        host = args.get("host") or self._task.delegate_to or task_vars.get("inventory_hostname")
        self._send(fh, {"op": "hello", "host": str(host), "slot": int(args["slot"])})
        batches = 0
        try:
            while True:
                msg = self._recv(fh)
                if msg is None:
                    return dict(result, failed=True, msg="fan-out controller went away", batches=batches)
                module_args = dict(args["gpu_args"])
                if msg.get("op") == "stop":
                    if msg.get("remove"):
                        module_args.update(jobs=[], remove=msg["remove"])
                        self._execute_module(
                            "prng.cluster.gpu_job", module_args=module_args, task_vars=task_vars
                        )
                    return dict(result, changed=batches > 0, batches=batches)
                module_args.update(jobs=msg["jobs"], work_dir=msg["work_dir"], remove=msg.get("remove", []))
                reply: Dict[str, Any] = {"op": "result", "dispatch_id": msg["dispatch_id"], "status": "ok"}
                t0 = time.time()
                try:
                    res = self._execute_module(
                        "prng.cluster.gpu_job", module_args=module_args, task_vars=task_vars
                    )
                    if res.get("unreachable"):
                        raise AnsibleConnectionFailure(res.get("msg", "unreachable"))
                    reply["jobs"] = res.get("jobs", [])
                    reply["module_s"] = round(time.time() - t0, 3)
                    if res.get("failed"):
                        reply.update(
                            status="error", error="gpu_job: {}".format(str(res.get("msg", ""))[:500])
                        )
                    else:
                        for item in res.get("fetch", []):
                            dest_dir = os.path.join(msg["incoming"], item["job_id"])
                            os.makedirs(dest_dir, exist_ok=True)
                            dest = os.path.join(dest_dir, os.path.basename(item["src"]))
                            if "content" in item:  # small outputs came back in the result
                                with open(dest, "wb") as out:
                                    out.write(base64.b64decode(item["content"]))
                            else:
                                self._connection.fetch_file(item["src"], dest)
                except AnsibleConnectionFailure as exc:
                    reply.update(status="unreachable", error=str(exc)[:500])
                except Exception as exc:  # report, keep the session's protocol intact
                    reply.update(status="error", error=f"{type(exc).__name__}: {str(exc)[:500]}")
                batches += 1
                reply["slot_s"] = round(time.time() - t0, 3)
                self._send(fh, reply)
                if reply["status"] == "unreachable":
                    return dict(result, unreachable=True, msg=reply["error"], batches=batches)
        finally:
            fh.close()
            sock.close()
