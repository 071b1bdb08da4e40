"""xorshift32 and xorshift64 (Marsaglia shift triples; xorshift64 output is the xorshift64*
multiply, low 32 bits).

The step is linear over GF(2), so T^k is a bit matrix. The vectorised form applies a
matrix through 16-bit lookup tables (2 or 4 gathers + XORs per state), which makes a skip of
any size cost the same as one step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prng_workers.families.base import MASK32, MASK64, Family, as_seed_array, as_skip_array, check_params

STAR = 0x2545F4914F6CDD1D


def _apply(cols: list[int], x: int) -> int:
    r = 0
    j = 0
    while x:
        if x & 1:
            r ^= cols[j]
        x >>= 1
        j += 1
    return r


class Gf2Matrix:
    """A linear map on `bits`-bit words, stored as the images of the basis vectors."""

    def __init__(self, cols: list[int]) -> None:
        self.cols = cols

    def __matmul__(self, other: Gf2Matrix) -> Gf2Matrix:
        return Gf2Matrix([_apply(self.cols, c) for c in other.cols])

    def power(self, k: int) -> Gf2Matrix:
        bits = len(self.cols)
        result = Gf2Matrix([1 << j for j in range(bits)])
        base = self
        while k > 0:
            if k & 1:
                result = base @ result
            base = base @ base
            k >>= 1
        return result

    def tables(self) -> np.ndarray:
        """(bits/16, 65536) uint64 tables: image of each 16-bit chunk of the input."""
        bits = len(self.cols)
        out = np.zeros((bits // 16, 1 << 16), dtype=np.uint64)
        for chunk in range(bits // 16):
            t = out[chunk]
            for b in range(16):
                size = 1 << b
                t[size:2 * size] = t[:size] ^ np.uint64(self.cols[16 * chunk + b])
        return out


def apply_tables(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply per-row tables (rows, chunks, 65536) or shared tables (chunks, 65536) to x."""
    r = np.zeros_like(x)
    shared = tables.ndim == 2
    for chunk in range(tables.shape[-2]):
        part = ((x >> np.uint64(16 * chunk)) & np.uint64(0xFFFF)).astype(np.intp)
        r ^= tables[chunk, part] if shared else tables[np.arange(x.size), chunk, part]
    return r


class XorshiftFamily(Family):
    bits: int = 32
    shifts: tuple[int, int, int] = (0, 0, 0)

    def __init__(self) -> None:
        self.step = Gf2Matrix([self.step_int(1 << j) for j in range(self.bits)])
        self._cache: dict[int, np.ndarray] = {}

    def step_int(self, x: int) -> int:
        raise NotImplementedError

    def out_int(self, x: int) -> int:
        return x & MASK32

    def out_np(self, x: np.ndarray) -> np.ndarray:
        return x & np.uint64(MASK32)

    def stream(self, seed: int, m: int) -> Iterator[int]:
        x = seed & ((1 << self.bits) - 1)
        while True:
            x = self.step_int(x)
            yield self.out_int(x) % m

    def tables_for(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[k] = self.step.power(k).tables()
        return self._cache[k]

    def draws(self, seeds: Any, count: int, m: int, skip: Any = 0, offset: int = 0) -> np.ndarray:
        check_params(count, m, offset, self.max_mod)
        s = as_seed_array(seeds)
        sk = as_skip_array(skip, s.size)
        out = np.empty((s.size, count), dtype=np.int64)
        if s.size == 0 or count == 0:
            return out
        x0 = s & np.uint64((1 << self.bits) - 1)
        mm = np.uint64(m)
        uniq, inv = np.unique(sk, return_inverse=True)
        # first jump: one table set per distinct skip, applied group by group
        x = np.empty_like(x0)
        for u, value in enumerate(uniq.tolist()):
            rows = inv == u
            x[rows] = apply_tables(self.tables_for(int(offset) + value + 1), x0[rows])
        # stride: all rows at once through a flat stack of per-skip tables
        chunks = self.bits // 16
        flat = np.stack([self.tables_for(v + 1) for v in uniq.tolist()]).reshape(-1)
        base = inv.astype(np.intp) * (chunks << 16)
        for i in range(count):
            if i:
                r = np.zeros_like(x)
                for chunk in range(chunks):
                    part = ((x >> np.uint64(16 * chunk)) & np.uint64(0xFFFF)).astype(np.intp)
                    r ^= flat.take(base + ((chunk << 16) + part))
                x = r
            out[:, i] = self.out_np(x) % mm
        return out


class Xorshift32(XorshiftFamily):
    name = "xorshift32"
    description = "Marsaglia xorshift32 (13, 17, 5), seed = u32 state"
    bits = 32
    seed_bits = 32

    def step_int(self, x: int) -> int:
        x ^= (x << 13) & MASK32
        x ^= x >> 17
        x ^= (x << 5) & MASK32
        return x


class Xorshift64(XorshiftFamily):
    name = "xorshift64"
    description = "xorshift64* (12, 25, 27), output (x * 0x2545F4914F6CDD1D) mod 2^64, low 32 bits"
    bits = 64

    def step_int(self, x: int) -> int:
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        return x

    def out_int(self, x: int) -> int:
        return (x * STAR) & MASK32

    def out_np(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (x * np.uint64(STAR)) & np.uint64(MASK32)
