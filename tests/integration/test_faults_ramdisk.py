"""The ramdisk clear's root safety against what an operator finds on a real host (a test
host's own mount namespace and tmpfs, reached over SSH).

i14/i35: nothing outside the configured root is ever deleted. A folder mounted inside the
root (a bind mount of a disk folder, or another filesystem) is reached through the root's
path, but its files are not the ramdisk's: before the fix `shutil.rmtree` went through it,
deleted the disk folder's files and then failed with a raw `[Errno 16] Device or resource
busy`. Now a clear, the standalone preload's purge and `remove_foreign` refuse in one line
naming the mount point, and remove nothing. Symlinks in the root (to a folder or a file
outside it) and a step name with a newline are checked here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import HostSpec

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "demo" / "train_history.json")


def _module(c: Any, args: dict[str, Any]) -> tuple[int, str]:
    """`ansible h -m prng.cluster.ramdisk -a <json>`; (exit status, output)."""
    proc = c.ansible("h", "-m", "prng.cluster.ramdisk", "-a", json.dumps(args))
    return proc.returncode, proc.stdout + proc.stderr


def test_i14_clear_never_deletes_through_a_mount_point_inside_the_root(
    make_cluster: Any, tmp_path: Path
) -> None:
    c = make_cluster([HostSpec("h")])
    disk = tmp_path / "disk"  # a disk folder of this machine, shared with the test host
    disk.mkdir()
    (disk / "precious.txt").write_text("keep me")
    rc, out = _module(c, {"state": "preload", "step": "step3", "files": [TRAIN]})
    assert rc == 0, out
    step = "/dev/shm/prng/step3"
    c.exec("h", ["mkdir", f"{step}/data"], check=True)
    c.exec("h", ["mount", "--bind", str(disk), f"{step}/data"], check=True)

    for args in (
        {"state": "clear", "step": "step3"},
        {"state": "clear"},
        {"state": "clear", "remove_foreign": True},
        {"state": "preload", "step": "step1", "files": [TRAIN], "exclusive": True},  # purges step3
    ):
        rc, out = _module(c, args)
        assert rc != 0, (args, out)
        assert f"{step}/data is a mount point inside {step}" in out and "nothing removed" in out, out
        assert (disk / "precious.txt").read_text() == "keep me", args
        assert c.exec("h", ["test", "-f", f"{step}/.manifest.json"]).returncode == 0, args

    # A foreign folder that is a mount point, with remove_foreign: refused as well.
    c.exec("h", ["umount", f"{step}/data"], check=True)
    c.exec("h", ["mkdir", "/dev/shm/prng/other"], check=True)
    c.exec("h", ["mount", "--bind", str(disk), "/dev/shm/prng/other"], check=True)
    rc, out = _module(c, {"state": "clear", "remove_foreign": True})
    assert rc != 0 and "/dev/shm/prng/other is a mount point" in out, out
    assert (disk / "precious.txt").read_text() == "keep me"

    # Unmounted, the clear goes ahead: the step goes, the disk folder stays.
    c.exec("h", ["umount", "/dev/shm/prng/other"], check=True)
    rc, out = _module(c, {"state": "clear"})
    assert rc == 0 and "removed step3" in out, out
    assert (disk / "precious.txt").read_text() == "keep me"


def test_i14_symlinks_in_the_root_and_odd_names_never_reach_outside(
    make_cluster: Any, tmp_path: Path
) -> None:
    c = make_cluster([HostSpec("h")])
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "f").write_text("f")
    (outside / "file").write_text("g")
    rc, out = _module(c, {"state": "preload", "step": "step3", "files": [TRAIN]})
    assert rc == 0, out
    for link, target in (
        ("/dev/shm/prng/linkdir", outside / "dir"),
        ("/dev/shm/prng/linkfile", outside / "file"),
        ("/dev/shm/prng/step9", outside),  # looks like a step
        ("/dev/shm/prng/step3/inner", outside / "dir"),  # inside a step folder of ours
    ):
        c.exec("h", ["ln", "-s", str(target), link], check=True)
    rc, out = _module(c, {"state": "clear", "step": "step9"})
    assert rc != 0 and "resolves to" in out and "outside the ramdisk root" in out, out
    rc, out = _module(c, {"state": "clear", "step": "a\nb"})
    assert rc != 0 and "has a control character" in out, out
    rc, out = _module(c, {"state": "clear", "remove_foreign": True})
    assert rc == 0 and "removed" in out, out
    assert c.exec("h", ["ls", "-A", "/dev/shm/prng"]).stdout.split() == []
    assert (outside / "dir" / "f").read_text() == "f" and (outside / "file").read_text() == "g"
