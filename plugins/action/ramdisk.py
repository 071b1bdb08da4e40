# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Controller side of prng.cluster.ramdisk: hash the sources (cached by size and mtime),
then, over ssh (or local) without become, ONE session per host with a receiver
(module_utils/ramdisk.receive_main): it prepares (what the host lacks, room, the claim,
the lease; the only step when nothing changed), receives only that, hashing each copy as
it writes it, and commits, manifest last. Other connections: the module's prepare and
commit phases around put_file, the commit hashing each copy again. While another preload
of the same step runs on the host, wait for it (its claim), or take it over when its
process on this controller is gone."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
import uuid

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.executor.interpreter_discovery import discover_interpreter
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.prng.cluster.plugins.module_utils import ramdisk as rd
from ansible_collections.prng.cluster.plugins.module_utils.fanout_protocol import _REGISTER
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import file_sha256
from ansible_collections.prng.cluster.plugins.modules.ramdisk import ARGUMENT_SPEC
from ansible_collections.prng.cluster.plugins.plugin_utils.session import session_command

display = Display()

HASH_CHUNK = 4 * 1024 * 1024
CACHE_VERSION = 1
# The receiver's bootstrap: the first stdin line gives the size of its source, which follows.
RECEIVE_BOOT = (
    "import sys;n=int(sys.stdin.buffer.readline());"
    "exec(compile(sys.stdin.buffer.read(n),'prng-ramdisk-receive','exec'))"
)
SEND_CHUNK = 8 * 1024 * 1024


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
    return file_sha256(path)


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


def _collection_modules(module: types.ModuleType) -> list[types.ModuleType]:
    """``module`` and the collection module_utils it uses, dependencies first."""
    prefix = module.__name__.rsplit(".", 1)[0] + "."
    out: list[types.ModuleType] = []
    seen: set[str] = set()

    def visit(mod: types.ModuleType) -> None:
        seen.add(mod.__name__)
        for value in list(vars(mod).values()):
            name = (
                value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            )
            dep = sys.modules.get(name) if isinstance(name, str) and name.startswith(prefix) else None
            if dep is not None and dep.__name__ not in seen:
                visit(dep)
        out.append(mod)

    visit(module)
    return out


def receiver_source() -> bytes:
    """What follows RECEIVE_BOOT: module_utils/ramdisk (and what it imports from this
    collection), each registered under its own name, then its receive_main()."""
    parts = [_REGISTER, "import sys"]
    for mod in _collection_modules(rd):
        with open(mod.__file__, encoding="utf-8") as fh:
            parts.append(f"_register({mod.__name__!r}, {fh.read()!r})")
    parts.append(f"sys.modules[{rd.__name__!r}].receive_main()")
    return "\n".join(parts).encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_file(fd: int, path: str, size: int) -> None:
    """Exactly ``size`` bytes of ``path`` (the size it was hashed at) into ``fd``; a file
    that is shorter now raises, so the receiver sees the stream end early."""
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            try:
                n = os.sendfile(fd, fh.fileno(), offset, min(SEND_CHUNK, size - offset))
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                fh.seek(offset)
                chunk = fh.read(min(SEND_CHUNK, size - offset))
                _write_all(fd, chunk)
                n = len(chunk)
            if n == 0:
                raise OSError(
                    errno.EIO, f"{path} is shorter than when it was hashed ({offset} of {size} bytes)"
                )
            offset += n


class Receiver:
    """One preload session with the host's receiver (module_utils/ramdisk.receive_main),
    started through the host's connection (``argv``): a request, its answer line, then
    the files and the result line (see ramdisk.receive_session)."""

    def __init__(self, argv: list, keep_fds: tuple) -> None:
        r_fd, w_fd = os.pipe()
        try:
            fcntl.fcntl(w_fd, rd.F_SETPIPE_SZ, rd.RECEIVE_CHUNK)
        except OSError:
            pass  # the default pipe size works too
        try:
            # unbuffered: readline() then reads no further than its line
            self.proc = subprocess.Popen(
                argv, stdin=r_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=keep_fds, bufsize=0
            )
        except OSError:
            os.close(w_fd)
            raise
        finally:
            os.close(r_fd)
            for fd in keep_fds:
                os.close(fd)
        self.w_fd: int | None = w_fd
        self.sending = ""  # the file on its way when the session broke
        self.error = ""  # the controller's side of a break

    def request(self, req: dict) -> dict | None:
        """Send the receiver its source and ``req``; its answer (None: the session broke)."""
        source = receiver_source()
        try:
            _write_all(
                self.w_fd, str(len(source)).encode() + b"\n" + source + json.dumps(req).encode() + b"\n"
            )
        except OSError as exc:
            self.error = to_text(exc)
        return self._answer()

    def send(self, files: list[tuple[str, str, int]]) -> dict | None:
        """Send each (name, path, size) in order, then read the result (None: broke)."""

        def feed() -> None:
            try:
                for name, path, size in files:
                    self.sending = name
                    send_file(self.w_fd, path, size)
            except OSError as exc:  # the session ended (its error is on stderr) or a source went short
                self.error = to_text(exc)
            finally:
                self._close_input()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        res = self._answer()
        feeder.join()
        if res and res.get("failed") and self.error:
            res["msg"] = f"{res.get('msg')} (controller: {self.error})"
        return res

    def close(self) -> str:
        """End the session; why it broke ('' when it did not)."""
        self._close_input()
        _out, err = self.proc.communicate()
        if self.proc.returncode == 0:
            return ""
        lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
        said = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))  # e.g. the shell's, then Python's
        return f"exit {self.proc.returncode}: {said or self.error or 'no message'}"

    @property
    def unreachable(self) -> bool:
        return self.proc.returncode == 255  # ssh's own failure: no connection to the host

    def _answer(self) -> dict | None:
        try:
            res = json.loads(self.proc.stdout.readline() or b"null")
        except ValueError:
            return None
        return res if isinstance(res, dict) else None

    def _close_input(self) -> None:
        if self.w_fd is not None:
            os.close(self.w_fd)
            self.w_fd = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # no remote temp folder: the session (or put_file) writes into the step
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
            if os.path.isdir(found):
                raise AnsibleError(f"source {src} is a folder on the controller, expected a file")
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
            session = None
            command = self._receiver_command(task_vars, result)
            if command:  # ONE session does it all: prepare, then the files, then the commit
                prep, session = self._prepare_in_session(command, args)
            else:
                prep = self._execute_module(module_args=dict(args, _phase="prepare"), task_vars=task_vars)
            busy = prep.get("busy")
            if not busy or prep.get("failed"):
                break
            if session:
                session.close()
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
        timing["via"] = "session" if command else "module"
        staged = prep.pop("staged", None)
        warnings = prep.pop("warnings", [])
        if warnings:
            result.setdefault("warnings", []).extend(warnings)
        result.update(prep, timing=timing)
        if prep.get("complete"):
            result["summary"] = f"step {args.get('step')} already loaded and verified: nothing sent"
        elif self._task.check_mode and not prep.get("failed"):
            result["summary"] = "would send {} ({}) (check mode)".format(
                ", ".join(prep.get("needed", [])) or "nothing", _size_text(prep.get("copy_bytes", 0))
            )
        if prep.get("failed") or prep.get("complete") or self._task.check_mode:
            if session:
                session.close()
            return result
        by_name = dict(zip([m["name"] for m in manifest], paths, strict=True))
        sizes = {m["name"]: int(m["size"]) for m in manifest}
        step_dir = prep["step_path"]
        t0 = time.monotonic()
        if session:
            commit = session.send([(n, by_name[n], sizes[n]) for n in prep["needed"]])
            failed_at, error = session.sending or "the files", session.close()
        else:
            staged = {n: f"{step_dir}/{rd.INCOMING}{n}.{uuid.uuid4().hex[:12]}" for n in prep["needed"]}
            commit, failed_at, error = None, "", ""
            try:
                for failed_at in prep["needed"]:
                    self._transfer_file(by_name[failed_at], staged[failed_at])
            except Exception as exc:  # any transport failure: remove partial copies, no sentinel
                error = to_text(exc)
            if not error:
                commit = self._execute_module(
                    module_args=dict(args, _phase="commit", _staged=staged), task_vars=task_vars
                )
        if commit is None:
            try:
                aborted = self._execute_module(
                    module_args=dict(args, _phase="abort", _staged=staged), task_vars=task_vars
                )
            except Exception as again:  # host gone: the leftovers are removed by the next preload
                aborted = {"removed": [], "abort_error": to_text(again)}
            result.update(
                failed=True,
                changed=True,
                msg=f"ramdisk preload of step {args.get('step')}: sending {failed_at} failed ({error}); "
                "no sentinel written, the step is not ready",
                aborted=aborted.get("removed", []),
            )
            return result
        timing["transfer_s"] = round(time.monotonic() - t0, 3)
        diff = result.get("diff")
        result.update(commit)
        if diff is not None:
            result["diff"] = diff
        result["removed"] = prep.get("removed", []) + [
            os.path.join(step_dir, n) for n in commit.get("removed", []) if not n.startswith(rd.INCOMING)
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

    def _prepare_in_session(self, command: tuple[list, tuple], args: dict) -> tuple[dict, Receiver | None]:
        """The prepare phase run by the receiver, as the module would run it (its argument
        spec applied to the same arguments); the session stays open for the files."""
        checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(dict(args, state="preload"))
        if checked.error_messages:
            return {"failed": True, "msg": f"ramdisk preload: {checked.error_messages[0]}"}, None
        params = dict(checked.validated_parameters, check_mode=self._task.check_mode, diff=self._task.diff)
        try:
            session = Receiver(*command)
        except OSError as exc:  # ssh could not even start: like a host that does not answer
            return {"failed": True, "unreachable": True, "msg": f"ramdisk preload: {to_text(exc)}"}, None
        prep = session.request({"prepare": params})
        if prep is None:
            why = session.close()
            return {
                "failed": True,
                "unreachable": session.unreachable,
                "msg": f"ramdisk preload of step {args.get('step')}: no answer from the host ({why})",
            }, None
        return prep, session

    def _remote_python(self, task_vars, result: dict) -> str:
        """The host's Python as a module would run it: set, discovered earlier, or
        discovered now (the fact goes back in the result, as after a module call)."""
        value = task_vars.get("ansible_python_interpreter")
        value = str(self._templar.template(value)) if isinstance(value, str) and value else ""
        if value and not value.startswith("auto"):
            return value
        found = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
        if found:
            return str(found)
        if self._connection.transport == "local" and not value:
            return sys.executable
        mode = value or str(C.config.get_config_value("INTERPRETER_PYTHON", variables=task_vars))
        found = discover_interpreter(
            action=self, interpreter_name="python", discovery_mode=mode, task_vars=task_vars
        )
        result.setdefault("ansible_facts", {})["discovered_interpreter_python"] = found
        return found

    def _receiver_command(self, task_vars, result: dict) -> tuple[list, tuple] | None:
        """argv of the receiver through this host's own connection settings (user, key,
        port, ssh args, the ControlPersist socket) and the fds ssh keeps; None where it
        cannot run as the module would (become, or a connection that is not ssh/local)."""
        conn = self._connection
        if self._play_context.become or conn.transport not in ("ssh", "local"):
            return None
        # -S: the receiver needs only the standard library and the source it is sent (a faster start)
        remote = [self._remote_python(task_vars, result), "-S", "-c", RECEIVE_BOOT, rd.RECEIVE_TAG]
        return session_command(conn, remote)
