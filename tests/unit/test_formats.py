"""Formats of spec §7: histories, int lists, survivors (JSON and memory-mapped NPZ)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from prng_workers.errors import InputError
from prng_workers.formats import (
    count_survivors,
    history_residues,
    load_history,
    load_int_list,
    read_survivors,
    sidecar_path,
    survivors_params,
    write_survivors,
)

HIST = [
    {"date": "2024-01-01", "session": "midday", "draw": 123},
    {"date": "2024-01-01", "session": "evening", "draw": 999},
    {"date": "2024-01-02", "session": "midday", "draw": 7, "full_state": 123456},
]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_history_and_residues(tmp_path: Path):
    h = load_history(_write(tmp_path / "h.json", HIST))
    assert history_residues(h, "both", 1000).tolist() == [123, 999, 7]
    assert history_residues(h, "midday", 1000).tolist() == [123, 7]
    assert history_residues(h, "evening", 10).tolist() == [9]
    assert history_residues(h, ["midday", "evening"], 100).tolist() == [23, 99, 7]


@pytest.mark.parametrize(("content", "msg"), [
    ("[]", "empty"),
    ("{", "not valid JSON"),
    ('{"a": 1}', "JSON list"),
    ('[{"date": "2024-01-01", "session": "noon", "draw": 1}]', "session"),
    ('[{"date": "2024-01-01", "session": "midday"}]', "lacks 'draw'"),
    ('[{"date": "2024-01-01", "session": "midday", "draw": -3}]', "draw"),
    ('[{"date": "2024/01/01", "session": "midday", "draw": 3}]', "date"),
    ('[{"date": "2024-01-01", "session": "midday", "draw": "3"}]', "draw"),
])
def test_malformed_history_is_one_line_input_error(tmp_path: Path, content: str, msg: str):
    with pytest.raises(InputError, match=msg) as exc:
        load_history(_write(tmp_path / "h.json", content))
    assert "\n" not in str(exc.value)


def test_missing_history(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        load_history(tmp_path / "nope.json")


def test_sessions_filter_errors(tmp_path: Path):
    h = load_history(_write(tmp_path / "h.json", HIST[:1]))
    with pytest.raises(InputError, match="no draws"):
        history_residues(h, "evening", 1000)
    with pytest.raises(InputError, match="unknown session"):
        history_residues(h, "night", 1000)


def test_int_list(tmp_path: Path):
    assert load_int_list(_write(tmp_path / "t.json", [1, 2, 999])).tolist() == [1, 2, 999]
    for bad in ([1, "2"], {"a": 1}, [1.5], [True]):
        with pytest.raises(InputError):
            load_int_list(_write(tmp_path / "b.json", bad))


def _cols() -> dict[str, np.ndarray]:
    return {
        "seeds": np.array([2**48 + 3, 5, 2**64 - 1, 2**32], dtype=np.uint64),
        "match_rate": np.array([0.5, 1.0, 0.25, 0.75]),
        "matches": np.array([1, 2, 3, 4]),
        "best_skip": np.array([0, 3, 1, 2]),
    }


@pytest.mark.parametrize("ext", ["json", "npz"])
def test_survivors_roundtrip_sorted_uint64(tmp_path: Path, ext: str):
    p = tmp_path / f"s.{ext}"
    assert write_survivors(p, _cols(), {"family": "java_lcg", "direction": "forward"}) == 4
    got = read_survivors(p)
    assert got["seeds"].dtype == np.uint64
    assert got["seeds"].tolist() == [5, 2**32, 2**48 + 3, 2**64 - 1]  # sorted by seed
    assert got["best_skip"].tolist() == [3, 2, 0, 1]
    assert read_survivors(p, 1, 3)["seeds"].tolist() == [2**32, 2**48 + 3]
    assert survivors_params(p) == {"family": "java_lcg", "direction": "forward"}
    assert count_survivors(p) == 4


def test_i27_48bit_seeds_survive_npz_and_json(tmp_path: Path):
    seeds = np.array([2**48 - 1, 2**47 + 12345, 2**33 + 1], dtype=np.uint64)
    for ext in ("npz", "json"):
        p = tmp_path / f"s.{ext}"
        write_survivors(p, {"seeds": seeds, "match_rate": np.ones(3)})
        assert read_survivors(p)["seeds"].tolist() == sorted(seeds.tolist())
    with np.load(tmp_path / "s.npz") as z:
        assert z["seeds"].dtype == np.uint64


def test_json_records_with_seed_field(tmp_path: Path):
    recs = [{"seed": 2**63 + 1, "match_rate": 0.5}, {"seed": 3, "match_rate": 1}]
    p = tmp_path / "r.json"
    write_survivors(p, recs)
    data = json.loads(p.read_text())
    assert [r["seed"] for r in data] == [3, 2**63 + 1]
    assert read_survivors(p)["seeds"].tolist() == [3, 2**63 + 1]


def test_npz_is_memory_mapped_slice(tmp_path: Path):
    n = 200_000
    p = tmp_path / "big.npz"
    write_survivors(p, {"seeds": np.arange(n, dtype=np.uint64) * 3, "matches": np.arange(n)})
    from prng_workers import formats

    members = formats._npz_members(p)
    assert isinstance(members["seeds"], np.memmap)
    part = read_survivors(p, 150_000, 150_005)
    assert part["seeds"].tolist() == [3 * i for i in range(150_000, 150_005)]
    assert not isinstance(part["seeds"], np.memmap)


def test_compressed_npz_also_reads(tmp_path: Path):
    p = tmp_path / "c.npz"
    write_survivors(p, {"seeds": np.arange(5, dtype=np.uint64)})
    side = sidecar_path(p).read_text()
    np.savez_compressed(p, seeds=np.arange(5, dtype=np.uint64))
    sidecar_path(p).write_text(side)
    assert read_survivors(p, 2)["seeds"].tolist() == [2, 3, 4]


def test_truncated_npz_detected(tmp_path: Path):
    p = tmp_path / "t.npz"
    write_survivors(p, {"seeds": np.arange(10_000, dtype=np.uint64)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        count_survivors(p)


def test_stale_sidecar_detected(tmp_path: Path):
    p = tmp_path / "t.npz"
    write_survivors(p, {"seeds": np.arange(10, dtype=np.uint64)})
    side = sidecar_path(p).read_text()
    write_survivors(p, {"seeds": np.arange(10, dtype=np.uint64) + 1})
    sidecar_path(p).write_text(side)
    with pytest.raises(InputError, match="does not match"):
        count_survivors(p)


def test_missing_sidecar_and_bad_schema(tmp_path: Path):
    p = tmp_path / "t.npz"
    np.savez(p, seeds=np.arange(3, dtype=np.uint64))
    with pytest.raises(InputError, match="sidecar"):
        read_survivors(p)
    sidecar_path(p).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(InputError, match="schema_version"):
        read_survivors(p)


def test_npz_uint32_seeds_refused(tmp_path: Path):
    p = tmp_path / "t.npz"
    np.savez(p, seeds=np.arange(3, dtype=np.uint32))
    sidecar_path(p).write_text(json.dumps({"schema_version": 1, "count": 3}))
    with pytest.raises(InputError, match="uint64"):
        read_survivors(p)


def test_unwritable_output_leaves_nothing(tmp_path: Path):
    with pytest.raises(InputError, match="cannot write"):
        write_survivors(tmp_path / "missing" / "s.npz", _cols())
    with pytest.raises(InputError, match="extension"):
        write_survivors(tmp_path / "s.txt", _cols())
    assert os.listdir(tmp_path) == []


def test_bad_columns(tmp_path: Path):
    with pytest.raises(InputError, match="seeds"):
        write_survivors(tmp_path / "s.json", {"match_rate": [1.0]})
    with pytest.raises(InputError, match="shape"):
        write_survivors(tmp_path / "s.json", {"seeds": [1, 2], "match_rate": [1.0]})
    with pytest.raises(InputError):
        write_survivors(tmp_path / "s.json", {"seeds": [-1]})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", ["json", "npz"])
def test_slice_outside_the_file_is_refused(tmp_path: Path, ext: str):
    p = tmp_path / f"s.{ext}"
    write_survivors(p, _cols())
    assert read_survivors(p, 4, 4)["seeds"].tolist() == []
    for start, stop in ((0, 5), (3, 2), (-1, 2), (5, None)):
        with pytest.raises(InputError, match="outside"):
            read_survivors(p, start, stop)


def test_unsorted_write_keeps_order(tmp_path: Path):
    p = tmp_path / "s.npz"
    write_survivors(p, _cols(), sort_by_seed=False)
    assert read_survivors(p)["seeds"].tolist() == _cols()["seeds"].tolist()
