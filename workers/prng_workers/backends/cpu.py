"""Compiled CPU sieve (Numba, parallel over seeds).

Seeds run in lanes so that the per-draw arithmetic is vectorised across seeds and enough
independent chains hide the multiply latency. Affine families (java_lcg, minstd, lcg32,
pcg32) jump ahead: one multiply-add per compared draw whatever the skip. Sequential families
(xorshift32/64, java_random, mt19937) generate the stream once per block into a bounded
segment buffer (outputs already reduced mod m) and every skip compares against it. mt19937
uses the partial-state trick when every needed output index is < 227: output i of the first
twist only needs words i, i+1 and i+397 of the seeded state, so the seeding recurrence runs
397 + W steps and the 624-word state is never built (php_mt_seed's idea).

The affine and the partial-state mt19937 kernels are explicit SIMD (LLVM vector IR through
Numba intrinsics, section "explicit SIMD kernels"): the code width is chosen per kernel,
mt19937 keeps its 32-bit recurrence in 16 x u32 lanes, and java_lcg uses IFMA where the CPU
has it; the portable variant of the same code is kept and tested equal
(tests/unit/test_cpu_kernels.py).
"""

from __future__ import annotations

import functools
import os

# The sieve calls a parallel kernel once per chunk of seeds and does NumPy work in between;
# OpenMP's default active wait keeps the idle worker threads spinning through it (10-13 % of
# the CPU time of an mt19937 exact search). libgomp reads this when Numba first loads it, on
# the first parallel call; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from prng_workers.families import get_family
from prng_workers.families.java_random import reject_limit

LANES = 64  # sequential families: seeds per block (x SEG buffered outputs)
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


@njit(inline="always")
def _emit(out_idx, out_cnt, out_skip, out_n, ch: int, idx: np.int64, bc: np.int64, bs: np.int64) -> None:
    """Append one survivor to chunk ch's slice of the outputs (cap = len(out_idx) // chunks). A
    full slice only counts on: the caller sees out_n[ch] > cap and runs the range again."""
    cap = out_idx.shape[0] // out_n.shape[0]
    t = out_n[ch]
    if t < cap:
        out_idx[ch * cap + t] = idx
        out_cnt[ch * cap + t] = bc
        out_skip[ch * cap + t] = bs
    out_n[ch] = t + 1


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
def _seq_fill(
    kind: int,
    xs: np.ndarray,
    mt: np.ndarray,
    mti: int,
    buf: np.ndarray,
    count: int,
    m: np.int64,
    inv: float,
    limit: np.uint64,
    pow2_shift: int,
) -> int:
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
def sieve_sequential(
    kind: int,
    start: np.uint64,
    n: np.int64,
    r: np.ndarray,
    m: np.int64,
    offset: np.int64,
    skip_min: np.int64,
    skip_max: np.int64,
    limit: np.uint64,
    pow2_shift: int,
    need: np.int64,
    out_idx: np.ndarray,
    out_cnt: np.ndarray,
    out_skip: np.ndarray,
    out_n: np.ndarray,
) -> None:
    """kind: 0 xorshift32, 1 xorshift64, 2 java_random, 3 mt19937 (full state).
    Output index p (0-based) of draw i at skip s: offset + (i+1)(s+1) - 1. The seeds whose
    best count reaches `need` go to the outputs (see `_emit`; one slice per chunk of blocks)."""
    k = r.shape[0]
    n_skips = skip_max - skip_min + 1
    inv = 1.0 / np.float64(m)
    p_lo = offset + skip_min  # first output any skip compares
    p_hi = offset + k * (skip_max + 1)  # one past the last
    nblocks = (n + LANES - 1) // LANES
    nchunks = min(nblocks, out_n.shape[0])
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
            for lane in range(min(LANES, n - base)):
                bc = np.int64(-1)
                bsk = np.int64(0)
                for j in range(n_skips):
                    if cnt[j, lane] > bc:
                        bc = cnt[j, lane]
                        bsk = skip_min + j
                if bc >= need:
                    _emit(out_idx, out_cnt, out_skip, out_n, ch, base + lane, bc, bsk)


# ---------------------------------------------------------------- explicit SIMD kernels
#
# The hot loops of the affine families and of mt19937's partial state are written as LLVM
# vector IR (Numba intrinsics) instead of scalar loops left to the auto-vectoriser, which
# widened mt19937's 32-bit recurrence to 64-bit lanes and kept the lane arrays in memory.
# Here the vector width is explicit per kernel, the lanes of a block stay in registers for the
# whole loop, and the arithmetic is exactly the width it needs. A kernel `variant` picks the
# code (a constant of each compiled function: `affine_kernel(family, variant)` and
# `mt_partial_kernel(variant)` compile and disk-cache one function per value):
#   bit 0: 512-bit vectors (8 x u64 / 16 x u32) instead of 256-bit,
#   bit 1: IFMA (vpmadd52luq): java_lcg's mod-2^48 multiply-add, and every affine family's
#          compare (a 52-bit divisibility test whose subtraction rides on the multiply-add).
# VARIANT_PORTABLE (0) is plain LLVM vector IR that any x86-64 or other target lowers; the
# tests check every variant the host can run against it and against the NumPy path.

VARIANT_PORTABLE = 0
WIDE, IFMA = 1, 2


def _target_features() -> frozenset[str]:
    """CPU features Numba compiles for: NUMBA_CPU_FEATURES when set, else the host's."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return frozenset(f[1:] for f in str(config.CPU_FEATURES).split(",") if f.startswith("+"))
    return frozenset(k for k, v in llvm_binding.get_host_cpu_features().items() if v)


FEATURES = _target_features()
HAS_AVX512 = {"avx512f", "avx512dq", "avx512vl"} <= FEATURES
HAS_IFMA = HAS_AVX512 and "avx512ifma" in FEATURES


def variants() -> list[int]:
    """Every kernel variant this CPU can run (the portable one first)."""
    out = [VARIANT_PORTABLE]
    if HAS_AVX512:
        out.append(WIDE)
    if HAS_IFMA:
        out.append(WIDE | IFMA)
    return out


# Per kernel: the fastest variant measured (docs/benchmarks.md, "Issue 12: CPU kernels"):
# 512-bit wherever AVX-512 exists, IFMA where the CPU has it.
FAST = {
    "mt19937": WIDE if HAS_AVX512 else 0,
    "affine": (WIDE | IFMA) if HAS_IFMA else (WIDE if HAS_AVX512 else 0),
}

MT_VECS = 8  # mt19937: vectors of seeds in flight (8 x 16 u32 = 128 seeds at 512 bits)


def _aff_vecs(variant: int) -> int:
    """Affine kernels: vectors of seeds in flight (8 x 8 u64 = 64 seeds at 512 bits); 4 where
    only AVX2's 16 vector registers hold the states and counts."""
    return 8 if variant & WIDE or HAS_AVX512 else 4


_I1, _I32, _I64, _F64 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.DoubleType()


def _lit(t: types.Type) -> int | None:
    """The value of a literal int argument (the kernel variant, the family), else None."""
    return int(t.literal_value) if isinstance(t, types.IntegerLiteral) else None


def _w32(variant: int) -> int:
    return 16 if variant & WIDE else 8


def _vconst(vt: ir.VectorType, value: int) -> ir.Constant:
    bits = vt.element.width
    value &= (1 << bits) - 1
    if value >= 1 << (bits - 1):  # LLVM reads decimal constants as signed
        value -= 1 << bits
    return ir.Constant(vt, [value] * vt.count)


def _splat(builder: ir.IRBuilder, value: ir.Value, vt: ir.VectorType) -> ir.Value:
    undef = ir.Constant(vt, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _intrinsic_fn(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _data(context, builder, aty, aval) -> ir.Value:
    return context.make_array(aty)(context, builder, aval).data


def _vptr(builder: ir.IRBuilder, data: ir.Value, elem_index: ir.Value, vt: ir.VectorType) -> ir.Value:
    """Pointer to the vector starting at element `elem_index` of a contiguous array."""
    return builder.bitcast(builder.gep(data, [elem_index]), vt.as_pointer())


def _vload(builder, base, v: int) -> ir.Value:
    return builder.load(builder.gep(base, [ir.Constant(_I32, v)]), align=base.type.pointee.element.width // 8)


def _vstore(builder, value, base, v: int) -> None:
    builder.store(
        value, builder.gep(base, [ir.Constant(_I32, v)]), align=base.type.pointee.element.width // 8
    )


def _as_i64(context, builder, value, ty) -> ir.Value:
    return context.cast(builder, value, ty, types.int64)


# ---- mt19937 seeding recurrence x_i = 1812433253 * (x_{i-1} ^ (x_{i-1} >> 30)) + i, in u32 lanes


def _mt_steps_codegen(context, builder, sig, args, store: bool):
    variant = _lit(sig.args[-1])
    vt = ir.VectorType(_I32, _w32(variant))
    lanes = vt.count * MT_VECS
    xa = _data(context, builder, sig.args[0], args[0])
    i0 = _as_i64(context, builder, args[1], sig.args[1])
    i1 = _as_i64(context, builder, args[2], sig.args[2])
    xp = builder.bitcast(xa, vt.as_pointer())
    slots = [cgutils.alloca_once(builder, vt) for _ in range(MT_VECS)]
    for v, slot in enumerate(slots):
        builder.store(_vload(builder, xp, v), slot)
    iv_slot = cgutils.alloca_once(builder, vt)
    builder.store(_splat(builder, builder.trunc(i0, _I32), vt), iv_slot)
    mul, s30, one = _vconst(vt, 1812433253), _vconst(vt, 30), _vconst(vt, 1)
    if store:
        dst = _data(context, builder, sig.args[3], args[3])
        row0 = _as_i64(context, builder, args[4], sig.args[4])
    with cgutils.for_range(builder, builder.sub(i1, i0)) as loop:
        iv = builder.load(iv_slot)
        xs = []
        for slot in slots:
            x = builder.load(slot)
            x = builder.add(builder.mul(builder.xor(x, builder.lshr(x, s30)), mul), iv)
            builder.store(x, slot)
            xs.append(x)
        if store:  # word i goes to dst[i - row0, :]
            row = builder.sub(builder.add(i0, loop.index), row0)
            rp = _vptr(builder, dst, builder.mul(row, ir.Constant(_I64, lanes)), vt)
            for v, x in enumerate(xs):
                _vstore(builder, x, rp, v)
        builder.store(builder.add(iv, one), iv_slot)
    for v, slot in enumerate(slots):
        _vstore(builder, builder.load(slot), xp, v)
    return context.get_dummy_value()


@intrinsic
def _mt_steps(typingctx, x, i0, i1, variant):
    """Seeding steps i0..i1-1 on every lane of x (MT_VECS vectors, kept in registers)."""
    if _lit(variant) is None:
        return None

    def codegen(context, builder, sig, args):
        return _mt_steps_codegen(context, builder, sig, args, store=False)

    return types.void(x, i0, i1, variant), codegen


@intrinsic
def _mt_steps_store(typingctx, x, i0, i1, dst, row0, variant):
    """As _mt_steps, and word i of every lane goes to dst[i - row0, :]."""
    if _lit(variant) is None:
        return None

    def codegen(context, builder, sig, args):
        return _mt_steps_codegen(context, builder, sig, args, store=True)

    return types.void(x, i0, i1, dst, row0, variant), codegen


def _mt_word_ir(builder, a_p, b_p, c_p, v: int, vt):
    """temper(twist(a, b, c)) of vector v: output p of the first twist from words p, p+1, p+397."""
    a, b, c = _vload(builder, a_p, v), _vload(builder, b_p, v), _vload(builder, c_p, v)
    y = builder.or_(builder.and_(a, _vconst(vt, 0x80000000)), builder.and_(b, _vconst(vt, 0x7FFFFFFF)))
    mag = builder.and_(builder.sub(_vconst(vt, 0), builder.and_(b, _vconst(vt, 1))), _vconst(vt, 0x9908B0DF))
    y = builder.xor(builder.xor(c, builder.lshr(y, _vconst(vt, 1))), mag)
    y = builder.xor(y, builder.lshr(y, _vconst(vt, 11)))
    y = builder.xor(y, builder.and_(builder.shl(y, _vconst(vt, 7)), _vconst(vt, 0x9D2C5680)))
    y = builder.xor(y, builder.and_(builder.shl(y, _vconst(vt, 15)), _vconst(vt, 0xEFC60000)))
    return builder.xor(y, builder.lshr(y, _vconst(vt, 18)))


@intrinsic
def _mt_output(typingctx, low, high, out, p, mode, mconst, inv, variant):
    """out[p, :] = temper(twist(low[p], low[p+1], high[p])) mod m for every lane. mode 0:
    & mconst (m a power of two, mconst = m - 1); mode 1: exact double division (inv = 1/m
    rounded up: floor(y * inv) is the true quotient for y < 2^50)."""
    if _lit(variant) is None:
        return None
    w = _w32(_lit(variant))

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_I32, w)
        lanes = w * MT_VECS
        lo, hi, ou = (_data(context, builder, sig.args[i], args[i]) for i in range(3))
        p = _as_i64(context, builder, args[3], sig.args[3])
        mode_v = _as_i64(context, builder, args[4], sig.args[4])
        mc = builder.trunc(_as_i64(context, builder, args[5], sig.args[5]), _I32)
        inv_v = args[6]
        row = builder.mul(p, ir.Constant(_I64, lanes))
        a_p = _vptr(builder, lo, row, vt)
        b_p = _vptr(builder, lo, builder.add(row, ir.Constant(_I64, lanes)), vt)
        c_p = _vptr(builder, hi, row, vt)
        o_p = _vptr(builder, ou, row, vt)
        fvt = ir.VectorType(_F64, w)
        floor = _intrinsic_fn(builder, f"llvm.floor.v{w}f64", fvt, [fvt])
        is_mask = builder.icmp_signed("==", mode_v, ir.Constant(_I64, 0))
        with builder.if_else(is_mask) as (pow2, other):
            with pow2:
                mask = _splat(builder, mc, vt)
                for v in range(MT_VECS):
                    y = _mt_word_ir(builder, a_p, b_p, c_p, v, vt)
                    _vstore(builder, builder.and_(y, mask), o_p, v)
            with other:
                mf = _splat(builder, builder.uitofp(mc, _F64), fvt)
                invs = _splat(builder, inv_v, fvt)
                for v in range(MT_VECS):
                    yf = builder.uitofp(_mt_word_ir(builder, a_p, b_p, c_p, v, vt), fvt)
                    q = builder.call(floor, [builder.fmul(yf, invs)])
                    _vstore(builder, builder.fptoui(builder.fsub(yf, builder.fmul(q, mf)), vt), o_p, v)
        return context.get_dummy_value()

    return types.void(low, high, out, p, mode, mconst, inv, variant), codegen


@intrinsic
def _count_eq(typingctx, out, p, value, cnt, j, variant):
    """cnt[j, :] += (out[p, :] == value) over the lanes of a block; returns max(cnt[j, :])."""
    if _lit(variant) is None:
        return None
    w = _w32(_lit(variant))

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_I32, w)
        lanes = w * MT_VECS
        ou = _data(context, builder, sig.args[0], args[0])
        cn = _data(context, builder, sig.args[3], args[3])
        p = _as_i64(context, builder, args[1], sig.args[1])
        val = _splat(builder, builder.trunc(_as_i64(context, builder, args[2], sig.args[2]), _I32), vt)
        j = _as_i64(context, builder, args[4], sig.args[4])
        o_p = _vptr(builder, ou, builder.mul(p, ir.Constant(_I64, lanes)), vt)
        c_p = _vptr(builder, cn, builder.mul(j, ir.Constant(_I64, lanes)), vt)
        top = None
        for v in range(MT_VECS):
            eq = builder.icmp_unsigned("==", _vload(builder, o_p, v), val)
            c = builder.add(_vload(builder, c_p, v), builder.zext(eq, vt))
            _vstore(builder, c, c_p, v)
            top = c if top is None else builder.select(builder.icmp_signed(">", c, top), c, top)
        smax = _intrinsic_fn(builder, f"llvm.vector.reduce.smax.v{w}i32", _I32, [vt])
        return builder.sext(builder.call(smax, [top]), _I64)

    return types.int64(out, p, value, cnt, j, variant), codegen


@intrinsic
def _mt_seed(typingctx, x, low, s0, variant):
    """x[lane] = low[0, lane] = (s0 + lane) mod 2^32: the first word of each seed of a block."""
    if _lit(variant) is None:
        return None
    w = _w32(_lit(variant))

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_I32, w)
        xp = builder.bitcast(_data(context, builder, sig.args[0], args[0]), vt.as_pointer())
        lp = builder.bitcast(_data(context, builder, sig.args[1], args[1]), vt.as_pointer())
        base = _splat(builder, builder.trunc(_as_i64(context, builder, args[2], sig.args[2]), _I32), vt)
        for v in range(MT_VECS):
            seeds = builder.add(base, ir.Constant(vt, list(range(v * w, (v + 1) * w))))
            _vstore(builder, seeds, xp, v)
            _vstore(builder, seeds, lp, v)
        return context.get_dummy_value()

    return types.void(x, low, s0, variant), codegen


# ---- affine families: the draw loop of one block at one skip


def _xsh_rr_ir(builder, x, vt):
    """PCG32 XSH-RR output of 64-bit lanes, rotated in 32-bit lanes (one vprorvd)."""
    v32 = ir.VectorType(_I32, vt.count)
    xs = builder.trunc(builder.lshr(builder.xor(builder.lshr(x, _vconst(vt, 18)), x), _vconst(vt, 27)), v32)
    rot = builder.trunc(builder.lshr(x, _vconst(vt, 59)), v32)
    fshr = _intrinsic_fn(builder, f"llvm.fshr.v{vt.count}i32", v32, [v32, v32, v32])
    return builder.zext(builder.call(fshr, [xs, xs, rot]), vt)


def _affine_step_ir(builder, family: int, variant: int, x, a, c, vt):
    if family == 0:  # java_lcg: (a*x + c) mod 2^48
        if variant & IFMA:  # lo52(a*x) + c, then mod 2^48 (2^48 divides 2^52)
            madd = _intrinsic_fn(builder, "llvm.x86.avx512.vpmadd52l.uq.512", vt, [vt, vt, vt])
            return builder.and_(builder.call(madd, [c, x, a]), _vconst(vt, (1 << 48) - 1))
        return builder.and_(builder.add(builder.mul(x, a), c), _vconst(vt, (1 << 48) - 1))
    if family in (1, 2):  # minstd / lcg32: a, x < 2^31: one 32x32->64 multiply, then fold mod 2^31-1
        m32 = _vconst(vt, 0xFFFFFFFF)
        v = builder.add(builder.mul(builder.and_(x, m32), builder.and_(a, m32)), c)  # < 2^62 + 2^31
        p31 = _vconst(vt, (1 << 31) - 1)
        r = builder.add(builder.and_(v, p31), builder.lshr(v, _vconst(vt, 31)))  # < 2^32 = 2*p31 + 2
        umin = _intrinsic_fn(builder, f"llvm.umin.v{vt.count}i64", vt, [vt, vt])
        r = builder.call(umin, [r, builder.sub(r, p31)])  # r - p31 wraps above r when r < p31
        return builder.call(umin, [r, builder.sub(r, p31)])  # now < p31 + 2, then canonical
    return builder.add(builder.mul(x, a), c)  # pcg32: mod 2^64


def _affine_out_ir(builder, family: int, x, vt):
    if family == 0:
        return builder.lshr(x, _vconst(vt, 16))  # bits 16..47 (x < 2^48)
    if family == 3:
        return _xsh_rr_ir(builder, x, vt)
    return x


@intrinsic
def _affine_count(typingctx, family, x, cnt, rt, need, a, c, mode, mconst, variant):
    """Draws i = 0..k-1 (k = len(rt)) of every lane of x at one skip: cnt[lane] = matches.
    Per draw: out = g(x); match (mode 0: ((out*M - rt[i]) mod 2^64) < 2^32 with M = mconst =
    ceil(2^64/m), rt[i] = r_i*M mod 2^64, exact for out < 2^32 and m <= 2^31 (Lemire's
    divisibility test of out - r_i); mode 1: (out & mconst) == rt[i], m a power of two;
    mode 2: out == r_i or out == r_i + m (out < 2^32 < 2m); mode 3 (IFMA variants): the same
    test in 52 bits, rt[i] + lo52(out * M) < 2^32 (as u64) with M = ceil(2^52/m) and
    rt[i] = -r_i*M mod 2^64, exact while M >= 2^32 + m); x = a*x + c. Every 32 draws the
    loop stops once no lane can still reach `need` (the counts are then lower bounds)."""
    fam, var = _lit(family), _lit(variant)
    if fam is None or var is None:
        return None
    w = 8 if var & WIDE else 4
    nv = _aff_vecs(var)

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_I64, w)
        xp = builder.bitcast(_data(context, builder, sig.args[1], args[1]), vt.as_pointer())
        cp = builder.bitcast(_data(context, builder, sig.args[2], args[2]), vt.as_pointer())
        rt_t = sig.args[3]
        rtp = _data(context, builder, rt_t, args[3])
        k = context.make_array(rt_t)(context, builder, args[3]).nitems
        need_v = _as_i64(context, builder, args[4], sig.args[4])
        a_v = _splat(builder, _as_i64(context, builder, args[5], sig.args[5]), vt)
        c_v = _splat(builder, _as_i64(context, builder, args[6], sig.args[6]), vt)
        mode_v = _as_i64(context, builder, args[7], sig.args[7])
        mc = _as_i64(context, builder, args[8], sig.args[8])
        mc_v = _splat(builder, mc, vt)
        lim = _vconst(vt, 1 << 32)
        # -1 that LLVM cannot see as a constant ((-k) >> 63 for k = len(rt) > 0): with a literal
        # -1 (or `cnt + zext(hit)`) it builds the count as vpmovm2q + vpsubq, two ops per draw;
        # an opaque one keeps `select(hit, cnt - minus_one, cnt)`, one masked vpsubq
        minus_one = _splat(builder, builder.ashr(builder.neg(k), ir.Constant(_I64, 63)), vt)
        smax = _intrinsic_fn(builder, f"llvm.vector.reduce.smax.v{w}i64", _I64, [vt])
        xs = [cgutils.alloca_once(builder, vt) for _ in range(nv)]
        cs = [cgutils.alloca_once(builder, vt) for _ in range(nv)]
        for v in range(nv):
            builder.store(_vload(builder, xp, v), xs[v])
            builder.store(_vconst(vt, 0), cs[v])
        done = builder.append_basic_block("aff.done")
        switch_bb = builder.block
        sw = builder.switch(mode_v, done)
        madd = None
        if var & IFMA:
            madd = _intrinsic_fn(builder, "llvm.x86.avx512.vpmadd52l.uq.512", vt, [vt, vt, vt])
        for mode in (0, 1, 2, 3) if var & IFMA else (0, 1, 2):  # one loop per compare mode
            head = builder.append_basic_block(f"aff.m{mode}.head")
            sw.add_case(ir.Constant(_I64, mode), head)
            body = builder.append_basic_block(f"aff.m{mode}.body")
            check = builder.append_basic_block(f"aff.m{mode}.check")
            latch = builder.append_basic_block(f"aff.m{mode}.latch")
            builder.position_at_end(head)
            i = builder.phi(_I64)
            builder.cbranch(builder.icmp_signed("<", i, k), body, done)
            builder.position_at_end(body)
            ri = builder.load(builder.gep(rtp, [i]))
            r_v = _splat(builder, ri, vt)
            r2_v = _splat(builder, builder.add(ri, mc), vt) if mode == 2 else None
            for v in range(nv):
                x = builder.load(xs[v])
                out = _affine_out_ir(builder, fam, x, vt)
                if mode == 0:
                    hit = builder.icmp_unsigned("<", builder.sub(builder.mul(out, mc_v), r_v), lim)
                elif mode == 3:  # rt[i] + lo52(out * M): the subtraction rides on the IFMA
                    hit = builder.icmp_unsigned("<", builder.call(madd, [r_v, out, mc_v]), lim)
                elif mode == 1:
                    hit = builder.icmp_unsigned("==", builder.and_(out, mc_v), r_v)
                else:
                    hit = builder.or_(
                        builder.icmp_unsigned("==", out, r_v), builder.icmp_unsigned("==", out, r2_v)
                    )
                cv = builder.load(cs[v])  # a masked subtract of -1 (see minus_one)
                builder.store(builder.select(hit, builder.sub(cv, minus_one), cv), cs[v])
                builder.store(_affine_step_ir(builder, fam, var, x, a_v, c_v, vt), xs[v])
            nxt = builder.add(i, ir.Constant(_I64, 1))
            is_check = builder.icmp_unsigned(
                "==", builder.and_(i, ir.Constant(_I64, 31)), ir.Constant(_I64, 31)
            )
            builder.cbranch(is_check, check, latch)
            builder.position_at_end(check)
            top = builder.load(cs[0])
            for v in range(1, nv):
                cv = builder.load(cs[v])
                top = builder.select(builder.icmp_signed(">", cv, top), cv, top)
            best = builder.add(
                builder.call(smax, [top]), builder.sub(builder.sub(k, i), ir.Constant(_I64, 1))
            )
            builder.cbranch(builder.icmp_signed("<", best, need_v), done, latch)
            builder.position_at_end(latch)
            builder.branch(head)
            i.add_incoming(ir.Constant(_I64, 0), switch_bb)
            i.add_incoming(nxt, latch)
        builder.position_at_end(done)
        for v in range(nv):
            _vstore(builder, builder.load(cs[v]), cp, v)
        return context.get_dummy_value()

    return types.void(family, x, cnt, rt, need, a, c, mode, mconst, variant), codegen


@functools.cache
def affine_kernel(family: int, variant: int):
    """The compiled sieve of one affine family (0 java_lcg, 1 minstd, 2 lcg32, 3 pcg32) in one
    variant. Family and variant are closure constants, so each pair is its own compiled (and
    disk-cached) function and the intrinsics see them as literals; a literal *argument* instead
    would cost a dispatcher retype on every call."""
    kind = 0 if family == 0 else (1 if family < 3 else 2)
    lanes = _aff_vecs(variant) * (8 if variant & WIDE else 4)

    @njit(parallel=True, cache=True)
    def sieve_affine(
        start: np.uint64,
        n: np.int64,
        rt: np.ndarray,
        mode: np.int64,
        mconst: np.uint64,
        need: np.int64,
        skip_min: np.int64,
        a_first: np.ndarray,
        c_first: np.ndarray,
        a_stride: np.ndarray,
        c_stride: np.ndarray,
        out_idx: np.ndarray,
        out_cnt: np.ndarray,
        out_skip: np.ndarray,
        out_n: np.ndarray,
    ) -> None:
        """a_first/c_first[j]: T^(first + s + 1), a_stride/c_stride[j]: T^(s + 1) for
        s = skip_min + j; rt, mode, mconst: the window as `_affine_compare` prepares it. The
        seeds whose best count reaches `need` go to the outputs (`_emit`)."""
        n_skips = a_first.shape[0]
        nblocks = (n + lanes - 1) // lanes
        nchunks = min(nblocks, out_n.shape[0])
        for ch in prange(nchunks):
            x0 = np.empty(lanes, np.uint64)
            x = np.empty(lanes, np.uint64)
            cnt = np.empty(lanes, np.int64)
            bc = np.empty(lanes, np.int64)
            bs = np.empty(lanes, np.int64)
            for b in range(ch * nblocks // nchunks, (ch + 1) * nblocks // nchunks):
                for lane in range(lanes):
                    x0[lane] = _affine_init(family, start + np.uint64(b * lanes + lane))
                    bc[lane] = -1
                    bs[lane] = 0
                for j in range(n_skips):
                    a1, c1 = a_first[j], c_first[j]
                    for lane in range(lanes):
                        x[lane] = _affine(kind, a1, x0[lane], c1)
                    _affine_count(family, x, cnt, rt, need, a_stride[j], c_stride[j], mode, mconst, variant)
                    for lane in range(lanes):
                        if cnt[lane] > bc[lane]:
                            bc[lane] = cnt[lane]
                            bs[lane] = skip_min + j
                base = b * lanes
                for lane in range(min(lanes, n - base)):
                    if bc[lane] >= need:
                        _emit(out_idx, out_cnt, out_skip, out_n, ch, base + lane, bc[lane], bs[lane])

    return sieve_affine


def _affine_compare(residues: np.ndarray, m: int, ifma: bool = False) -> tuple[np.ndarray, int, int]:
    """The window as `_affine_count` compares it: (rt, mode, mconst)."""
    r = residues.astype(np.uint64)
    if m & (m - 1) == 0:  # powers of two, 1 and 2^32 included: a mask
        return r, 1, m - 1
    big52 = -(-(1 << 52) // m)
    if ifma and big52 >= (1 << 32) + m:  # 52-bit Lemire: the subtraction folds into the IFMA
        return np.array([(-int(v) * big52) % (1 << 64) for v in r.tolist()], dtype=np.uint64), 3, big52
    if m <= 1 << 31:  # Lemire: out == r (mod m) iff (out - r) * M mod 2^64 < 2^32
        big = -(-(1 << 64) // m)
        return np.array([(int(v) * big) % (1 << 64) for v in r.tolist()], dtype=np.uint64), 0, big
    return r, 2, m


@functools.cache
def mt_partial_kernel(variant: int):
    """The compiled mt19937 partial-state sieve in one variant (see `affine_kernel`)."""
    lanes = MT_VECS * _w32(variant)

    @njit(parallel=True, cache=True)
    def sieve_mt_partial(
        start: np.uint64,
        n: np.int64,
        r: np.ndarray,
        m: np.int64,
        offset: np.int64,
        skip_min: np.int64,
        skip_max: np.int64,
        need: np.int64,
        out_idx: np.ndarray,
        out_cnt: np.ndarray,
        out_skip: np.ndarray,
        out_n: np.ndarray,
    ) -> None:
        """mt19937 when every compared output index p < 227: output p = temper(twist(mt[p],
        mt[p+1], mt[p+397])) of the seeded state; words 0..p_max+1 and 397..p_max+397 suffice
        (php_mt_seed's idea). The seeds of a block run in u32 vector lanes; draw i of every
        skip is compared before the state is advanced further, and the block stops as soon as
        none of its seeds can still reach `need` (for an exact window: at the first draw that
        misses at every skip). Only a block whose highest count reaches `need` looks at its
        lanes; their survivors go to the outputs (`_emit`)."""
        k = r.shape[0]
        n_skips = skip_max - skip_min + 1
        p_max = offset + k * (skip_max + 1) - 1
        w = p_max + 2
        if m & (m - 1) == 0:
            mode, mconst, inv = 0, m - 1, 0.0
        else:
            mode, mconst, inv = 1, m, np.nextafter(1.0 / np.float64(m), np.inf)
        nblocks = (n + lanes - 1) // lanes
        nchunks = min(nblocks, out_n.shape[0])
        for ch in prange(nchunks):
            x = np.empty(lanes, np.uint32)
            low = np.empty((w, lanes), np.uint32)
            high = np.empty((p_max + 1, lanes), np.uint32)
            out = np.empty((p_max + 1, lanes), np.uint32)
            made = np.empty(p_max + 1, np.bool_)
            cnt = np.empty((n_skips, lanes), np.int32)
            for b in range(ch * nblocks // nchunks, (ch + 1) * nblocks // nchunks):
                _mt_seed(x, low, start + np.uint64(b * lanes), variant)
                _mt_steps_store(x, 1, w, low, 0, variant)  # words 1..p_max+1
                _mt_steps(x, w, 397, variant)  # the bulk of the work: nothing stored
                top_word = 396
                cnt[:, :] = 0
                made[:] = False
                top = 0
                for i in range(k):
                    p_hi = offset + (i + 1) * (skip_max + 1) - 1
                    if 397 + p_hi > top_word:  # words up to 397 + p_hi, stored from 397 on
                        _mt_steps_store(x, top_word + 1, 398 + p_hi, high, 397, variant)
                        top_word = 397 + p_hi
                    for j in range(n_skips):
                        p = offset + (i + 1) * (skip_min + j + 1) - 1
                        if not made[p]:
                            _mt_output(low, high, out, p, mode, mconst, inv, variant)
                            made[p] = True
                        top = max(top, _count_eq(out, p, r[i], cnt, j, variant))
                    if top + (k - 1 - i) < need:
                        break
                if top < need:  # most blocks: no seed of it survives
                    continue
                base = b * lanes
                for lane in range(min(lanes, n - base)):
                    bc = cnt[0, lane]
                    bs = skip_min
                    for j in range(1, n_skips):
                        if cnt[j, lane] > bc:
                            bc = cnt[j, lane]
                            bs = skip_min + j
                    if bc >= need:
                        _emit(out_idx, out_cnt, out_skip, out_n, ch, base + lane, bc, bs)

    return sieve_mt_partial


MT_PARTIAL_LIMIT = 227  # output indices below this need only the seeded state


def sieve_survivors(
    family: str,
    seed_start: int,
    seed_end: int,
    residues: np.ndarray,
    m: int,
    offset: int,
    skip_min: int,
    skip_max: int,
    need: int,
    variant: int | None = None,
    expect: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeds of [seed_start, seed_end) whose best match count reaches `need`: (offset from
    seed_start, best count, its smallest skip), in seed order, with exact counts and skips.

    The kernels compact the survivors themselves (one output slice per chunk of blocks), so
    nothing is allocated, written or scanned per seed. `expect`: the expected survivor fraction
    (sizes the slices; a slice that fills up makes the range run once more, sized to fit).
    `variant`: the explicit-SIMD kernels' code (None: the fastest this CPU runs, `FAST`)."""
    n = seed_end - seed_start
    if n <= 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.astype(np.int32), z.astype(np.int32)
    k = residues.shape[0]
    start = np.uint64(seed_start)
    mt_partial = family == "mt19937" and offset + k * (skip_max + 1) - 1 < MT_PARTIAL_LIMIT
    lanes = LANES
    if family in AFFINE_KIND:
        fam = get_family(family)
        lcg = fam.lcg  # type: ignore[attr-defined]
        first = offset - (1 if fam.output_before_step else 0)  # type: ignore[attr-defined]
        skips = range(skip_min, skip_max + 1)
        af, cf = zip(*(lcg.jump_int(first + s + 1) for s in skips), strict=True)
        ast, cst = zip(*(lcg.jump_int(s + 1) for s in skips), strict=True)
        fam_id = {"java_lcg": 0, "minstd": 1, "lcg32": 2, "pcg32": 3}[family]
        var = FAST["affine"] if variant is None else variant
        lanes = _aff_vecs(var) * (8 if var & WIDE else 4)
        rt, mode, mconst = _affine_compare(residues, m, ifma=bool(var & IFMA))
        kernel = affine_kernel(fam_id, var)
        u64 = functools.partial(np.array, dtype=np.uint64)
        args = (start, np.int64(n), rt, np.int64(mode), np.uint64(mconst), np.int64(need))
        args += (np.int64(skip_min), u64(af), u64(cf), u64(ast), u64(cst))
    elif mt_partial:
        var = FAST["mt19937"] if variant is None else variant & WIDE
        lanes = MT_VECS * _w32(var)
        kernel = mt_partial_kernel(var)
        args = (start, np.int64(n), residues.astype(np.uint32), np.int64(m), np.int64(offset))
        args += (np.int64(skip_min), np.int64(skip_max), np.int64(need))
    else:
        limit = reject_limit(m) if family == "java_random" else 0
        pow2_shift = (m.bit_length() - 1) if family == "java_random" and m & (m - 1) == 0 else -1
        kernel = functools.partial(sieve_sequential, SEQ_KIND[family])
        args = (start, np.int64(n), residues.astype(np.uint32), np.int64(m), np.int64(offset))
        args += (np.int64(skip_min), np.int64(skip_max), np.uint64(limit), pow2_shift, np.int64(need))
    nblocks = -(-n // lanes)
    chunks = min(nblocks, numba.get_num_threads() * 16)
    blocks_per_chunk = -(-nblocks // chunks)
    # twice the expected survivors of a chunk, + 64: a refill is rare and only costs one rerun
    cap = min(blocks_per_chunk * lanes, int(2 * expect * blocks_per_chunk * lanes) + 64)
    while True:
        out_n = np.zeros(chunks, dtype=np.int64)
        out_idx = np.empty(chunks * cap, dtype=np.int64)
        out_cnt = np.empty(chunks * cap, dtype=np.int32)
        out_skip = np.empty(chunks * cap, dtype=np.int32)
        # chunks go to the threads one at a time as they come free (Numba's default deals each
        # thread an equal share up front: on a loaded host every call then waits for the slowest)
        with numba.parallel_chunksize(1):
            kernel(*args, out_idx, out_cnt, out_skip, out_n)
        if int(out_n.max()) <= cap:
            break
        cap = int(out_n.max())
    if chunks == 1:
        t = int(out_n[0])
        return out_idx[:t], out_cnt[:t], out_skip[:t]
    sel = np.concatenate([np.arange(c * cap, c * cap + int(t)) for c, t in enumerate(out_n.tolist())])
    return out_idx[sel], out_cnt[sel], out_skip[sel]


def sieve_range(
    family: str,
    seed_start: int,
    seed_end: int,
    residues: np.ndarray,
    m: int,
    offset: int,
    skip_min: int,
    skip_max: int,
    need: int,
    variant: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best match count and its (smallest) skip for every seed in [seed_start, seed_end), as
    the NumPy path gives them (tests, benchmarks): every seed with a match comes back from
    `sieve_survivors` at need 1, the others have 0 matches at skip_min. `need` is not used
    (kept for the callers' argument list): every count is exact."""
    del need
    n = seed_end - seed_start
    idx, cnt, skip = sieve_survivors(
        family, seed_start, seed_end, residues, m, offset, skip_min, skip_max, 1, variant, expect=1.0
    )
    best_cnt = np.zeros(n, dtype=np.int32)
    best_skip = np.full(n, skip_min, dtype=np.int32)
    best_cnt[idx] = cnt
    best_skip[idx] = skip
    return best_cnt, best_skip
