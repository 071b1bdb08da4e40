"""What the ramdisk unit tests share: a ramdisk root of their own on the real /dev/shm
tmpfs, a source file's manifest entry, and the module run in-process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args


def tmpfs_root(prefix: str) -> Iterator[Path]:
    """A fresh <prefix>-<id>/ramdisk under /dev/shm (skip where it is not a writable tmpfs)."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True, text=True).stdout.strip()
    if not os.access("/dev/shm", os.W_OK) or fs != "tmpfs":
        pytest.skip("needs a writable tmpfs at /dev/shm")
    path = Path("/dev/shm") / f"{prefix}-{uuid.uuid4().hex[:10]}" / "ramdisk"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def run_module(mod, args: dict) -> dict:
    """Run an AnsibleModule's main() with `args`; its JSON result."""
    buf = io.StringIO()
    with patch_module_args(args), redirect_stdout(buf), pytest.raises(SystemExit):
        mod.main()
    return json.loads(buf.getvalue())
