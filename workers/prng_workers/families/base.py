"""Common parts of the PRNG families: argument checks, draw positions, the base class.

Draw i (0-based) of a stream is the output of generator call
n_i = offset + (i + 1) * (skip + 1) (1-based call index), reduced mod m.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prng_workers.errors import InputError

U64 = np.uint64
MASK32 = 0xFFFFFFFF
MASK48 = (1 << 48) - 1
MASK64 = (1 << 64) - 1


def check_params(count: int, m: int, offset: int, max_mod: int) -> None:
    if int(count) < 0:
        raise InputError(f"draw count must be >= 0, got {count}")
    if not 1 <= int(m) <= max_mod:
        raise InputError(f"modulus m must be in [1, {max_mod}], got {m}")
    if int(offset) < 0:
        raise InputError(f"offset must be >= 0, got {offset}")


def as_seed_array(seeds: Any) -> np.ndarray:
    """Seeds as a 1-D uint64 array; negative or non-integer seeds are an InputError."""
    if isinstance(seeds, (list, tuple, range)) or (isinstance(seeds, int) and not isinstance(seeds, bool)):
        # not np.asarray: a list holding ints >= 2^63 would become float64
        vals = list(seeds) if not isinstance(seeds, int) else [seeds]
        if not all(isinstance(v, (int, np.integer)) and 0 <= int(v) <= MASK64 for v in vals):
            raise InputError("seeds must be integers in [0, 2^64)")
        return np.array([int(v) for v in vals], dtype=np.uint64)
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InputError("seeds must be a 1-D array")
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype.kind not in "iu" and arr.size:
        if arr.dtype == object and all(isinstance(v, int) for v in arr.tolist()):
            vals = arr.tolist()
            if any(v < 0 or v > MASK64 for v in vals):
                raise InputError("seeds must be in [0, 2^64)")
            return np.array(vals, dtype=np.uint64)
        raise InputError(f"seeds must be integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise InputError("seeds must be >= 0")
    return arr.astype(np.uint64)


def as_skip_array(skip: Any, n: int) -> np.ndarray:
    """Skip as an int64 array of length n (a scalar is broadcast); negatives rejected."""
    arr = np.asarray(skip)
    if arr.dtype.kind not in "iu":
        raise InputError(f"skip must be an integer or an integer array, got {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    elif arr.shape != (n,):
        raise InputError(f"per-seed skip must have one entry per seed ({n}), got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise InputError("skip must be >= 0")
    return arr


def call_index(i: int, skip: int, offset: int) -> int:
    """1-based generator call whose output is draw i."""
    return offset + (i + 1) * (skip + 1)


class Family:
    """A PRNG family. Subclasses implement `stream` (scalar) and `draws` (vectorised)."""

    name: str = ""
    description: str = ""
    #: largest supported modulus (outputs are < 2^32)
    max_mod: int = 1 << 32
    #: seeds are read as this many bits (init masks the rest off): seeds at or above
    #: 2^seed_bits repeat the streams of smaller ones, so a sieve range stops there
    seed_bits: int = 64

    def stream(self, seed: int, m: int) -> Iterator[int]:
        """Outputs of calls 1, 2, 3, ... already reduced mod m (pure Python, obvious code)."""
        raise NotImplementedError

    def reference_draws(self, seed: int, count: int, m: int, skip: int = 0, offset: int = 0) -> list[int]:
        """Scalar pure-Python reference: walks the stream call by call."""
        check_params(count, m, offset, self.max_mod)
        seed = int(seed)
        if not 0 <= seed <= MASK64:
            raise InputError("seed must be in [0, 2^64)")
        if int(skip) < 0:
            raise InputError("skip must be >= 0")
        wanted = {call_index(i, int(skip), int(offset)): i for i in range(count)}
        out = [0] * count
        last = call_index(count - 1, int(skip), int(offset)) if count else 0
        for n, value in enumerate(self.stream(seed, int(m)), start=1):
            if n in wanted:
                out[wanted[n]] = value
            if n >= last:
                break
        return out

    def draws(self, seeds: Any, count: int, m: int, skip: Any = 0, offset: int = 0) -> np.ndarray:
        raise NotImplementedError

    def draws_backward(self, seeds: Any, count: int, m: int, skip: int, last_call: int) -> np.ndarray:
        """Newest first: column i is the output of call `last_call - i*(skip+1)`, mod m.

        The bidirectional sieve's reverse check (docs/sieve.md). This default regenerates
        the stream forward and reads it backwards; families with an invertible step
        (the affine ones) walk back from the newest state instead."""
        first = int(last_call) - int(count) * (int(skip) + 1)
        if first < 0:
            raise InputError(f"call {last_call} is too early for {count} draws at skip {skip}")
        return self.draws(seeds, count, m, int(skip), first)[:, ::-1].copy()

    def __repr__(self) -> str:
        return f"<family {self.name}>"
