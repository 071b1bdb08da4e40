"""Compiled CPU sieve (Numba, parallel over seeds).

Seeds run in lanes (64 or 256 per block) so that the per-draw arithmetic vectorises (AVX2 /
AVX-512) across seeds and enough independent chains hide the multiply latency. Affine
families (java_lcg, minstd, lcg32, pcg32) jump ahead: one multiply-add per compared draw
whatever the skip. Sequential families (xorshift32/64,
java_random, mt19937) generate the stream once per block into a bounded segment buffer
(outputs already reduced mod m) and every skip compares against it. mt19937 uses the
partial-state trick when every needed output index is < 227: output i of the first twist
only needs words i, i+1 and i+397 of the seeded state, so the seeding recurrence runs
397 + W steps and the 624-word state is never built (php_mt_seed's idea).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from prng_workers.families import get_family
from prng_workers.families.java_random import reject_limit

LANES = 64  # sequential families: seeds per block (x SEG buffered outputs)
AFF_LANES = 64  # affine families: many independent multiply-add chains hide the multiply latency
MT_LANES = 256  # the seeding recurrence is latency-bound: more independent lanes in flight
SEG = (1 << 16) // LANES  # buffered stream outputs per block (x LANES x 4 bytes = 256 KiB)

U0 = np.uint64(0)
U1 = np.uint64(1)
M32 = np.uint64(0xFFFFFFFF)
M48 = np.uint64((1 << 48) - 1)
P31 = np.uint64((1 << 31) - 1)
S5, S12, S13, S16, S17, S18 = (np.uint64(v) for v in (5, 12, 13, 16, 17, 18))
S25, S27, S31, S59 = (np.uint64(v) for v in (25, 27, 31, 59))
STAR = np.uint64(0x2545F4914F6CDD1D)
JMULT, JADD = np.uint64(0x5DEECE66D), np.uint64(0xB)

AFFINE_KIND = {"java_lcg": 0, "minstd": 1, "lcg32": 1, "pcg32": 2}
SEQ_KIND = {"xorshift32": 0, "xorshift64": 1, "java_random": 2, "mt19937": 3}


@njit(inline="always")
def _mod(v: np.uint64, m: np.int64, inv: float) -> np.int64:
    """v mod m for v < 2^32 through a double reciprocal (exact after one correction)."""
    vi = np.int64(v)
    q = np.int64(np.float64(vi) * inv)
    r = vi - q * m
    if r < 0:
        r += m
    if r >= m:
        r -= m
    return r


@njit(inline="always")
def _match(v: np.uint64, rf: float, mf: float, inv: float) -> np.int64:
    """1 if v mod m == r (v < 2^32), all in doubles: the estimated quotient is off by at most
    one, so v - q*m lies in (-m, 2m) exactly and equals r, r - m or r + m exactly when the
    true residue is r. Avoids a 64-bit integer multiply (slow in AVX-512) per draw."""
    vf = np.float64(np.int64(v))
    d = vf - np.floor(vf * inv) * mf - rf
    return np.int64((d == 0.0) | (d == mf) | (d == -mf))


@njit(inline="always")
def _prime_fold(v: np.uint64) -> np.uint64:
    """v mod (2^31-1) for v < 2^63 without a division."""
    r = (v & P31) + (v >> S31)
    r = (r & P31) + (r >> S31)
    return r - P31 if r >= P31 else r


@njit(inline="always")
def _xsh_rr(x: np.uint64) -> np.uint64:
    xs = (((x >> S18) ^ x) >> S27) & M32
    rot = x >> S59
    return ((xs >> rot) | (xs << ((np.uint64(32) - rot) & np.uint64(31)))) & M32


@njit(inline="always")
def _affine(kind: int, a: np.uint64, x: np.uint64, c: np.uint64) -> np.uint64:
    if kind == 0:
        return (a * x + c) & M48
    if kind == 1:
        return _prime_fold(a * x + c)
    return a * x + c


@njit(inline="always")
def _affine_init(family: int, seed: np.uint64) -> np.uint64:
    if family == 0:  # java_lcg
        return seed & M48
    if family == 1:  # minstd
        x = seed % P31
        return x if x != U0 else U1
    if family == 2:  # lcg32
        return (seed & M32) % P31
    return seed  # pcg32


@njit(parallel=True, cache=True)
def sieve_affine(family: int, kind: int, start: np.uint64, n: np.int64, r: np.ndarray, m: np.int64,
                 need: np.int64, skip_min: np.int64, a_first: np.ndarray, c_first: np.ndarray,
                 a_stride: np.ndarray, c_stride: np.ndarray, best_cnt: np.ndarray,
                 best_skip: np.ndarray, nthreads: int) -> None:
    """family: 0 java_lcg, 1 minstd, 2 lcg32, 3 pcg32; kind: 0 mod 2^48 / 1 mod 2^31-1 / 2 mod 2^64.
    a_first/c_first[j]: T^(first + s + 1), a_stride/c_stride[j]: T^(s + 1) for s = skip_min + j."""
    k = r.shape[0]
    n_skips = a_first.shape[0]
    inv = 1.0 / np.float64(m)
    mf = np.float64(m)
    nblocks = (n + AFF_LANES - 1) // AFF_LANES
    nchunks = min(nblocks, nthreads * 16)
    for ch in prange(nchunks):
        x0 = np.empty(AFF_LANES, np.uint64)
        x = np.empty(AFF_LANES, np.uint64)
        cnt = np.empty(AFF_LANES, np.int64)
        bc = np.empty(AFF_LANES, np.int64)
        bs = np.empty(AFF_LANES, np.int64)
        for b in range(ch * nblocks // nchunks, (ch + 1) * nblocks // nchunks):
            for lane in range(AFF_LANES):
                x0[lane] = _affine_init(family, start + np.uint64(b * AFF_LANES + lane))
                bc[lane] = -1
                bs[lane] = 0
            for j in range(n_skips):
                a1, c1, a_s, c_s = a_first[j], c_first[j], a_stride[j], c_stride[j]
                for lane in range(AFF_LANES):
                    x[lane] = _affine(kind, a1, x0[lane], c1)
                    cnt[lane] = 0
                for i in range(k):
                    rf = np.float64(r[i])
                    if family == 0:
                        for lane in range(AFF_LANES):
                            v = x[lane]
                            cnt[lane] += _match((v >> S16) & M32, rf, mf, inv)
                            x[lane] = (a_s * v + c_s) & M48
                    elif kind == 1:
                        for lane in range(AFF_LANES):
                            v = x[lane]
                            cnt[lane] += _match(v, rf, mf, inv)
                            x[lane] = _prime_fold(a_s * v + c_s)
                    else:
                        for lane in range(AFF_LANES):
                            v = x[lane]
                            cnt[lane] += _match(_xsh_rr(v), rf, mf, inv)
                            x[lane] = a_s * v + c_s
                    if (i & 31) == 31:  # stop early once no lane can still reach `need`
                        top = cnt[0]
                        for lane in range(1, AFF_LANES):
                            top = max(top, cnt[lane])
                        if top + (k - 1 - i) < need:
                            break
                for lane in range(AFF_LANES):
                    if cnt[lane] > bc[lane]:
                        bc[lane] = cnt[lane]
                        bs[lane] = skip_min + j
            base = b * AFF_LANES
            for lane in range(AFF_LANES):
                if base + lane < n:
                    best_cnt[base + lane] = bc[lane]
                    best_skip[base + lane] = bs[lane]


# ---------------------------------------------------------------- sequential families

@njit(inline="always")
def _mt_next_word(prev: np.uint32, i: int) -> np.uint32:
    return np.uint32(1812433253) * (prev ^ (prev >> np.uint32(30))) + np.uint32(i)


@njit(inline="always")
def _mt_temper(y: np.uint32) -> np.uint32:
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


@njit(inline="always")
def _mt_twist_word(a: np.uint32, b: np.uint32, c: np.uint32) -> np.uint32:
    y = (a & np.uint32(0x80000000)) | (b & np.uint32(0x7FFFFFFF))
    mag = np.uint32(0x9908B0DF) if (y & np.uint32(1)) != 0 else np.uint32(0)
    return c ^ (y >> np.uint32(1)) ^ mag


@njit(inline="always")
def _mt_twist(mt: np.ndarray) -> None:
    for i in range(624):
        i1 = i + 1 if i < 623 else 0
        im = i + 397 if i < 227 else i - 227
        for lane in range(LANES):
            mt[i, lane] = _mt_twist_word(mt[i, lane], mt[i1, lane], mt[im, lane])


@njit(cache=True)
def _seq_init(kind: int, start: np.uint64, b: int, xs: np.ndarray, mt: np.ndarray) -> int:
    """Seed the lanes; returns the mt19937 output index (624 = twist before the next output)."""
    for lane in range(LANES):
        seed = start + np.uint64(b * LANES + lane)
        if kind == 0:
            xs[lane] = seed & M32
        elif kind == 1:
            xs[lane] = seed
        elif kind == 2:
            xs[lane] = (seed ^ JMULT) & M48
        else:
            mt[0, lane] = np.uint32(seed & M32)
    if kind == 3:
        for i in range(1, 624):
            for lane in range(LANES):
                mt[i, lane] = _mt_next_word(mt[i - 1, lane], i)
    return 624


@njit(cache=True)
def _seq_fill(kind: int, xs: np.ndarray, mt: np.ndarray, mti: int, buf: np.ndarray, count: int,
              m: np.int64, inv: float, limit: np.uint64, pow2_shift: int) -> int:
    """Generate `count` outputs per lane, mod m, into buf[t, lane]; returns mti."""
    for t in range(count):
        if kind == 0:
            for lane in range(LANES):
                x = xs[lane]
                x ^= (x << S13) & M32
                x ^= x >> S17
                x ^= (x << S5) & M32
                xs[lane] = x
                buf[t, lane] = np.uint32(_mod(x, m, inv))
        elif kind == 1:
            for lane in range(LANES):
                x = xs[lane]
                x ^= x >> S12
                x ^= x << S25
                x ^= x >> S27
                xs[lane] = x
                buf[t, lane] = np.uint32(_mod((x * STAR) & M32, m, inv))
        elif kind == 2:
            rejected = False
            for lane in range(LANES):
                x = (xs[lane] * JMULT + JADD) & M48
                xs[lane] = x
                rejected |= limit != U0 and x >= limit
            if rejected:  # rare (~3e-7 a step for m=1000): redo nextInt's loop lane by lane
                for lane in range(LANES):
                    while limit != U0 and xs[lane] >= limit:
                        xs[lane] = (xs[lane] * JMULT + JADD) & M48
            for lane in range(LANES):
                bits = xs[lane] >> S17
                if pow2_shift >= 0:
                    buf[t, lane] = np.uint32(bits >> np.uint64(31 - pow2_shift))
                else:
                    buf[t, lane] = np.uint32(_mod(bits, m, inv))
        else:
            if mti >= 624:
                _mt_twist(mt)
                mti = 0
            for lane in range(LANES):
                buf[t, lane] = np.uint32(_mod(np.uint64(_mt_temper(mt[mti, lane])), m, inv))
            mti += 1
    return mti


@njit(parallel=True, cache=True)
def sieve_sequential(kind: int, start: np.uint64, n: np.int64, r: np.ndarray, m: np.int64,
                     offset: np.int64, skip_min: np.int64, skip_max: np.int64, limit: np.uint64,
                     pow2_shift: int, best_cnt: np.ndarray, best_skip: np.ndarray, nthreads: int) -> None:
    """kind: 0 xorshift32, 1 xorshift64, 2 java_random, 3 mt19937 (full state).
    Output index p (0-based) of draw i at skip s: offset + (i+1)(s+1) - 1."""
    k = r.shape[0]
    n_skips = skip_max - skip_min + 1
    inv = 1.0 / np.float64(m)
    p_lo = offset + skip_min  # first output any skip compares
    p_hi = offset + k * (skip_max + 1)  # one past the last
    nblocks = (n + LANES - 1) // LANES
    nchunks = min(nblocks, nthreads * 16)
    for ch in prange(nchunks):
        xs = np.empty(LANES, np.uint64)
        mt = np.empty((624 if kind == 3 else 1, LANES), np.uint32)
        buf = np.empty((SEG, LANES), np.uint32)
        cnt = np.zeros((n_skips, LANES), np.int64)
        for b in range(ch * nblocks // nchunks, (ch + 1) * nblocks // nchunks):
            mti = _seq_init(kind, start, b, xs, mt)
            cnt[:, :] = 0
            # outputs before p_lo are generated, not stored
            done = 0
            while done < p_lo:
                step = min(SEG, p_lo - done)
                mti = _seq_fill(kind, xs, mt, mti, buf, step, m, inv, limit, pow2_shift)
                done += step
            lo = p_lo
            while lo < p_hi:
                hi = min(lo + SEG, p_hi)
                mti = _seq_fill(kind, xs, mt, mti, buf, hi - lo, m, inv, limit, pow2_shift)
                for j in range(n_skips):
                    st = skip_min + j + 1
                    # draws i with lo <= offset + (i+1)*st - 1 < hi
                    i0 = max(0, -((-(lo - offset + 1)) // st) - 1)
                    i1 = min(k, (hi - offset) // st)
                    for i in range(i0, i1):
                        p = offset + (i + 1) * st - 1 - lo
                        ri = r[i]
                        for lane in range(LANES):
                            cnt[j, lane] += np.int64(buf[p, lane] == ri)
                lo = hi
            base = b * LANES
            for lane in range(LANES):
                if base + lane < n:
                    bc = np.int64(-1)
                    bsk = np.int64(0)
                    for j in range(n_skips):
                        if cnt[j, lane] > bc:
                            bc = cnt[j, lane]
                            bsk = skip_min + j
                    best_cnt[base + lane] = bc
                    best_skip[base + lane] = bsk


@njit(parallel=True, cache=True)
def sieve_mt_partial(start: np.uint64, n: np.int64, r: np.ndarray, m: np.int64, offset: np.int64,
                     skip_min: np.int64, skip_max: np.int64, best_cnt: np.ndarray,
                     best_skip: np.ndarray, nthreads: int) -> None:
    """mt19937 when every compared output index p < 227: output p = temper(twist(mt[p],
    mt[p+1], mt[p+397])) of the seeded state; words 0..p_max+1 and 397..p_max+397 suffice."""
    k = r.shape[0]
    n_skips = skip_max - skip_min + 1
    inv = 1.0 / np.float64(m)
    p_max = offset + k * (skip_max + 1) - 1
    w = p_max + 2
    nblocks = (n + MT_LANES - 1) // MT_LANES
    nchunks = min(nblocks, nthreads * 16)
    for ch in prange(nchunks):
        low = np.empty((w, MT_LANES), np.uint32)
        high = np.empty((w, MT_LANES), np.uint32)
        x = np.empty(MT_LANES, np.uint32)
        out = np.empty((w, MT_LANES), np.uint32)
        for b in range(ch * nblocks // nchunks, (ch + 1) * nblocks // nchunks):
            for lane in range(MT_LANES):
                x[lane] = np.uint32((start + np.uint64(b * MT_LANES + lane)) & M32)
                low[0, lane] = x[lane]
            for i in range(1, 397 + w - 1):
                for lane in range(MT_LANES):
                    x[lane] = _mt_next_word(x[lane], i)
                if i < w:
                    for lane in range(MT_LANES):
                        low[i, lane] = x[lane]
                if i >= 397:
                    for lane in range(MT_LANES):
                        high[i - 397, lane] = x[lane]
            for p in range(offset + skip_min, p_max + 1):
                for lane in range(MT_LANES):
                    y = _mt_temper(_mt_twist_word(low[p, lane], low[p + 1, lane], high[p, lane]))
                    out[p, lane] = np.uint32(_mod(np.uint64(y), m, inv))
            base = b * MT_LANES
            for lane in range(MT_LANES):
                if base + lane < n:
                    bc = np.int64(-1)
                    bsk = np.int64(0)
                    for j in range(n_skips):
                        st = skip_min + j + 1
                        c = np.int64(0)
                        for i in range(k):
                            c += np.int64(out[offset + (i + 1) * st - 1, lane] == r[i])
                        if c > bc:
                            bc = c
                            bsk = skip_min + j
                    best_cnt[base + lane] = bc
                    best_skip[base + lane] = bsk


MT_PARTIAL_LIMIT = 227  # output indices below this need only the seeded state


def sieve_range(family: str, seed_start: int, seed_end: int, residues: np.ndarray, m: int, offset: int,
                skip_min: int, skip_max: int, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Best match count and its (smallest) skip for every seed in [seed_start, seed_end).

    Exact for every seed whose best count reaches `need` (the survivors). The LCG kernel stops
    scanning a skip once no lane of the block can still reach `need`, so for seeds that
    cannot survive the returned count may be a lower bound."""
    n = seed_end - seed_start
    best_cnt = np.empty(n, dtype=np.int32)
    best_skip = np.empty(n, dtype=np.int32)
    if n == 0:
        return best_cnt, best_skip
    k = residues.shape[0]
    start = np.uint64(seed_start)
    if family in AFFINE_KIND:
        fam = get_family(family)
        lcg = fam.lcg  # type: ignore[attr-defined]
        first = offset - (1 if fam.output_before_step else 0)  # type: ignore[attr-defined]
        skips = range(skip_min, skip_max + 1)
        af, cf = zip(*(lcg.jump_int(first + s + 1) for s in skips), strict=True)
        ast, cst = zip(*(lcg.jump_int(s + 1) for s in skips), strict=True)
        fam_id = {"java_lcg": 0, "minstd": 1, "lcg32": 2, "pcg32": 3}[family]
        sieve_affine(fam_id, AFFINE_KIND[family], start, np.int64(n), residues.astype(np.int64), np.int64(m),
                     np.int64(need), np.int64(skip_min), np.array(af, dtype=np.uint64),
                     np.array(cf, dtype=np.uint64), np.array(ast, dtype=np.uint64),
                     np.array(cst, dtype=np.uint64), best_cnt, best_skip, numba.get_num_threads())
        return best_cnt, best_skip
    r32 = residues.astype(np.uint32)
    if family == "mt19937" and offset + k * (skip_max + 1) - 1 < MT_PARTIAL_LIMIT:
        sieve_mt_partial(start, np.int64(n), r32, np.int64(m), np.int64(offset), np.int64(skip_min),
                         np.int64(skip_max), best_cnt, best_skip, numba.get_num_threads())
        return best_cnt, best_skip
    limit = reject_limit(m) if family == "java_random" else 0
    pow2_shift = (m.bit_length() - 1) if family == "java_random" and m & (m - 1) == 0 else -1
    sieve_sequential(SEQ_KIND[family], start, np.int64(n), r32, np.int64(m), np.int64(offset),
                     np.int64(skip_min), np.int64(skip_max), np.uint64(limit), pow2_shift,
                     best_cnt, best_skip, numba.get_num_threads())
    return best_cnt, best_skip
