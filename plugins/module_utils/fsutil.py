"""Files, folders and mounts, for the modules on the hosts and the plugins on the controller
(one copy of each: the sha256 of a file, the bytes of a tree, a mount's use, an atomic
write, a command run with a timeout). The worker package has its own (prng_workers.atomic,
prng_workers.formats.file_sha256): it runs without this collection."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from typing import Any, Dict, List, Tuple

HASH_CHUNK = 4 * 1024 * 1024


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks into one reused buffer."""
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def tree_bytes(path: str) -> int:
    """Bytes held by a file or folder (symlinks count as nothing, never followed)."""
    if os.path.islink(path):
        return 0
    if not os.path.isdir(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def mount_usage(path: str) -> Dict[str, Any]:
    """Size and use of the filesystem holding `path` (statvfs; OSError when it cannot be
    read). used counts the blocks the root reserve hides too; avail is what a user may
    still write."""
    st = os.statvfs(path)
    size = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return {
        "size_bytes": size,
        "used_bytes": used,
        "avail_bytes": st.f_bavail * st.f_frsize,
        "used_percent": round(100.0 * used / size, 1) if size else 0.0,
    }


def atomic_write_bytes(path: str, data: bytes, sync_dir: bool = False) -> None:
    """Temp file in the same folder, fsync, rename: a reader never sees half a file. With
    `sync_dir` the folder is fsynced too, so the new name survives a crash."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_json(
    path: str, obj: Any, indent: int = 1, sort_keys: bool = False, sync_dir: bool = False
) -> None:
    """`obj` as JSON (a newline at the end), written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode(), sync_dir)


def run_argv(argv: List[str], timeout: float) -> Tuple[int, str, str]:
    """(rc, stdout, stderr) of a command given as an argv list; a command that runs past
    `timeout` is killed and gives rc 124, one that cannot start rc 127."""
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, "", f"{os.path.basename(argv[0])} timed out after {timeout}s"
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
