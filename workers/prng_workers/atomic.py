"""Atomic file writes: a temp file in the same folder, fsync, then rename into place.

A reader never sees a half-written output (incidents i3/i4): the final name appears
only once the whole content is on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed onto `path`.

    On any error the temp file is removed and nothing appears at `path`.
    """
    final = Path(path)
    directory = final.parent if str(final.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], Any]) -> None:
    """Write through `writer(fh)` into a temp file, then rename onto `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent, sort_keys=False).encode() + b"\n")
