"""java_random: exactly `new java.util.Random(seed)` then `nextInt(m)` calls.

One call is one LCG step, except when nextInt's rejection loop throws a value away
(bits >= 2^31 - 2^31 % m, probability (2^31 % m) / 2^31 per step, about 3e-7 for m=1000):
then the call takes one more step. Over 10^5 calls that happens to ~3% of seeds, so an
exact stream cannot simply jump ahead: the vectorised form scans every state in blocks for
rejections (a compare per step) and computes call positions from the rare ones it finds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prng_workers.families.base import MASK48, Family, as_seed_array, as_skip_array, check_params
from prng_workers.families.lcg import Affine

MULT, ADD = 0x5DEECE66D, 0xB
SCRAMBLE = 0x5DEECE66D
SCAN_BLOCK = 2048


def reject_limit(m: int) -> int:
    """States x >= this value (48-bit) make nextInt(m) reject (0 = never rejects)."""
    if m & (m - 1) == 0:
        return 0
    return ((1 << 31) - (1 << 31) % m) << 17


def next_int_value(x: int, m: int) -> int:
    """nextInt(m) value for an accepted state x (after the step)."""
    bits = x >> 17
    if m & (m - 1) == 0:
        return (m * bits) >> 31
    return bits % m


class JavaRandom(Family):
    name = "java_random"
    description = "new java.util.Random(seed).nextInt(m): scrambled seed, rejection loop included"
    max_mod = (1 << 31) - 1
    seed_bits = 48

    def __init__(self) -> None:
        self.lcg = Affine(MULT, ADD, 1 << 48)

    def stream(self, seed: int, m: int) -> Iterator[int]:
        # literal transcription of java.util.Random (JDK 17)
        x = (seed ^ SCRAMBLE) & MASK48

        def next31() -> int:
            nonlocal x
            x = (x * MULT + ADD) & MASK48
            return x >> 17

        while True:
            r = next31()
            if m & (m - 1) == 0:
                yield (m * r) >> 31
                continue
            u = r
            r = u % m
            while u - r + (m - 1) >= 1 << 31:  # int overflow in Java
                u = next31()
                r = u % m
            yield r

    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        return (seeds ^ np.uint64(SCRAMBLE)) & np.uint64(MASK48)

    def rejections(self, x0: np.ndarray, steps: np.ndarray, m: int) -> dict[int, np.ndarray]:
        """Rejected step numbers (1-based) per seed row, scanning until each row has enough
        accepted steps for `steps[row]` calls. Only rows with rejections appear."""
        limit = reject_limit(m)
        found: dict[int, list[int]] = {}
        if limit == 0 or x0.size == 0:
            return {}
        need = steps.astype(np.int64).copy()
        width = max(64, min(SCAN_BLOCK, (1 << 21) // x0.size))  # bounds memory to ~16 MB a block
        ta = np.empty(width, dtype=np.uint64)
        tc = np.empty(width, dtype=np.uint64)
        a1, c1 = self.lcg.jump_int(1)
        a, c = 1, 0
        for j in range(width):  # ta[j], tc[j] = T^(j+1)
            a, c = a1 * a % (1 << 48), (a1 * c + c1) % (1 << 48)
            ta[j], tc[j] = a, c
        rows = np.arange(x0.size)
        x = x0.copy()
        done = 0
        lim = np.uint64(limit)
        while rows.size:
            X = self.lcg.add(self.lcg.mul(ta[None, :], x[:, None]), tc[None, :])
            hit_r, hit_c = np.nonzero(X >= lim)
            for r, col in zip(hit_r.tolist(), hit_c.tolist(), strict=True):
                step = done + col + 1
                if step <= need[rows[r]]:
                    found.setdefault(int(rows[r]), []).append(step)
                    need[rows[r]] += 1  # a rejected step delays every later call by one
            x = X[:, -1]
            done += width
            keep = need[rows] > done
            rows, x = rows[keep], x[keep]
        return {r: np.array(v, dtype=np.int64) for r, v in found.items()}

    def draws(self, seeds: Any, count: int, m: int, skip: Any = 0, offset: int = 0) -> np.ndarray:
        check_params(count, m, offset, self.max_mod)
        s = as_seed_array(seeds)
        sk = as_skip_array(skip, s.size)
        out = np.empty((s.size, count), dtype=np.int64)
        if s.size == 0 or count == 0:
            return out
        x0 = self.init_np(s)
        last_call = int(offset) + count * (sk + 1)
        rej = self.rejections(x0, last_call, m)
        # no rejection: call n is step n, a constant stride -> jump-ahead blocks
        for i0, X in self.lcg.states_at(x0, sk, count, int(offset)):
            out[:, i0:i0 + X.shape[1]] = self._values(X, m)
        # rows with rejections: call n is step n + #{q : rej[q] - q <= n}
        for row, rs in rej.items():
            calls = int(offset) + (np.arange(count, dtype=np.int64) + 1) * (int(sk[row]) + 1)
            shift = np.searchsorted(rs - np.arange(rs.size), calls, side="right")
            a, c = self.lcg.jump(calls + shift)
            out[row] = self._values(self.lcg.add(self.lcg.mul(a, x0[row:row + 1]), c), m)
        return out

    @staticmethod
    def _values(x: np.ndarray, m: int) -> np.ndarray:
        bits = (x >> np.uint64(17)).astype(np.int64)
        if m & (m - 1) == 0:
            return (bits * m) >> 31
        return bits % m
