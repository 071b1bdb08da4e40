# -*- coding: utf-8 -*-
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
from typing import Any, Dict, List, Optional

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
        raise OutputInvalid("%s is not a .npy array" % name)
    try:
        major = raw[6]
        if major == 1:
            (hlen,) = struct.unpack("<H", raw[8:10])
            start = 10
        else:
            (hlen,) = struct.unpack("<I", raw[8:12])
            start = 12
        header = ast.literal_eval(raw[start:start + hlen].decode("latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, IndexError, struct.error):
        raise OutputInvalid("%s has a damaged .npy header" % name)
    if header.get("fortran_order") or len(shape) != 1:
        raise OutputInvalid("%s must be a 1-D array, got shape %s" % (name, shape))
    codes = {"<u8": "Q", "<i8": "q", "<u4": "I", "<i4": "i", "|u1": "B"}
    if descr not in codes:
        raise OutputInvalid("%s has dtype %s, expected an integer array" % (name, descr))
    body = raw[start + hlen:]
    arr = array(codes[descr])
    if arr.itemsize * shape[0] != len(body):
        raise OutputInvalid("%s holds %d bytes for %d items" % (name, len(body), shape[0]))
    arr.frombytes(body)
    if sys.byteorder != "little":
        arr.byteswap()
    return list(arr)


def _npz_seeds(path: str, seed_key: str) -> Optional[List[int]]:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC: the whole file
            if bad is not None:
                raise OutputInvalid("member %s of %s fails its CRC" % (bad, path))
            names = zf.namelist()
            for key in (seed_key, "seeds", "seed"):
                if key + ".npy" in names:
                    return _npy_array(zf.read(key + ".npy"), key)
    except zipfile.BadZipFile as exc:
        raise OutputInvalid("%s is not a complete NPZ file: %s" % (path, exc))
    return None


def validate_output(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Check one output against `spec`; return what was found, raise OutputInvalid if bad.

    spec keys: path, kind (exists|json|json_list|npz), records (expected count or None),
    seeds_sha256 (expected seed-set digest or None), seed_key (default "seed").
    """
    path = spec["path"]
    kind = spec.get("kind", "exists")
    if kind not in KINDS:
        raise OutputInvalid("unknown output kind %r" % kind)
    if not os.path.isfile(path):
        raise OutputInvalid("output %s is missing" % path)
    size = os.path.getsize(path)
    found: Dict[str, Any] = {"path": path, "bytes": size}
    if size == 0:
        raise OutputInvalid("output %s is empty" % path)
    seed_key = spec.get("seed_key") or "seed"
    seeds: Optional[List[int]] = None
    records: Optional[int] = None
    if kind in ("json", "json_list"):
        try:
            with open(path, "rb") as fh:
                data = json.load(fh)  # parses the whole file: a truncated one fails (i4)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OutputInvalid("output %s does not parse as JSON: %s" % (path, str(exc)[:120]))
        if kind == "json_list":
            if not isinstance(data, list):
                raise OutputInvalid("output %s is not a JSON list" % path)
            records = len(data)
            if spec.get("seeds_sha256"):
                try:
                    seeds = [int(rec[seed_key]) for rec in data]
                except (KeyError, TypeError, ValueError):
                    raise OutputInvalid("a record of %s lacks an integer %r" % (path, seed_key))
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
                raise OutputInvalid("sidecar %s does not parse: %s" % (meta, str(exc)[:120]))
    expected = spec.get("records")
    if expected is not None:
        if records is None:
            raise OutputInvalid("cannot count the records of %s" % path)
        if records != int(expected):
            raise OutputInvalid("output %s holds %d records, expected %d" % (path, records, int(expected)))
    if records is not None:
        found["records"] = records
    if spec.get("seeds_sha256"):
        if seeds is None:
            raise OutputInvalid("cannot read the seeds of %s" % path)
        digest = seeds_digest(seeds)
        if digest != spec["seeds_sha256"]:
            raise OutputInvalid("output %s holds other seeds than its job's slice" % path)
        found["seeds_sha256"] = digest
    return found
