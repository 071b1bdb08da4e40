"""mt19937: std::mt19937 with the 32-bit seeding (init_genrand(seed & 0xFFFFFFFF)).

The vectorised form keeps one 624-word state per seed (n x 624 uint32, 2.5 kB a seed) and
twists all seeds at once; draws are gathered from each 624-output block as it is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prng_workers.families.base import MASK32, Family, as_seed_array, as_skip_array, check_params

N, M = 624, 397
MATRIX_A = 0x9908B0DF
UPPER, LOWER = 0x80000000, 0x7FFFFFFF
INIT_MULT = 1812433253


def init_state_int(seed: int) -> list[int]:
    mt = [seed & MASK32]
    for i in range(1, N):
        mt.append((INIT_MULT * (mt[-1] ^ (mt[-1] >> 30)) + i) & MASK32)
    return mt


def twist_int(mt: list[int]) -> None:
    for i in range(N):
        y = (mt[i] & UPPER) | (mt[(i + 1) % N] & LOWER)
        mt[i] = mt[(i + M) % N] ^ (y >> 1) ^ (MATRIX_A if y & 1 else 0)


def temper_int(y: int) -> int:
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y & MASK32


def init_state_np(seeds: np.ndarray) -> np.ndarray:
    mt = np.empty((seeds.size, N), dtype=np.uint32)
    x = (seeds & np.uint64(MASK32)).astype(np.uint32)
    mt[:, 0] = x
    mult = np.uint32(INIT_MULT)
    with np.errstate(over="ignore"):
        for i in range(1, N):
            x = mult * (x ^ (x >> np.uint32(30))) + np.uint32(i)
            mt[:, i] = x
    return mt


def _twist_rows(mt: np.ndarray, lo: int, hi: int, src: int) -> None:
    """mt[i] = mt[i + src] ^ twist(mt[i], mt[i+1]) for i in [lo, hi), all rows at once."""
    y = (mt[:, lo:hi] & np.uint32(UPPER)) | (mt[:, lo + 1:hi + 1] & np.uint32(LOWER))
    mag = np.where((y & np.uint32(1)).astype(bool), np.uint32(MATRIX_A), np.uint32(0))
    mt[:, lo:hi] = mt[:, lo + src:hi + src] ^ (y >> np.uint32(1)) ^ mag


def twist_np(mt: np.ndarray) -> None:
    """In-place twist of every row. The sequential loop reads mt[(i+397) % 624], which is an
    already-new word for i >= 227; the chunks below only read words that are final."""
    _twist_rows(mt, 0, N - M, M)  # sources 397..623: old words
    _twist_rows(mt, N - M, 2 * (N - M), M - N)  # sources 0..226: new (chunk 1)
    _twist_rows(mt, 2 * (N - M), N - 1, M - N)  # sources 227..395: new (chunk 2)
    y = (mt[:, N - 1] & np.uint32(UPPER)) | (mt[:, 0] & np.uint32(LOWER))
    mag = np.where((y & np.uint32(1)).astype(bool), np.uint32(MATRIX_A), np.uint32(0))
    mt[:, N - 1] = mt[:, M - 1] ^ (y >> np.uint32(1)) ^ mag


def temper_np(y: np.ndarray) -> np.ndarray:
    y = y ^ (y >> np.uint32(11))
    y = y ^ ((y << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    return y ^ (y >> np.uint32(18))


class MT19937(Family):
    name = "mt19937"
    description = "std::mt19937, 32-bit seeding init_genrand(seed & 0xFFFFFFFF)"
    seed_bits = 32

    def stream(self, seed: int, m: int) -> Iterator[int]:
        mt = init_state_int(seed)
        while True:
            twist_int(mt)
            for v in mt:
                yield temper_int(v) % m

    def draws(self, seeds: Any, count: int, m: int, skip: Any = 0, offset: int = 0) -> np.ndarray:
        check_params(count, m, offset, self.max_mod)
        s = as_seed_array(seeds)
        sk = as_skip_array(skip, s.size)
        n = s.size
        out = np.empty((n, count), dtype=np.int64)
        if n == 0 or count == 0:
            return out
        # rows sorted by their last needed output, most first: the rows still needing outputs
        # are then a prefix and each twist works on a view of only those (per-seed skips vary)
        stride_all = sk + 1
        last_all = int(offset) + count * stride_all - 1
        order = np.argsort(-last_all, kind="stable")
        stride, last = stride_all[order], last_all[order]
        mt = init_state_np(s[order])
        res = np.empty((n, count), dtype=np.int64)
        mm = np.uint32(m) if m <= MASK32 else None
        for block in range(int(last[0]) // N + 1):
            lo, hi = block * N, (block + 1) * N
            act = int(np.searchsorted(-last, -lo, side="right"))  # rows with last >= lo
            view = mt[:act]
            twist_np(view)
            st = stride[:act]
            # draws i with lo <= pos_i < hi: i+1 in [ceil((lo-offset+1)/stride), floor((hi-offset)/stride)]
            start = np.clip(-((-(lo - offset + 1)) // st) - 1, 0, count)
            stop = np.clip((hi - offset) // st, 0, count)
            lens = np.maximum(stop - start, 0)
            total = int(lens.sum())
            if total == 0:
                continue
            rows = np.repeat(np.arange(act), lens)
            first = np.cumsum(lens) - lens
            idx = start[rows] + (np.arange(total) - first[rows])
            pos = int(offset) + (idx + 1) * st[rows] - 1 - lo
            vals = temper_np(view[rows, pos])
            res[rows, idx] = (vals % mm) if mm is not None else vals.astype(np.int64) % m
        out[order] = res
        return out
