"""Controller side of the ramdisk module: source hashes cached by size and mtime."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.action import ramdisk as action  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("PRNG_HASH_CACHE", str(path))
    return path


def test_digest_is_cached_and_not_recomputed(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1_000_000))
    first = action.source_digest(str(src))
    assert first == {
        "name": "big.bin",
        "size": 1_000_000,
        "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
    }
    entries = list(cache.glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["sha256"] == first["sha256"]
    calls: list[str] = []
    monkeypatch.setattr(action, "_sha256", lambda p: calls.append(p) or "0" * 64)
    assert action.source_digest(str(src)) == first  # unchanged: served from the cache
    assert calls == []


def test_changed_source_is_rehashed(tmp_path: Path) -> None:
    src = tmp_path / "h.json"
    src.write_text("[1, 2, 3]")
    first = action.source_digest(str(src))
    st = src.stat()
    src.write_text("[1, 2, 4]")  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime (ctime moves)
    second = action.source_digest(str(src))
    assert second["sha256"] == hashlib.sha256(b"[1, 2, 4]").hexdigest() != first["sha256"]


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        action.source_digest(str(tmp_path / "nope"))
