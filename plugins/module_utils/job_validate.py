# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Validation of a job's output file, shared by the gpu_job module (on the host) and the
fan-out (on the controller, again after the pull).

A job is done only when its output validates (incidents i3/i4): the file exists at its
final name, the WHOLE file parses, and it holds the expected number of records and the
expected seeds. Standard library only, so it runs on any host Python.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import struct
import sys
import zipfile
from array import array
from typing import Any, Dict, List

KINDS = ("exists", "json", "json_list", "npz")


class OutputInvalid(ValueError):
    """The output exists but is not a complete, expected result (one-line reason)."""


def seeds_digest(seeds: List[int]) -> str:
    """sha256 of the sorted seeds as little-endian uint64: order-free identity of a seed set."""
    arr = array("Q", sorted(int(s) for s in seeds))
    if sys.byteorder != "little":
        arr.byteswap()
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _npy_array(raw: bytes, name: str) -> List[int]:
    """Integers of a 1-D integer .npy payload (format 1.x/2.x/3.x) without NumPy."""
    if raw[:6] != b"\x93NUMPY":
        raise OutputInvalid(f"{name} is not a .npy array")
    try:
        major = raw[6]
        if major == 1:
            (hlen,) = struct.unpack("<H", raw[8:10])
            start = 10
        else:
            (hlen,) = struct.unpack("<I", raw[8:12])
            start = 12
        header = ast.literal_eval(raw[start : start + hlen].decode("latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, IndexError, struct.error):
        raise OutputInvalid(f"{name} has a damaged .npy header") from None
    if header.get("fortran_order") or len(shape) != 1:
        raise OutputInvalid(f"{name} must be a 1-D array, got shape {shape}")
    codes = {"<u8": "Q", "<i8": "q", "<u4": "I", "<i4": "i", "|u1": "B"}
    if descr not in codes:
        raise OutputInvalid(f"{name} has dtype {descr}, expected an integer array")
    body = raw[start + hlen :]
    arr = array(codes[descr])
    if arr.itemsize * shape[0] != len(body):
        raise OutputInvalid(f"{name} holds {len(body)} bytes for {shape[0]} items")
    arr.frombytes(body)
    if sys.byteorder != "little":
        arr.byteswap()
    return list(arr)


def _npz_seeds(path: str, seed_key: str) -> List[int] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC: the whole file
            if bad is not None:
                raise OutputInvalid(f"member {bad} of {path} fails its CRC")
            names = zf.namelist()
            for key in (seed_key, "seeds", "seed"):
                if key + ".npy" in names:
                    return _npy_array(zf.read(key + ".npy"), key)
    except zipfile.BadZipFile as exc:
        raise OutputInvalid(f"{path} is not a complete NPZ file: {exc}") from None
    return None


def validate_output(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Check one output against `spec`; return what was found, raise OutputInvalid if bad.

    spec keys: path, kind (exists|json|json_list|npz), records (expected count or None),
    seeds_sha256 (expected seed-set digest or None), seed_range ([low, high): every seed
    must lie inside), seed_key (default "seed").
    """
    path = spec["path"]
    kind = spec.get("kind", "exists")
    if kind not in KINDS:
        raise OutputInvalid(f"unknown output kind {kind!r}")
    if not os.path.isfile(path):
        raise OutputInvalid(f"output {path} is missing")
    size = os.path.getsize(path)
    found: Dict[str, Any] = {"path": path, "bytes": size}
    if size == 0:
        raise OutputInvalid(f"output {path} is empty")
    seed_key = spec.get("seed_key") or "seed"
    seeds: List[int] | None = None
    records: int | None = None
    if kind in ("json", "json_list"):
        try:
            with open(path, "rb") as fh:
                data = json.load(fh)  # parses the whole file: a truncated one fails (i4)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OutputInvalid(f"output {path} does not parse as JSON: {str(exc)[:120]}") from None
        if kind == "json_list":
            if not isinstance(data, list):
                raise OutputInvalid(f"output {path} is not a JSON list")
            records = len(data)
            if spec.get("seeds_sha256") or spec.get("seed_range"):
                try:
                    seeds = [int(rec[seed_key]) for rec in data]
                except (KeyError, TypeError, ValueError):
                    raise OutputInvalid(f"a record of {path} lacks an integer {seed_key!r}") from None
        elif isinstance(data, dict) and isinstance(data.get("records"), int):
            records = data["records"]
    elif kind == "npz":
        seeds = _npz_seeds(path, seed_key)
        if seeds is not None:
            records = len(seeds)
        meta = path + ".meta.json"
        if os.path.exists(meta):
            try:
                with open(meta, "rb") as fh:
                    json.load(fh)
            except ValueError as exc:
                raise OutputInvalid(f"sidecar {meta} does not parse: {str(exc)[:120]}") from None
    expected = spec.get("records")
    if expected is not None:
        if records is None:
            raise OutputInvalid(f"cannot count the records of {path}")
        if records != int(expected):
            raise OutputInvalid(f"output {path} holds {records} records, expected {int(expected)}")
    if records is not None:
        found["records"] = records
    if spec.get("seed_range"):
        low, high = (int(v) for v in spec["seed_range"])
        if seeds is None:
            raise OutputInvalid(f"cannot read the seeds of {path}")
        if any(s < low or s >= high for s in seeds):
            raise OutputInvalid(f"output {path} holds seeds outside its job's range [{low}, {high})")
    if spec.get("seeds_sha256"):
        if seeds is None:
            raise OutputInvalid(f"cannot read the seeds of {path}")
        digest = seeds_digest(seeds)
        if digest != spec["seeds_sha256"]:
            raise OutputInvalid(f"output {path} holds other seeds than its job's slice")
        found["seeds_sha256"] = digest
    return found
