"""Affine congruential families: java_lcg, minstd, lcg32, pcg32 (and the LCG core of java_random).

T(x) = (a*x + c) mod M is affine, so T^k(x) = A_k*x + C_k mod M: a skip of any size costs one
multiply-add ("jump-ahead"). The vectorised form computes those constants per seed with
binary exponentiation, then fills blocks of draws with one (n, B) multiply-add each. The
tables of a block (T^(j*stride) for j < B, per stride) are built by doubling and kept per
set of strides, and every block is computed in place in reused buffers: a scoring
sub-batch's draws cost a few passes over the output, not a Python loop per 64 draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prng_workers.errors import InputError
from prng_workers.families.base import (
    MASK32,
    MASK48,
    MASK64,
    Family,
    as_seed_array,
    as_skip_array,
    check_params,
)

P31 = (1 << 31) - 1
BLOCK = 2048  # draws per block: (n, BLOCK) uint64 buffers stay in L2 for a scoring sub-batch


class Affine:
    """Arithmetic of x -> a*x + c mod M on uint64 arrays (M = 2^48, 2^64 or 2^31-1)."""

    def __init__(self, a: int, c: int, mod: int) -> None:
        self.a, self.c, self.mod = a, c, mod
        self.pow2 = mod & (mod - 1) == 0

    def mul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            r = x * y  # wraps mod 2^64; operands < 2^31 for the prime modulus
        if self.mod == 1 << 64:
            return r
        return r & np.uint64(self.mod - 1) if self.pow2 else r % np.uint64(self.mod)

    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            r = x + y
        if self.mod == 1 << 64:
            return r
        return r & np.uint64(self.mod - 1) if self.pow2 else r % np.uint64(self.mod)

    def jump(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A, C) arrays with T^k(x) = A*x + C, one k per entry (k >= 0)."""
        kk = np.asarray(k, dtype=np.int64).copy()
        A = np.ones(kk.shape, dtype=np.uint64)
        C = np.zeros(kk.shape, dtype=np.uint64)
        ba = np.full(kk.shape, self.a % self.mod, dtype=np.uint64)
        bc = np.full(kk.shape, self.c % self.mod, dtype=np.uint64)
        while kk.size and kk.max() > 0:
            bit = (kk & 1).astype(bool)
            if bit.any():
                A[bit] = self.mul(ba[bit], A[bit])
                C[bit] = self.add(self.mul(ba[bit], C[bit]), bc[bit])
            bc = self.add(self.mul(ba, bc), bc)
            ba = self.mul(ba, ba)
            kk >>= 1
        return A, C

    def jump_int(self, k: int) -> tuple[int, int]:
        """Python-int constants of T^k (used by the compiled and GPU backends)."""
        A, C, ba, bc = 1, 0, self.a % self.mod, self.c % self.mod
        while k > 0:
            if k & 1:
                A, C = ba * A % self.mod, (ba * C + bc) % self.mod
            ba, bc = ba * ba % self.mod, (ba * bc + bc) % self.mod
            k >>= 1
        return A, C

    def inverse_int(self, a: int, c: int) -> tuple[int, int]:
        """Constants of the inverse of x -> a*x + c: x = a^-1 * y - a^-1 * c (a is odd for the
        power-of-two moduli and non-zero mod the prime 2^31-1, so a^-1 exists)."""
        inv = pow(a % self.mod, -1, self.mod)
        return inv, (-inv * c) % self.mod

    def reduce_(self, v: np.ndarray) -> np.ndarray:
        """v mod M in place, for v a wrapped product-plus-sum (< 2^63 for the prime modulus)."""
        if self.mod == 1 << 64:
            return v
        if self.pow2:
            return np.bitwise_and(v, np.uint64(self.mod - 1), out=v)
        # 2^31 - 1: fold the high bits twice (no element-wise division), then one subtraction
        t = np.right_shift(v, np.uint64(31))
        np.bitwise_and(v, np.uint64(P31), out=v)
        v += t
        np.right_shift(v, np.uint64(31), out=t)
        np.bitwise_and(v, np.uint64(P31), out=v)
        v += t
        return np.subtract(v, np.uint64(P31), out=v, where=v >= np.uint64(P31))

    def tables(self, strides: tuple[int, ...], width: int) -> tuple[np.ndarray, ...]:
        """(ta, tc, ab, cb): T^(j*stride) = ta[u, j]*x + tc[u, j] for j < width, and the
        constants of T^(width*stride), per stride u. Built by doubling, cached per strides."""
        key = (strides, width)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            a1, c1 = self.jump(np.array(strides, dtype=np.int64))
            ta = np.empty((len(strides), width), dtype=np.uint64)
            tc = np.empty((len(strides), width), dtype=np.uint64)
            ta[:, 0], tc[:, 0] = 1, 0
            half = 1
            while half < width:  # T^(j+h) = T^h o T^j for j < h, with T^h = T o T^(h-1)
                ah = self.mul(a1, ta[:, half - 1])
                ch = self.add(self.mul(a1, tc[:, half - 1]), c1)
                hi = min(width, 2 * half)
                ta[:, half:hi] = self.mul(ah[:, None], ta[:, : hi - half])
                tc[:, half:hi] = self.add(self.mul(ah[:, None], tc[:, : hi - half]), ch[:, None])
                half = hi
            ab, cb = self.jump(np.array(strides, dtype=np.int64) * width)
            if len(cache) > 64:
                cache.clear()
            cache[key] = (ta, tc, ab, cb)
        return cache[key]

    def states_at(
        self, x0: np.ndarray, skip: np.ndarray, count: int, first: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (i0, X) blocks: X[:, j] = T^(first + (i0+j+1)(s+1))(x0), s = per-seed skip.

        `first` is the offset (offset-1 when the output is read before the step). X is one
        buffer reused from block to block: use it before asking for the next."""
        uniq, inv = np.unique(skip, return_inverse=True)
        stride = uniq + 1
        a0, c0 = self.jump(first + stride)
        x = self.add(self.mul(a0[inv], x0), c0[inv])
        width = min(BLOCK, max(count, 1))
        ta, tc, ab, cb = self.tables(tuple(stride.tolist()), width)
        one = uniq.size == 1  # the usual case: one skip, the tables broadcast over the seeds
        ta, tc = (ta, tc) if one else (ta[inv], tc[inv])
        ab, cb = ab[inv], cb[inv]
        buf = np.empty((x0.size, width), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i0 in range(0, count, width):
                w = min(width, count - i0)
                X = buf[:, :w]
                np.multiply(ta[:, :w], x[:, None], out=X)
                X += tc[:, :w]
                yield i0, self.reduce_(X)
                x = self.add(self.mul(ab, x), cb)


def mod_u32(v: np.ndarray, m: int) -> np.ndarray:
    """v mod m for outputs v < 2^32: NumPy divides uint32 by a scalar with SIMD (its `%`
    divides element by element), so v - m * (v // m) in uint32 when m fits."""
    if m > 1 << 32:
        return v % np.uint64(m)
    if m == 1 << 32:
        return v
    v32 = v.astype(np.uint32)
    q = v32 // np.uint32(m)
    q *= np.uint32(m)
    return np.subtract(v32, q, out=q)


class AffineFamily(Family):
    """A family whose step is affine mod M; subclasses give init and output g."""

    a: int = 0
    c: int = 0
    mod: int = 1
    #: pcg32 reads its output from the state before the step
    output_before_step: bool = False

    def __init__(self) -> None:
        self.lcg = Affine(self.a, self.c, self.mod)

    # scalar parts
    def init_int(self, seed: int) -> int:
        raise NotImplementedError

    def out_int(self, x: int) -> int:
        raise NotImplementedError

    # vectorised parts
    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def out_np(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stream(self, seed: int, m: int) -> Iterator[int]:
        x = self.init_int(seed)
        while True:
            before = x
            x = (self.a * x + self.c) % self.mod
            yield self.out_int(before if self.output_before_step else x) % m

    def draws(self, seeds: Any, count: int, m: int, skip: Any = 0, offset: int = 0) -> np.ndarray:
        check_params(count, m, offset, self.max_mod)
        s = as_seed_array(seeds)
        sk = as_skip_array(skip, s.size)
        out = np.empty((s.size, count), dtype=np.int64)
        if s.size == 0 or count == 0:
            return out
        first = int(offset) - (1 if self.output_before_step else 0)
        for i0, X in self.lcg.states_at(self.init_np(s), sk, count, first):
            out[:, i0 : i0 + X.shape[1]] = mod_u32(self.out_np(X), m)
        return out

    def draws_backward(self, seeds: Any, count: int, m: int, skip: int, last_call: int) -> np.ndarray:
        """Newest first (see Family.draws_backward): one jump to the state of `last_call`,
        then each older draw is one step back with the modular inverse of T^(skip+1)."""
        check_params(count, m, 0, self.max_mod)
        stride = int(skip) + 1
        if int(skip) < 0 or int(last_call) - (int(count) - 1) * stride < 1:
            raise InputError(f"call {last_call} is too early for {count} draws at skip {skip}")
        s = as_seed_array(seeds)
        out = np.empty((s.size, count), dtype=np.int64)
        if s.size == 0 or count == 0:
            return out
        a, c = self.lcg.jump_int(int(last_call) - (1 if self.output_before_step else 0))
        x = self.lcg.add(self.lcg.mul(np.uint64(a), self.init_np(s)), np.uint64(c))
        ia, ic = self.lcg.inverse_int(*self.lcg.jump_int(stride))
        ia_u, ic_u, mm = np.uint64(ia), np.uint64(ic), np.uint64(m)
        for i in range(count):
            out[:, i] = self.out_np(x) % mm
            x = self.lcg.add(self.lcg.mul(ia_u, x), ic_u)
        return out


class JavaLCG(AffineFamily):
    name = "java_lcg"
    description = "java.util.Random's 48-bit LCG, seed used as the raw state, output bits 16..47"
    seed_bits = 48
    a, c, mod = 25214903917, 11, 1 << 48

    def init_int(self, seed: int) -> int:
        return seed & MASK48

    def out_int(self, x: int) -> int:
        return (x >> 16) & MASK32

    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        return seeds & np.uint64(MASK48)

    def out_np(self, x: np.ndarray) -> np.ndarray:
        return (x >> np.uint64(16)) & np.uint64(MASK32)


class Minstd(AffineFamily):
    name = "minstd"
    description = "std::minstd_rand: x = 48271*x mod (2^31-1)"
    a, c, mod = 48271, 0, P31

    def init_int(self, seed: int) -> int:
        return (seed % P31) or 1

    def out_int(self, x: int) -> int:
        return x

    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        x = seeds % np.uint64(P31)
        x[x == 0] = 1
        return x

    def out_np(self, x: np.ndarray) -> np.ndarray:
        return x


class Lcg32(AffineFamily):
    name = "lcg32"
    description = "x = (1103515245*x + 12345) mod 0x7FFFFFFF in 64-bit arithmetic, seed = u32"
    seed_bits = 32
    a, c, mod = 1103515245, 12345, P31

    def init_int(self, seed: int) -> int:
        return seed & MASK32  # the step reduces mod 2^31-1, so T(x) == T(x mod (2^31-1))

    def out_int(self, x: int) -> int:
        return x

    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        return (seeds & np.uint64(MASK32)) % np.uint64(P31)

    def out_np(self, x: np.ndarray) -> np.ndarray:
        return x


def xsh_rr_int(s: int) -> int:
    xs = (((s >> 18) ^ s) >> 27) & MASK32
    rot = s >> 59
    return ((xs >> rot) | (xs << ((-rot) & 31))) & MASK32


class Pcg32(AffineFamily):
    name = "pcg32"
    description = "PCG32 XSH-RR, state = seed, inc = 1442695040888963407, output of the state before the step"
    a, c, mod = 6364136223846793005, 1442695040888963407, 1 << 64
    output_before_step = True

    def init_int(self, seed: int) -> int:
        return seed & MASK64

    def out_int(self, x: int) -> int:
        return xsh_rr_int(x)

    def init_np(self, seeds: np.ndarray) -> np.ndarray:
        return seeds.copy()

    def out_np(self, x: np.ndarray) -> np.ndarray:
        xs = (((x >> np.uint64(18)) ^ x) >> np.uint64(27)) & np.uint64(MASK32)
        rot = x >> np.uint64(59)
        left = (np.uint64(32) - rot) & np.uint64(31)
        return ((xs >> rot) | (xs << left)) & np.uint64(MASK32)
