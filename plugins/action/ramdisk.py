# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Controller side of prng.cluster.ramdisk: hash the sources (cached by size and mtime),
ask the host what it lacks, send only that, once, then let the host verify and commit.
While another preload of the same step runs on the host, wait for it (its claim), or take
it over when its process on this controller is gone."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import uuid

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

HASH_CHUNK = 4 * 1024 * 1024
CACHE_VERSION = 1


def _size_text(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _start_time(pid: int) -> str | None:
    """Kernel start time of a process (with the pid it names one process), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_id() -> str:
    """This controller process, as a claim records it: host:pid:start time."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def holder_gone(holder: str) -> bool:
    """True when a claim's process ran on this controller and no longer runs."""
    host, _sep, rest = str(holder or "").partition(":")
    pid, _sep, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != (start or None)


def _cache_dir() -> str:
    path = os.environ.get("PRNG_HASH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "prng-cluster", "hashes"
    )
    os.makedirs(path, exist_ok=True)
    return path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def source_digest(path: str) -> dict:
    """{name, size, sha256} of a controller file. The hash is cached by (path, size,
    mtime_ns, ctime_ns, inode); forks hashing the same file wait for one another on a lock
    instead of reading it once per host."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if not os.path.isfile(real):
        raise AnsibleError(f"source {path} is not a regular file")
    key = hashlib.sha1(real.encode()).hexdigest()
    cdir = _cache_dir()
    ident = [CACHE_VERSION, real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    entry = os.path.join(cdir, key + ".json")
    with open(os.path.join(cdir, key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(entry) as fh:
                cached = json.load(fh)
            if cached.get("ident") == ident:
                return {"name": os.path.basename(path), "size": st.st_size, "sha256": cached["sha256"]}
        except (OSError, ValueError, AttributeError):
            pass
        sha = _sha256(real)
        if os.stat(real).st_mtime_ns == st.st_mtime_ns:  # not rewritten while we read it
            tmp = f"{entry}.{uuid.uuid4().hex}"
            with open(tmp, "w") as fh:
                json.dump({"ident": ident, "sha256": sha}, fh)
            os.replace(tmp, entry)
    return {"name": os.path.basename(path), "size": st.st_size, "sha256": sha}


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(
        (
            "state",
            "root",
            "ramdisk_root",
            "step",
            "files",
            "exclusive",
            "allow_any_root",
            "remove_foreign",
            "warn_percent",
            "max_percent",
            "verify",
            "run_id",
            "lease_seconds",
            "lock_timeout",
            "clear_unused",
        )
    )

    def _sources(self, files: list) -> tuple[list[str], list[dict]]:
        paths = []
        for item in files:
            src = to_text(item)
            if not src:
                raise AnsibleError("an entry of files is empty")
            found = src
            if not os.path.isabs(src) and not os.path.isfile(src):
                # Relative: the working directory first, then the role/playbook files/ search path.
                try:
                    found = self._find_needle("files", src)
                except AnsibleError:
                    found = src
            if not os.path.isfile(found):
                raise AnsibleError(f"source file not found on the controller: {src}")
            paths.append(os.path.abspath(found))
        names = [os.path.basename(p) for p in paths]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AnsibleError(
                f"two source files share a name ({', '.join(dupes)}); names in a step must be unique"
            )
        return paths, [source_digest(p) for p in paths]

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        state = args.get("state", "status")
        files = args.pop("files", None)
        if isinstance(files, str):
            files = [f.strip() for f in files.split(",") if f.strip()]
        t0 = time.monotonic()
        try:
            if state == "preload" and not files:
                raise AnsibleError("state=preload needs files (a list of controller paths)")
            paths, manifest = self._sources(files or [])
        except (AnsibleError, OSError) as exc:
            result.update(failed=True, msg=f"ramdisk {state}: {to_text(exc)}")
            return result
        if files:
            args["_manifest"] = manifest
        # who holds a lease (a person reads it) or a claim (holder_gone reads it)
        args["_holder"] = holder_id() if state == "preload" else f"{socket.gethostname()} pid {os.getppid()}"
        if state != "preload":
            result.update(self._execute_module(module_args=args, task_vars=task_vars))
            return result
        timing = {"hash_s": round(time.monotonic() - t0, 3)}
        return self._preload(result, args, paths, manifest, task_vars, timing)

    def _preload(
        self, result: dict, args: dict, paths: list[str], manifest: list[dict], task_vars, timing: dict
    ) -> dict:
        t0 = time.monotonic()
        args["_load_id"] = uuid.uuid4().hex
        wait = float(args.get("lock_timeout") or 900)
        while True:
            prep = self._execute_module(module_args=dict(args, _phase="prepare"), task_vars=task_vars)
            busy = prep.get("busy")
            if not busy or prep.get("failed"):
                break
            if holder_gone(busy.get("holder", "")):
                args["_break_claim"] = busy["id"]  # its process died mid-load (i12): take over
                continue
            if time.monotonic() - t0 > wait:
                result.update(
                    failed=True,
                    changed=False,
                    msg=f"ramdisk preload of step {args.get('step')}: another preload of it is still running "
                    f"there (holder {busy.get('holder')}, run {busy.get('run_id') or '-'}, started "
                    f"{busy.get('started')}); waited {wait:g} s (lock_timeout). Run again when it is done",
                )
                return result
            time.sleep(1.0)
        timing["prepare_s"] = round(time.monotonic() - t0, 3)
        result.update(prep, timing=timing)
        if prep.get("complete"):
            result["summary"] = f"step {args.get('step')} already loaded and verified: nothing sent"
        elif self._task.check_mode and not prep.get("failed"):
            result["summary"] = "would send {} ({}) (check mode)".format(
                ", ".join(prep.get("needed", [])) or "nothing", _size_text(prep.get("copy_bytes", 0))
            )
        if prep.get("failed") or prep.get("complete") or self._task.check_mode:
            return result
        by_name = dict(zip([m["name"] for m in manifest], paths, strict=True))
        step_dir = prep["step_path"]
        staged: dict[str, str] = {}
        t0 = time.monotonic()
        try:
            for name in prep["needed"]:
                remote = f"{step_dir}/.incoming-{name}.{uuid.uuid4().hex[:12]}"
                staged[name] = remote
                self._transfer_file(by_name[name], remote)
        except Exception as exc:  # any transport failure: remove partial copies, no sentinel
            try:
                aborted = self._execute_module(
                    module_args=dict(args, _phase="abort", _staged=staged), task_vars=task_vars
                )
            except Exception as again:  # host gone: the leftovers are removed by the next preload
                aborted = {"removed": [], "abort_error": to_text(again)}
            result.update(
                failed=True,
                changed=True,
                msg=f"ramdisk preload of step {args.get('step')}: sending {name} failed ({to_text(exc)}); "
                "no sentinel written, the step is not ready",
                aborted=aborted.get("removed", []),
            )
            return result
        timing["transfer_s"] = round(time.monotonic() - t0, 3)
        t0 = time.monotonic()
        commit = self._execute_module(
            module_args=dict(args, _phase="commit", _staged=staged), task_vars=task_vars
        )
        timing["commit_s"] = round(time.monotonic() - t0, 3)
        diff = result.get("diff")
        result.update(commit)
        if diff is not None:
            result["diff"] = diff
        result["removed"] = prep.get("removed", []) + [
            os.path.join(step_dir, n) for n in commit.get("removed", []) if not n.startswith(".incoming-")
        ]
        result["complete"] = False
        if not result.get("failed"):
            purged = [os.path.basename(p) for p in prep.get("removed", []) if os.path.dirname(p) != step_dir]
            result["summary"] = "loaded step {}: sent {} ({}){}".format(
                args.get("step"),
                ", ".join(prep.get("needed", [])) or "nothing",
                _size_text(prep.get("copy_bytes", 0)),
                f"; removed the other steps {', '.join(purged)}" if purged else "",
            )
        return result
