# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Host-side ramdisk logic shared by the ramdisk module and its action plugin.

Layout: ``<root>/<step>/<file>`` plus two dotfiles per step directory:
``.manifest.json`` is the sentinel (names, sizes, SHA-256 of every file), written last and
only after every file verified (i12); ``.manifest.prev.json`` keeps the previous
manifest's records while an update is in progress, so unchanged files need not be
re-hashed, but it never marks the step ready (a folder the preload creates gets an empty
one at once, so it is known as ours even if the first load never finishes). Files arrive
as ``.incoming-<name>.<id>`` next to their final name and are renamed into place once
their hash matches.

Deleting (clear, and the purge of other steps by an exclusive preload) acts only on a
root whose real path is on a tmpfs/ramfs mount, and only on step folders that carry one
of our manifests; anything else under the root is left alone and reported (i35).

In use: a run's preload takes a lease on its step folder, ``.lease-<run_id>.json``, live
until its file's mtime + ``lease_seconds`` (renewing is touching it: a crashed controller's
lease ends by itself). A clear, or a preload that would purge or change a step, refuses
while another run holds a live lease on it and names that run. A preload in progress
holds ``.loading.json`` in its step folder from prepare to commit, so a second preload of
the same step waits for it instead of deleting its half-sent copies; each host-side
phase runs under ``flock`` on ``<root>/.prng-lock`` (created and unlinked around each
operation, so nothing is left behind).

Runs on the managed hosts: plain Python 3.8+, standard library only.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid

from ansible_collections.prng.cluster.plugins.module_utils import defaults
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import file_sha256, mount_usage
from ansible_collections.prng.cluster.plugins.module_utils.fsutil import tree_bytes as fsutil_tree_bytes

MANIFEST = ".manifest.json"
PREV_MANIFEST = ".manifest.prev.json"
INCOMING = ".incoming-"
MANIFEST_VERSION = 1
HASH_CHUNK = 4 * 1024 * 1024
# A clear of "everything under root" must never be able to wipe one of these.
PROTECTED = frozenset(
    [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/dev/shm",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/run/shm",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
    ]
)
STATE_ORDER = ("absent", "incomplete", "damaged", "stale", "valid")
RAM_FSTYPES = ("tmpfs", "ramfs")
LOCK = ".prng-lock"  # in the root, only while an operation runs
ROOT_INTERNAL = frozenset([LOCK])
LOADING = ".loading.json"
LEASE_PREFIX = ".lease-"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
# A preload whose claim and half-sent copies have not changed for this long is abandoned.
STALE_LOAD_SECONDS = 120


class RamdiskError(Exception):
    """Bad input or an unsafe request; the message is one line for the operator."""


# --------------------------------------------------------------------------- paths


def resolve_root(root):
    # type: (str | None) -> str
    """The configured root, symlinks resolved; refuses empty, relative and system paths."""
    if root is None or not str(root).strip():
        raise RamdiskError("refusing: the ramdisk root is empty")
    root = str(root)
    if not os.path.isabs(root):
        raise RamdiskError(f"refusing: the ramdisk root must be an absolute path, got {root!r}")
    real = os.path.realpath(root)
    home = os.path.realpath(os.path.expanduser("~"))
    if real in PROTECTED or real == home or real.count("/") < 2:
        raise RamdiskError(
            f"refusing: ramdisk root {root!r} resolves to {real}, a system directory; "
            "use a folder of its own such as " + defaults.PRNG_RAMDISK_ROOT
        )
    return real


def check_name(name, what):
    # type: (str, str) -> str
    """A step or file name: one plain path component, not hidden, not ours."""
    if not isinstance(name, str) or not name.strip():
        raise RamdiskError(f"refusing: the {what} name is empty")
    if any(ord(c) < 32 or c == "\x7f" for c in name):  # a newline would split lines
        raise RamdiskError(f"refusing: {what} name {name!r} has a control character (newline, tab...)")
    if "/" in name or name in (".", "..") or name.startswith("."):
        raise RamdiskError(
            f"refusing: {what} name {name!r} must be a plain name (no '/', not starting with '.')"
        )
    return name


def within(path, root):
    # type: (str, str) -> bool
    """True when ``path`` is strictly inside ``root`` (both already resolved)."""
    return path != root and os.path.commonpath([path, root]) == root


def step_dir(root_real, step):
    # type: (str, str) -> str
    """``<root>/<step>``, refusing a step whose path resolves outside the root (symlinks)."""
    check_name(step, "step")
    path = os.path.join(root_real, step)
    real = os.path.realpath(path)
    if not within(real, root_real):
        raise RamdiskError(
            f"refusing: step path {path} resolves to {real}, outside the ramdisk root {root_real}"
        )
    if os.path.islink(path):
        raise RamdiskError(f"refusing: step path {path} is a symlink (to {real})")
    return path


def hash_file(path):
    # type: (str) -> str
    return file_sha256(path)


def _unescape_mount(text):
    # type: (str) -> str
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _existing(path):
    # type: (str) -> str
    """The real path of ``path`` or of its nearest existing parent folder."""
    probe = os.path.realpath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def mount_of(path):
    # type: (str) -> tuple
    """(mount point, filesystem type) that really holds ``path``: the longest mount point
    in /proc/self/mountinfo that prefixes its real path; a later mount over the same point
    wins. ("/", "unknown") when mountinfo cannot be read."""
    probe = _existing(path)
    mount, fstype = "/", "unknown"
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _sep, right = line.partition(" - ")
                point = _unescape_mount(left.split()[4])
                if (probe == point or probe.startswith(point.rstrip("/") + "/")) and len(point) >= len(mount):
                    mount, fstype = point, right.split()[0]
    except OSError:
        pass
    return mount, fstype


def require_ram_root(root, root_real, allow_any_root=False, doing="clear"):
    # type: (str, str, bool, str) -> None
    """Refuse to delete under a root that is not really on a tmpfs/ramfs (i35): a disk
    folder, or a /dev/shm path that is a symlink to one. Unknown counts as not a tmpfs."""
    if allow_any_root:
        return
    mount, fstype = mount_of(root_real)
    if fstype not in RAM_FSTYPES:
        raise RamdiskError(
            f"refusing to {doing}: ramdisk root {root} (real path {root_real}) is on {fstype} "
            f"(mount {mount}), not a tmpfs/ramfs; nothing removed "
            "(set ramdisk_allow_any_root=true, module option allow_any_root, to override)"
        )


def is_our_step(root_real, name):
    # type: (str, str) -> bool
    """True for a step folder this project wrote: a plain name, a real folder (not a link)
    holding one of our manifests (ready or in update) that names this step."""
    path = os.path.join(root_real, name)
    if name.startswith(".") or os.path.islink(path) or not os.path.isdir(path):
        return False
    for which in (MANIFEST, PREV_MANIFEST):
        data = read_manifest(path, which)
        if data is not None and data.get("step") == name:
            return True
    return False


def shm_info(path):
    # type: (str) -> dict
    """Size and use of the real filesystem that holds ``path`` (nearest existing folder)."""
    use = mount_usage(_existing(path))
    mount, fstype = mount_of(path)
    return {"mount": mount, "fstype": fstype, **use}


def tree_bytes(path):
    # type: (str) -> int
    """Bytes held by a file or folder (symlinks count as nothing, never followed)."""
    return fsutil_tree_bytes(path)


def mounts_inside(path):
    # type: (str) -> list
    """Mount points at or under the folder ``path``: removing through one would delete
    files of another filesystem or folder (a bind mount of a disk folder), outside the
    root. Without /proc/self/mountinfo, the folders on another device than ``path``."""
    if os.path.islink(path) or not os.path.isdir(path):
        return []
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as fh:
            points = [_unescape_mount(line.partition(" - ")[0].split()[4]) for line in fh]
    except (OSError, IndexError):
        dev = os.lstat(real).st_dev
        return [d for d, _dirs, _files in os.walk(real) if os.lstat(d).st_dev != dev]
    return sorted(set(p for p in points if p == real or p.startswith(real.rstrip("/") + "/")))


def require_no_mounts(paths, doing):
    # type: (list, str) -> None
    """Refuse, before anything is removed, when a folder to remove is or holds a mount point."""
    for path in paths:
        found = mounts_inside(path)
        if found:
            raise RamdiskError(
                f"refusing to {doing}: {found[0]} is a mount point inside {path} (another filesystem "
                "or a bind mount: removing it would delete files outside the ramdisk root); nothing "
                "removed; unmount it first"
            )


def remove_entry(path, root_real):
    # type: (str, str) -> int
    """Remove one entry directly under the root: a link as a link, a folder with all its
    contents (dotfiles included), never through a mount point inside it. Returns the bytes
    freed."""
    if not within(os.path.abspath(path), root_real):
        raise RamdiskError(f"refusing to remove {path}: outside the ramdisk root {root_real}")
    require_no_mounts([path], f"remove {path}")
    freed = tree_bytes(path)
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)
    return freed


# --------------------------------------------------------------------------- manifest


def read_manifest(sdir, name=MANIFEST):
    # type: (str, str) -> dict | None
    try:
        with open(os.path.join(sdir, name)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != MANIFEST_VERSION
        or not isinstance(data.get("files"), list)
    ):
        return None
    return data


def manifest_records(data):
    # type: (dict | None) -> dict
    out = {}
    for rec in (data or {}).get("files", []):
        if isinstance(rec, dict) and "name" in rec:
            out[rec["name"]] = rec
    return out


def write_manifest(sdir, step, records, name=MANIFEST):
    # type: (str, str, list, str) -> dict
    """Write the sentinel (or, with ``name``, another manifest) atomically (temp file,
    fsync, rename, fsync folder)."""
    data = {
        "version": MANIFEST_VERSION,
        "step": step,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total_bytes": sum(r["size"] for r in records),
        "files": sorted(records, key=lambda r: r["name"]),
    }
    tmp = os.path.join(sdir, f".manifest.tmp-{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, os.path.join(sdir, name))
    dfd = os.open(sdir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return data


def manifest_lines(data):
    # type: (dict | None) -> str
    """Manifest as text for diff mode."""
    if not data:
        return "(no manifest: step not ready)\n"
    return "".join(f"{r['sha256']}  {r['size']}  {r['name']}\n" for r in data.get("files", []))


# --------------------------------------------------------------------------- checks


def check_expected(expected):
    # type: (list | None) -> list
    """Validate the controller's file list: [{name, size, sha256}], unique names."""
    out = []
    seen = set()
    for item in expected or []:
        if not isinstance(item, dict):
            raise RamdiskError("each manifest entry must be a mapping with name, size, sha256")
        name = check_name(item.get("name"), "file")
        if name in seen:
            raise RamdiskError(f"two source files share the name {name!r}; names in a step must be unique")
        seen.add(name)
        try:
            size = int(item["size"])
            sha = str(item["sha256"]).lower()
        except (KeyError, TypeError, ValueError):
            raise RamdiskError(f"manifest entry for {name!r} needs an integer size and a sha256") from None
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise RamdiskError(f"manifest entry for {name!r} has an invalid sha256 {sha!r}")
        out.append({"name": name, "size": size, "sha256": sha})
    return out


def file_matches(path, size, sha, record, verify):
    # type: (str, int, str, dict | None, str) -> dict | None
    """The file's record {name,size,sha256,mtime_ns} when ``path`` holds exactly that
    content, else None. With verify=quick a manifest record whose size and mtime still
    match the file is trusted instead of re-reading it, both ways: same hash, it matches;
    another hash, it differs (a changed source never costs a re-read of the old copy)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not os.path.isfile(path) or os.path.islink(path) or st.st_size != size:
        return None
    rec = {"name": os.path.basename(path), "size": size, "sha256": sha, "mtime_ns": st.st_mtime_ns}
    if (
        verify == "quick"
        and record
        and record.get("size") == size
        and record.get("mtime_ns") == st.st_mtime_ns
    ):
        return rec if record.get("sha256") == sha else None
    return rec if hash_file(path) == sha else None


def _entries(sdir):
    # type: (str) -> tuple
    """(data files, incoming leftovers, other internal dotfiles) in a step folder."""
    data, incoming, internal = [], [], []
    try:
        names = sorted(os.listdir(sdir))
    except OSError:
        return data, incoming, internal
    for name in names:
        if name.startswith(INCOMING):
            incoming.append(name)
        elif name.startswith("."):
            internal.append(name)
        else:
            data.append(name)
    return data, incoming, internal


# --------------------------------------------------------------------------- in use


class RootLock:
    """flock on ``<root>/.prng-lock`` for one host-side operation. The file is unlinked on
    release; a waiter that then gets the lock on the unlinked file notices (inode check)
    and takes a fresh one, so the lock is correct and leaves nothing behind."""

    def __init__(self, root_real, timeout=900.0):
        # type: (str, float) -> None
        self.path = os.path.join(root_real, LOCK)
        self.timeout = timeout
        self.fd = -1

    def __enter__(self):
        # type: () -> RootLock
        deadline = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise RamdiskError(
                            f"another ramdisk operation on this host held {self.path} for more than "
                            f"{self.timeout:g} s; try again (lock_timeout raises the wait)"
                        ) from None
                    time.sleep(0.05)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        # type: (object) -> None
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def check_run_id(run_id):
    # type: (str | None) -> str | None
    if run_id in (None, ""):
        return None
    if not RUN_ID.match(str(run_id)):
        raise RamdiskError(
            f"run_id: found {run_id!r}, expected 1-80 characters of letters, digits, '.', '_', '-'"
        )
    return str(run_id)


def _utc(ts):
    # type: (float) -> str
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_path(sdir, run_id):
    # type: (str, str) -> str
    return os.path.join(sdir, f"{LEASE_PREFIX}{run_id}.json")


def leases(sdir, now=None):
    # type: (str, float | None) -> list
    """The leases on a step folder: {run_id, holder, taken, expires, live}; a lease lives
    until its file's mtime + lease_seconds (renew = touch)."""
    now = time.time() if now is None else now
    out = []
    try:
        names = sorted(os.listdir(sdir))
    except OSError:
        return out
    for name in names:
        if not (name.startswith(LEASE_PREFIX) and name.endswith(".json")):
            continue
        path = os.path.join(sdir, name)
        try:
            with open(path) as fh:
                data = json.load(fh)
            expires = os.stat(path).st_mtime + float(data.get("lease_seconds", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        out.append(
            {
                "run_id": str(data.get("run_id") or name[len(LEASE_PREFIX) : -5]),
                "holder": data.get("holder") or "",
                "taken": data.get("taken"),
                "expires": _utc(expires),
                "live": now < expires,
            }
        )
    return out


def take_lease(sdir, step, run_id, lease_seconds, holder=""):
    # type: (str, str, str, float, str) -> dict
    """Take or renew ``run_id``'s lease on a step folder (written atomically)."""
    if lease_seconds <= 0:
        raise RamdiskError(f"lease_seconds: expected a number > 0, got {lease_seconds}")
    path = lease_path(sdir, run_id)
    taken = None
    try:
        with open(path) as fh:
            taken = json.load(fh).get("taken")
    except (OSError, ValueError, AttributeError):
        pass
    data = {
        "run_id": run_id,
        "step": step,
        "holder": holder,
        "taken": taken or _utc(time.time()),
        "lease_seconds": lease_seconds,
    }
    tmp = os.path.join(sdir, f".lease.tmp-{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.rename(tmp, path)
    data["expires"] = _utc(os.stat(path).st_mtime + lease_seconds)
    data["renewed"] = taken is not None
    data["path"] = path  # whoever runs the step renews it by touching this file (the fan-out's agent)
    return data


def release_lease(sdir, run_id):
    # type: (str, str) -> bool
    try:
        os.unlink(lease_path(sdir, run_id))
        return True
    except OSError:
        return False


def drop_expired_leases(sdir, now=None):
    # type: (str, float | None) -> list
    gone = []
    for le in leases(sdir, now):
        if not le["live"] and release_lease(sdir, le["run_id"]):
            gone.append(le["run_id"])
    return gone


def read_claim(sdir):
    # type: (str) -> dict | None
    try:
        with open(os.path.join(sdir, LOADING)) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) and data.get("id") else None
    except (OSError, ValueError):
        return None


def claim_age(sdir, now=None):
    # type: (str, float | None) -> float
    """Seconds since the claim or any half-sent copy last changed (a live transfer writes)."""
    now = time.time() if now is None else now
    newest = 0.0
    for name in [LOADING] + _entries(sdir)[1]:
        try:
            newest = max(newest, os.stat(os.path.join(sdir, name)).st_mtime)
        except OSError:
            pass
    return now - newest


def live_claim(sdir, now=None):
    # type: (str, float | None) -> dict | None
    claim = read_claim(sdir)
    if claim is None or claim_age(sdir, now) > STALE_LOAD_SECONDS:
        return None
    return claim


def write_claim(sdir, load_id, run_id, holder):
    # type: (str, str, str | None, str) -> None
    data = {"id": load_id, "run_id": run_id, "holder": holder, "started": _utc(time.time())}
    tmp = os.path.join(sdir, f".loading.tmp-{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.rename(tmp, os.path.join(sdir, LOADING))


def drop_claim(sdir, load_id=None):
    # type: (str, str | None) -> None
    claim = read_claim(sdir)
    if claim is not None and load_id is not None and claim.get("id") != load_id:
        return
    try:
        os.unlink(os.path.join(sdir, LOADING))
    except OSError:
        pass


def in_use_text(step, holders):
    # type: (str, list) -> str
    parts = []
    for le in holders:
        who = f", holder {le['holder']}" if le.get("holder") else ""
        parts.append(f"run {le['run_id']} (lease until {le['expires']}{who})")
    return f"step {step} is in use by " + ", ".join(parts)


def release_hint(step, holders):
    # type: (str, list) -> str
    run = holders[0]["run_id"]
    return (
        "The lease ends with that run (or by itself when it expires); if that run is gone: "
        f"ansible HOST -m prng.cluster.ramdisk -a 'state=release step={step} run_id={run}'"
    )


def require_unused(root_real, steps, run_id, doing):
    # type: (str, list, str | None, str) -> None
    """Refuse (one line, nothing removed) when a step would be removed that a run other
    than ``run_id`` holds a live lease on, or that a preload is loading right now."""
    for step in steps:
        sdir = os.path.join(root_real, step)
        if os.path.islink(sdir) or not os.path.isdir(sdir):
            continue
        holders = [le for le in leases(sdir) if le["live"] and le["run_id"] != run_id]
        if holders:
            raise RamdiskError(
                f"refusing to {doing}: {in_use_text(step, holders)}; nothing removed. "
                + release_hint(step, holders)
            )
        claim = live_claim(sdir)
        if claim is not None:
            raise RamdiskError(
                f"refusing to {doing}: step {step} is being loaded right now by another preload "
                f"(run {claim.get('run_id') or '-'}, holder {claim.get('holder') or '-'}, started "
                f"{claim.get('started')}); nothing removed. Try again when it is done"
            )


# --------------------------------------------------------------------------- preload


def plan_preload(
    root,
    step,
    expected,
    exclusive=False,
    warn_percent=50.0,
    max_percent=80.0,
    verify="quick",
    allow_any_root=False,
    remove_foreign=False,
    run_id=None,
):
    # type: (str, str, list, bool, float, float, str, bool, bool, str | None) -> dict
    """Read-only: what a preload must do, and whether the ramdisk has room for it.
    ``exclusive`` purges the other steps of ours; other entries under the root are kept
    and listed in ``foreign`` unless ``remove_foreign``. Refuses to purge a step, or to
    change this one, while a run other than ``run_id`` holds a live lease on it."""
    root_real = resolve_root(root)
    sdir = step_dir(root_real, step)
    expected = check_expected(expected)
    if not 0 < warn_percent <= max_percent <= 100:
        raise RamdiskError(
            "thresholds must satisfy 0 < warn_percent <= max_percent <= 100 "
            f"(got {warn_percent}, {max_percent})"
        )
    current = read_manifest(sdir)
    records = manifest_records(current or read_manifest(sdir, PREV_MANIFEST))
    data, incoming, _internal = _entries(sdir)
    names = set(e["name"] for e in expected)
    needed, known = [], []
    for exp in expected:
        rec = file_matches(
            os.path.join(sdir, exp["name"]), exp["size"], exp["sha256"], records.get(exp["name"]), verify
        )
        if rec is None:
            needed.append(exp["name"])
        else:
            known.append(rec)
    extraneous = [n for n in data if n not in names]
    purge, foreign = [], []
    if exclusive and os.path.isdir(root_real):
        for name in sorted(os.listdir(root_real)):
            if name == step or name in ROOT_INTERNAL:
                continue
            if remove_foreign or is_our_step(root_real, name):
                purge.append(name)
            else:
                foreign.append(name)
    if purge:
        require_ram_root(
            root, root_real, allow_any_root, "remove the other steps ({})".format(", ".join(purge))
        )
        require_unused(root_real, purge, run_id, f"preload {step} (standalone: it removes the other steps)")
        require_no_mounts([os.path.join(root_real, n) for n in purge], "remove the other steps")
    exp_by_name = dict((e["name"], e) for e in expected)
    same_manifest = current is not None and sorted(
        (r.get("name"), r.get("size"), r.get("sha256")) for r in current.get("files", [])
    ) == sorted((e["name"], e["size"], e["sha256"]) for e in expected)
    complete = same_manifest and not needed and not extraneous and not incoming and not purge
    if not complete and os.path.isdir(sdir):
        holders = [le for le in leases(sdir) if le["live"] and le["run_id"] != run_id]
        if holders and (needed or extraneous or incoming or not same_manifest):
            raise RamdiskError(
                f"refusing to change step {step}: {in_use_text(step, holders)}, and these sources differ "
                f"from its loaded files ({', '.join(needed + extraneous) or 'manifest'}); nothing changed. "
                + release_hint(step, holders)
            )

    # Space: purged steps, leftovers and replaced/extra files are freed; needed files are
    # staged next to the old ones, so the peak is old + new.
    shm = shm_info(root_real)
    freed_before = sum(tree_bytes(os.path.join(root_real, n)) for n in purge)
    freed_before += sum(tree_bytes(os.path.join(sdir, n)) for n in incoming)
    incoming_bytes = sum(exp_by_name[n]["size"] for n in needed)
    replaced = sum(tree_bytes(os.path.join(sdir, n)) for n in needed + extraneous)
    avail_for_copy = shm["avail_bytes"] + freed_before
    projected = shm["used_bytes"] - freed_before - replaced + incoming_bytes
    size = shm["size_bytes"] or 1
    plan = {
        "root": root_real,
        "path": sdir,
        "step": step,
        "expected": expected,
        "needed": needed,
        "known": known,
        "extraneous": extraneous,
        "incoming": incoming,
        "purge": purge,
        "foreign": foreign,
        "complete": complete,
        "manifest_before": current,
        "copy_bytes": incoming_bytes,
        "projected_used_percent": round(100.0 * projected / size, 1),
        "shm": shm,
        "warnings": [],
    }
    if shm["fstype"] not in RAM_FSTYPES:
        plan["warnings"].append(
            "ramdisk root {} is on {} ({}), not a tmpfs".format(root_real, shm["mount"], shm["fstype"])
        )
    if foreign:
        plan["warnings"].append(
            "left alone under {} (not a step folder of ours): {}".format(root_real, ", ".join(foreign))
        )
    if needed:
        if incoming_bytes > avail_for_copy:
            raise RamdiskError(
                "refusing: step {} needs {} more on {} but only {} is free (size {}, {:.1f}% used); "
                "free the ramdisk or give the host more /dev/shm".format(
                    step,
                    mib(incoming_bytes),
                    shm["mount"],
                    mib(avail_for_copy),
                    mib(shm["size_bytes"]),
                    shm["used_percent"],
                )
            )
        if plan["projected_used_percent"] > max_percent:
            raise RamdiskError(
                "refusing: after loading step {}, {} would be {:.1f}% used (limit ramdisk_max_percent={}%; "
                "now {:.1f}% of {})".format(
                    step,
                    shm["mount"],
                    plan["projected_used_percent"],
                    max_percent,
                    shm["used_percent"],
                    mib(shm["size_bytes"]),
                )
            )
    pct = plan["projected_used_percent"] if needed else shm["used_percent"]
    if pct > warn_percent:
        plan["warnings"].append(
            "{} is {:.1f}% used{} (warn above {}%)".format(
                shm["mount"], pct, " after this preload" if needed else "", warn_percent
            )
        )
    return plan


def prepare_preload(plan):
    # type: (dict) -> list
    """Make room and drop the sentinel before anything is copied. Returns what it removed."""
    removed = []
    root_real, sdir = plan["root"], plan["path"]
    for name in plan["purge"]:
        path = os.path.join(root_real, name)
        remove_entry(path, root_real)
        removed.append(path)
    for name in plan["incoming"]:
        path = os.path.join(sdir, name)
        os.unlink(path)
        removed.append(path)
    if not os.path.isdir(sdir):
        os.makedirs(sdir, 0o755)
        # Marks the new folder as ours (for clear) before any file lands; never "ready".
        write_manifest(sdir, plan["step"], [], PREV_MANIFEST)
    manifest = os.path.join(sdir, MANIFEST)
    if os.path.exists(manifest):
        # From here until commit the step is not ready (i12); the old records stay
        # readable for the quick check only.
        os.rename(manifest, os.path.join(sdir, PREV_MANIFEST))
    return removed


def preload_prepare(p, check_mode=False, diff=False):
    # type: (dict, bool, bool) -> dict
    """A preload's prepare phase, from the module's validated parameters ``p`` (the module
    runs it, and so does the receiver before the files come, in the same session): the
    refusals and the plan and, unless check mode, room made, the sentinel dropped, the
    step claimed for this load (when something is to be sent) and the run's lease taken.
    Returns the prepared result, or {busy: claim, step_path} while another live preload
    of the step runs."""
    if not p.get("step"):
        raise RamdiskError("state=preload needs a step")
    if p.get("_manifest") is None:
        raise RamdiskError("state=preload needs files (sent by the action plugin)")
    run_id = check_run_id(p["run_id"])
    root_real = resolve_root(p["root"])
    sdir = step_dir(root_real, p["step"])

    def plan():
        return plan_preload(
            p["root"],
            p["step"],
            p["_manifest"],
            p["exclusive"],
            p["warn_percent"],
            p["max_percent"],
            p["verify"],
            p["allow_any_root"],
            p["remove_foreign"],
            run_id,
        )

    if check_mode:
        return prepared_result(plan(), None, diff)
    if not os.path.isdir(root_real):
        plan()  # refusals (space, names) before the root is created
        os.makedirs(root_real, 0o755, exist_ok=True)
    with RootLock(root_real, p["lock_timeout"]):
        claim = read_claim(sdir) if os.path.isdir(sdir) else None
        if claim is not None and claim.get("id") != p["_load_id"]:
            age = claim_age(sdir)
            if age <= STALE_LOAD_SECONDS and claim.get("id") != p["_break_claim"]:
                return {"changed": False, "busy": dict(claim, idle_s=round(age, 1)), "step_path": sdir}
            drop_claim(sdir)  # its preload is gone; its half-sent copies are removed as leftovers
        steps = plan()
        if not steps["complete"]:
            prepare_preload(steps)
            write_claim(sdir, p["_load_id"] or "", run_id, p["_holder"])
        lease = None
        if run_id:
            drop_expired_leases(sdir)
            lease = take_lease(sdir, p["step"], run_id, p["lease_seconds"], p["_holder"])
    return prepared_result(steps, lease, diff)


def prepared_result(plan, lease, diff=False):
    # type: (dict, dict | None, bool) -> dict
    """What the prepare phase answers: what is needed, what was removed, the warnings."""
    res = {
        "changed": not plan["complete"],
        "complete": plan["complete"],
        "step_path": plan["path"],
        "needed": plan["needed"],
        "copied": plan["needed"],
        "copy_bytes": plan["copy_bytes"],
        "removed": [os.path.join(plan["root"], n) for n in plan["purge"]]
        + [os.path.join(plan["path"], n) for n in plan["extraneous"] + plan["incoming"]],
        "foreign": [os.path.join(plan["root"], n) for n in plan["foreign"]],
        "shm": plan["shm"],
        "projected_used_percent": plan["projected_used_percent"],
        "files": dict((e["name"], os.path.join(plan["path"], e["name"])) for e in plan["expected"]),
        "warnings": plan["warnings"],
    }
    if lease is not None:
        res["lease"] = lease
    if diff:
        res["diff"] = {
            "before_header": f"{plan['path']}/{MANIFEST}",
            "after_header": f"{plan['path']}/{MANIFEST}",
            "before": manifest_lines(plan["manifest_before"]),
            "after": manifest_lines({"files": [dict(e) for e in plan["expected"]]}),
        }
    return res


def staged_path(sdir, name):
    # type: (str, str) -> str
    return os.path.join(sdir, f"{INCOMING}{name}.{uuid.uuid4().hex[:12]}")


def commit_preload(root, step, expected, staged, verify="quick", received=None):
    # type: (str, str, list, dict, str, dict | None) -> dict
    """Verify every staged copy by size and hash, move it into place, check the files
    that were already there, drop extra files and write the manifest last. A copy in
    ``received`` was hashed while it was written (receive_file): its digest is used
    without reading it again while the file is still the one written (size, mtime, inode)."""
    root_real = resolve_root(root)
    sdir = step_dir(root_real, step)
    expected = check_expected(expected)
    by_name = dict((e["name"], e) for e in expected)
    staged = dict(staged or {})
    digests = {}
    try:
        for name, path in sorted(staged.items()):
            if name not in by_name:
                raise RamdiskError(f"staged file {name!r} is not part of step {step}")
            real = check_staged(sdir, path)
            exp = by_name[name]
            try:
                got = os.lstat(real).st_size
            except OSError:
                raise RamdiskError(
                    f"copy of {name} never arrived on the host ({path} missing); step not ready"
                ) from None
            if got != exp["size"]:
                raise RamdiskError(
                    f"copy of {name} is incomplete: {got} of {exp['size']} bytes; step {step} not ready"
                )
            digest = _received_digest((received or {}).get(name), os.lstat(real)) or hash_file(real)
            if digest != exp["sha256"]:
                raise RamdiskError(
                    "copy of {} is corrupt: sha256 {}, expected {}; step {} not ready".format(
                        name, digest, exp["sha256"], step
                    )
                )
            digests[name] = digest
    except Exception:
        abort_preload(root, step)
        raise
    copied = []
    for name, path in sorted(staged.items()):
        dest = os.path.join(sdir, name)
        os.chmod(path, 0o644)
        os.rename(path, dest)
        copied.append(name)
    records = manifest_records(read_manifest(sdir, PREV_MANIFEST) or read_manifest(sdir))
    final = []
    for exp in expected:
        dest = os.path.join(sdir, exp["name"])
        if exp["name"] in digests:  # verified above; the rename kept the same inode
            st = os.lstat(dest)
            final.append(
                {
                    "name": exp["name"],
                    "size": st.st_size,
                    "sha256": digests[exp["name"]],
                    "mtime_ns": st.st_mtime_ns,
                }
            )
            continue
        rec = file_matches(dest, exp["size"], exp["sha256"], records.get(exp["name"]), verify)
        if rec is None:
            raise RamdiskError(
                f"{exp['name']} in {sdir} does not match its source (missing or changed during the "
                f"preload); step {step} not ready"
            )
        final.append(rec)
    data, incoming, internal = _entries(sdir)
    removed = []
    for name in [n for n in data if n not in by_name] + incoming:
        path = os.path.join(sdir, name)
        remove_entry(path, root_real)
        removed.append(name)
    manifest = write_manifest(sdir, step, final)
    for name in internal:
        if name != MANIFEST and (name == PREV_MANIFEST or name.startswith(".manifest.tmp-")):
            os.unlink(os.path.join(sdir, name))
    return {"copied": copied, "removed": removed, "manifest": manifest, "path": sdir}


def abort_preload(root, step, names=None):
    # type: (str, str, list | None) -> list
    """Remove partial copies after a failed transfer (only ``names`` when given: another
    preload's copies are not ours to remove); the step stays not ready."""
    root_real = resolve_root(root)
    sdir = step_dir(root_real, step)
    _data, incoming, _internal = _entries(sdir)
    if names is not None:
        incoming = [n for n in incoming if n in set(names)]
    for name in incoming:
        try:
            os.unlink(os.path.join(sdir, name))
        except OSError:
            pass
    return incoming


# --------------------------------------------------------------------------- transfer
# The action plugin runs a preload as ONE session per host over the host's own connection
# (receive_main): the prepare phase, then the missing files, each copy hashed as it is
# written (never read again), then the commit, manifest last.

RECEIVE_TAG = "prng-ramdisk-receive"
RECEIVE_CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031  # fcntl (Linux): a larger pipe, fewer wake-ups per MiB


def check_staged(sdir, path):
    # type: (str, str) -> str
    """The real path of a staged copy, refusing one that is not ``<sdir>/.incoming-*``."""
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(sdir) or not os.path.basename(real).startswith(INCOMING):
        raise RamdiskError(f"staged copy {path} is not an incoming file of {sdir}")
    return real


def _received_digest(rec, st):
    # type: (dict | None, os.stat_result) -> str | None
    """The digest receive_file() computed, while the file is still the one it wrote."""
    if not rec or (st.st_size, st.st_mtime_ns, st.st_ino) != (
        rec.get("size"),
        rec.get("mtime_ns"),
        rec.get("ino"),
    ):
        return None
    return rec.get("sha256")


def receive_file(stream, path, size, name, step):
    # type: (object, str, int, str, str) -> dict
    """Write the next ``size`` bytes of ``stream`` to the new file ``path``, hashing
    exactly the bytes written. Returns {sha256, size, mtime_ns, ino}. A stream that ends
    early raises; the partial file is left to the caller's abort."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(max(1, min(RECEIVE_CHUNK, size))))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left:
            n = stream.readinto(view[: min(left, len(view))])
            if not n:
                raise RamdiskError(
                    f"copy of {name} is incomplete: {size - left} of {size} bytes (the transfer ended); "
                    f"step {step} not ready"
                )
            digest.update(view[:n])
            done = 0
            while done < n:
                done += os.write(fd, view[done:n])
            left -= n
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return {"sha256": digest.hexdigest(), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def commit_locked(root, step, load_id, expected, staged, verify="quick", lock_timeout=900.0, received=None):
    # type: (str, str, str | None, list, dict, str, float, dict | None) -> dict
    """A preload's commit under the root's lock, only while the step's claim is this
    load's (another preload may have taken an abandoned load over); the claim is dropped
    after. Returns the preload's result (copied, removed, manifest, files, shm)."""
    root_real = resolve_root(root)
    sdir = step_dir(root_real, step)
    with RootLock(root_real, lock_timeout):
        claim = read_claim(sdir)
        if claim is not None and claim.get("id") != load_id:
            raise RamdiskError(
                f"step {step}: another preload ({claim.get('holder')}) took this load over after it "
                "looked abandoned; step not ready, run the preload again"
            )
        try:
            res = commit_preload(root, step, expected, staged, verify, received)
        finally:
            drop_claim(sdir, load_id)
    res["step_path"] = res.pop("path")
    res["changed"] = True
    res["files"] = dict(
        (r["name"], os.path.join(res["step_path"], r["name"])) for r in res["manifest"]["files"]
    )
    res["shm"] = shm_info(res["step_path"])
    return res


def receive_and_commit(req, stream):
    # type: (dict, object) -> dict
    """Receive ``req["files"]`` ({name, staged}, in stream order) and commit the step.
    Any failure removes this load's copies and drops its claim: no sentinel (i12)."""
    root, step = req["root"], req["step"]
    root_real = resolve_root(root)
    sdir = step_dir(root_real, step)
    expected = check_expected(req["manifest"])
    by_name = dict((e["name"], e) for e in expected)
    lock_timeout = float(req.get("lock_timeout") or 900.0)
    staged, received = {}, {}
    try:
        for item in req["files"]:
            name = item["name"]
            if name not in by_name:
                raise RamdiskError(f"staged file {name!r} is not part of step {step}")
            staged[name] = check_staged(sdir, item["staged"])
            exp = by_name[name]
            rec = receive_file(stream, staged[name], exp["size"], name, step)
            if rec["sha256"] != exp["sha256"]:
                raise RamdiskError(
                    "copy of {} is corrupt: sha256 {}, expected {}; step {} not ready".format(
                        name, rec["sha256"], exp["sha256"], step
                    )
                )
            received[name] = rec
    except BaseException:
        with RootLock(root_real, lock_timeout):
            abort_preload(root, step, [os.path.basename(p) for p in staged.values()])
            drop_claim(sdir, req.get("load_id"))
        raise
    return commit_locked(
        root, step, req.get("load_id"), expected, staged, req.get("verify") or "quick", lock_timeout, received
    )


def receive_session(req, stream, out):
    # type: (dict, object, object) -> dict
    """One preload session on the host: the prepare phase for ``req["prepare"]`` (the
    module's validated parameters, + check_mode, diff); when something is to be sent, its
    answer goes to ``out`` as one JSON line with the staged name of each needed file, the
    files follow on ``stream`` in that order and are committed. Returns the commit's result,
    or the prepare's when nothing is to be received."""
    p = dict(req["prepare"])
    check_mode, diff = bool(p.pop("check_mode", False)), bool(p.pop("diff", False))
    prep = preload_prepare(p, check_mode, diff)
    if prep.get("busy") or prep["complete"] or check_mode:
        return prep
    prep["staged"] = dict((n, staged_path(prep["step_path"], n)) for n in prep["needed"])
    out.write(json.dumps(prep) + "\n")
    out.flush()
    files = [{"name": n, "staged": prep["staged"][n]} for n in prep["needed"]]
    return receive_and_commit(
        {
            "root": p["root"],
            "step": p["step"],
            "manifest": p["_manifest"],
            "files": files,
            "load_id": p["_load_id"],
            "verify": p["verify"],
            "lock_timeout": p["lock_timeout"],
        },
        stream,
    )


def receive_main():
    # type: () -> None
    """On the host, after the action plugin's bootstrap: a JSON request line (see
    receive_session), then the files' bytes; JSON lines out, the last one the result
    (or failed + msg)."""
    stream = sys.stdin.buffer
    try:
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, RECEIVE_CHUNK)
    except (OSError, ValueError):
        pass  # not a pipe, or a smaller limit: the default size works too
    try:
        out = receive_session(json.loads(stream.readline()), stream, sys.stdout)
    except RamdiskError as exc:
        out = {"failed": True, "msg": str(exc)}
    except Exception as exc:  # reported to the controller as one line, never a traceback
        out = {"failed": True, "msg": f"ramdisk preload failed on the host: {type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- clear


def plan_clear(root, step=None, allow_any_root=False, remove_foreign=False, run_id=None):
    # type: (str, str | None, bool, bool, str | None) -> dict
    """What a clear would remove: one step folder, or every step folder of ours under the
    root. Refuses a root not on a tmpfs/ramfs (unless ``allow_any_root``); entries that are
    not step folders of ours are kept and listed in ``foreign`` (unless ``remove_foreign``).
    Refuses, removing nothing, when a run other than ``run_id`` holds a live lease on a
    step it would remove, or a preload is loading it right now."""
    root_real = resolve_root(root)
    if step:
        check_name(step, "step")
    require_ram_root(root, root_real, allow_any_root)
    if step:
        path = os.path.join(root_real, step)
        if os.path.lexists(path):
            real = os.path.realpath(path)
            if not within(real, root_real):
                raise RamdiskError(
                    f"refusing to clear {path}: it resolves to {real}, outside the ramdisk root {root_real}"
                )
        names = [step] if os.path.lexists(path) else []
    else:
        names = sorted(os.listdir(root_real)) if os.path.isdir(root_real) else []
        names = [n for n in names if n not in ROOT_INTERNAL]
    targets, foreign = [], []
    for name in names:
        path = os.path.join(root_real, name)
        if remove_foreign or is_our_step(root_real, name):
            targets.append(path)
        else:
            foreign.append(path)
    require_unused(root_real, [os.path.basename(t) for t in targets], run_id, "clear")
    require_no_mounts(targets, "clear")
    return {
        "root": root_real,
        "exists": os.path.isdir(root_real),
        "targets": [{"path": t, "bytes": tree_bytes(t)} for t in targets],
        "foreign": foreign,
    }


def do_clear(plan):
    # type: (dict) -> list
    removed = []
    for target in plan["targets"]:
        remove_entry(target["path"], plan["root"])
        removed.append(target["path"])
    return removed


# --------------------------------------------------------------------------- status


def step_status(root_real, step, expected=None, verify="quick"):
    # type: (str, str, list | None, str) -> dict
    sdir = os.path.join(root_real, step)
    out = {"step": step, "path": sdir, "state": "absent", "files": [], "bytes": 0, "problems": []}
    if os.path.islink(sdir) or not os.path.isdir(sdir):
        if os.path.lexists(sdir):
            out["problems"].append(f"{sdir} is not a folder")
        return out
    data, incoming, _internal = _entries(sdir)
    manifest = read_manifest(sdir)
    records = manifest_records(manifest)
    for name in data:
        size = tree_bytes(os.path.join(sdir, name))
        out["files"].append({"name": name, "size": size, "in_manifest": name in records})
        out["bytes"] += size
    out["leases"] = [le for le in leases(sdir) if le["live"]]
    claim = live_claim(sdir)
    if claim is not None:
        out["loading"] = claim
    if incoming:
        out["problems"].append("partial copies present: {}".format(", ".join(incoming)))
    if manifest is None:
        out["state"] = "incomplete"
        out["problems"].append("no manifest (sentinel): preload never finished")
        return out
    out["state"] = "valid"
    out["manifest_written"] = manifest.get("written")
    for name, rec in sorted(records.items()):
        if (
            file_matches(os.path.join(sdir, name), rec.get("size", -1), rec.get("sha256", ""), rec, verify)
            is None
        ):
            out["state"] = "damaged"
            out["problems"].append(f"{name} missing or changed on the host")
    if expected is not None:
        exp = dict((e["name"], e) for e in check_expected(expected))
        stale = sorted(
            n
            for n in set(exp) | set(records)
            if n not in exp
            or n not in records
            or (records[n].get("sha256"), records[n].get("size")) != (exp[n]["sha256"], exp[n]["size"])
        )
        if stale:
            out["stale_files"] = stale
            out["problems"].append("differs from the sources: {}".format(", ".join(stale)))
            if out["state"] == "valid":
                out["state"] = "stale"
    return out


def status(root, step=None, expected=None, verify="quick"):
    # type: (str, str | None, list | None, str) -> dict
    root_real = resolve_root(root)
    if step:
        check_name(step, "step")
        steps = [step]
    elif os.path.isdir(root_real):
        steps = sorted(
            n
            for n in os.listdir(root_real)
            if not n.startswith(".") and os.path.isdir(os.path.join(root_real, n))
        )
    else:
        steps = []
    results = [step_status(root_real, s, expected if step else None, verify) for s in steps]
    shm = shm_info(root_real)
    if results:
        parts = [f"{r['step']}: {len(r['files'])} files {mib(r['bytes'])} {r['state']}" for r in results]
    else:
        parts = ["no steps loaded"]
    summary = "{} | shm {}/{} used ({:.1f}%)".format(
        "; ".join(parts),
        mib(shm["used_bytes"]),
        mib(shm["size_bytes"]),
        shm["used_percent"],
    )
    shm_text = "{:.1f}/{:.1f} MiB ({:.1f}%)".format(
        shm["used_bytes"] / 1048576.0, shm["size_bytes"] / 1048576.0, shm["used_percent"]
    )
    rows = [
        f"{r['step']:<12} {len(r['files']):>5} {r['bytes'] / 1048576.0:>11.1f}  {r['state']:<10} {shm_text}"
        + _in_use(r)
        for r in results
    ] or [f"{'-':<12} {0:>5} {0.0:>11.1f}  {'empty':<10} {shm_text}"]
    return {"root": root_real, "steps": results, "shm": shm, "summary": summary, "rows": rows}


def clear_summary(targets, shm, check_mode=False):
    # type: (list, dict, bool) -> str
    """One line: the steps removed with their sizes, the bytes freed, the mount's use after."""
    use = "{} now {} of {} used ({:.1f}%)".format(
        shm["mount"], size_text(shm["used_bytes"]), size_text(shm["size_bytes"]), shm["used_percent"]
    )
    if not targets:
        return "nothing to remove; " + use
    steps = ", ".join("{} ({})".format(os.path.basename(t["path"]), size_text(t["bytes"])) for t in targets)
    freed = size_text(sum(t["bytes"] for t in targets))
    if check_mode:
        return f"would remove {steps}: {freed} would be freed (check mode, nothing removed)"
    return f"removed {steps}: {freed} freed; {use}"


def _in_use(step_result):
    # type: (dict) -> str
    runs = [le["run_id"] for le in step_result.get("leases") or []]
    text = "  in use by run " + ", ".join(runs) if runs else ""
    if step_result.get("loading"):
        text += "  loading now"
    return text


def size_text(n):
    # type: (int | float) -> str
    """Bytes for people: 812 B, 1.9 KiB, 7.1 MiB, 2.0 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / float(scale):.1f} {unit}"
    return f"{int(n)} B"


def mib(n):
    # type: (int | float) -> str
    return "%.1f MiB" % (n / 1048576.0)
