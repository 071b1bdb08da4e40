"""GPU sieve: one CuPy RawKernel source for every family, built for CUDA (NVRTC) and HIP
(hipRTC on ROCm) alike: plain C, 32/64-bit integer arithmetic, no vendor intrinsics and no
inline PTX (`atomicAdd` and `__shared__` exist under the same names in both).

A job's kernel is compiled once, when the job starts (i7): `build_kernel(job)` puts the job's
constants in front of the fixed body (`KERNEL_BODY`) as macros and `__constant__` tables, so
the compiler sees the window length, the skips and m as constants. One thread per seed;
per family (the SASS figures are in docs/benchmarks.md, from bench/gpu_static.py):

- affine families (java_lcg, minstd, lcg32, pcg32): jump-ahead, one multiply-add per compared
  draw. The skips of a group (<= 24) run side by side in registers, inner to the window loop,
  so each residue is loaded once per group and the loop control is shared; the jump constants
  of every skip are compile-time `__constant__` operands. java_lcg keeps x << 16 in 64 bits
  (no mask: the output is the high word), minstd/lcg32 reduce mod 2^31-1 with one multiply, a
  funnel add and a min. No remainder: v mod m == r is a divisibility test by m's odd part's
  inverse mod 2^32, on a per-residue pair the launcher computes (`residue_keys`), and a miss
  is counted from the carry of one add (no compare-and-select). No early exit.
- xorshift32/64, java_random and full-state mt19937 generate each seed's stream ONCE, in
  segments of SEG outputs already reduced mod m, into a per-thread column of a shared-memory
  buffer (no barrier: a thread reads only its own column); every skip compares against the
  segment. mt19937 twists lazily, one word per output, in its 624-word local-memory state.
- mt19937 with every compared output index < 227 (partial state): only seeded words p, p+1
  and p+397 matter, so the seeding recurrence is emitted as straight-line code (each step its
  own statement) and the needed words live in registers.

Survivors (best count >= need) are appended on the device with one `atomicAdd` each into a
small record buffer (seed index, matches, best skip: 12 bytes), so what comes back per chunk
is proportional to the survivors, not to the seeds; the copy of one chunk's records runs
while the next chunk computes.

No GPU here means no CuPy import: `unavailable_reason()` says why, and `--backend gpu`
fails loudly (i2) instead of falling back to the CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prng_workers.families import get_family
from prng_workers.families.java_random import reject_limit

FAMILY_IDS = {
    "java_lcg": 0,
    "minstd": 1,
    "lcg32": 2,
    "pcg32": 3,
    "xorshift32": 4,
    "xorshift64": 5,
    "java_random": 6,
    "mt19937": 7,
}
AFFINE = ("java_lcg", "minstd", "lcg32", "pcg32")
MT_PARTIAL_LIMIT = 227
THREADS = 256  # threads per block (affine, partial mt19937)
SEQ_THREADS = 128  # generate-once families: SEQ_THREADS x SEG outputs of shared memory per block
SKIP_GROUP = 24  # affine: skips side by side in registers (3 registers each)
MAX_UNROLLED_SKIPS = 512  # above: skips run in a runtime loop (constants from global memory)
MT_PASS = 64  # partial mt19937: words kept in registers per seeding pass
RECORD_WORDS = 3  # survivor record: seed index (from the chunk start), matches, best skip

KERNEL_BODY = r"""
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define M48 0xFFFFFFFFFFFFull
#define P31 0x7FFFFFFFu

#if MOD_IS_2_32
#define REDUCE(v) ((u32)(v))
#else
#define REDUCE(v) ((u32)(v) % (u32)MOD)
#endif

/* 1 when d == r, else 0, for d, r < m: without a predicate when m <= 2^31 (d ^ r < 2^31),
   which spares the compiler's select-and-copy of each count */
#if MOD <= 0x80000000ull
#define MATCH(d, r) ((((d) ^ (r)) - 1u) >> 31)
#else
#define MATCH(d, r) ((d) == (r) ? 1u : 0u)
#endif

#if FAMILY <= 3
/* Affine state, one register (pair) per skip:
   java_lcg: X = x << 16 mod 2^64, so X's high word is the output (bits 16..47 of x) and
     x -> a*x + c is X -> a*X + (c << 16) mod 2^64 (the bits above 48 fall off the top);
   minstd, lcg32: x < 2^31-1 in 32 bits, reduced with (2a)*x + 2c = q*2^32 + 2*rem, where
     q + rem == a*x + c (mod 2^31-1) and q + rem < 2*(2^31-1): one multiply, one funnel add and
     a min for the canonical value;
   pcg32: the 64-bit state. */
#if FAMILY == 1 || FAMILY == 2
typedef u32 Aff;
#else
typedef u64 Aff;
#endif

__device__ __forceinline__ Aff aff_init(u64 seed) {
#if FAMILY == 0
    return seed << 16;
#elif FAMILY == 1
    u64 x = seed % P31; return x == 0 ? 1u : (u32)x;
#elif FAMILY == 2
    return (u32)((seed & 0xFFFFFFFFull) % P31);
#else
    return seed;
#endif
}

/* x -> a*x + c with the constants of T^k (a, c: their values mod M, compile-time) */
__device__ __forceinline__ Aff aff_step(u64 a, Aff x, u64 c) {
#if FAMILY == 0
    return a * x + (c << 16);
#elif FAMILY == 1 || FAMILY == 2
    u64 v = (u64)(u32)(2u * (u32)a) * x + 2u * (u32)c;
    u32 t = (u32)(v >> 32) + ((u32)v >> 1);
    u32 d = t - P31;
    return d < t ? d : t;
#else
    return a * x + c;
#endif
}

__device__ __forceinline__ u32 aff_out(Aff x) {
#if FAMILY == 0
    return (u32)(x >> 32);
#elif FAMILY == 3
    u32 xs = (u32)(x >> 27) ^ (u32)(x >> 45);  /* bits 27..58 of x ^ (x >> 18) */
    u32 rot = (u32)(x >> 59);
    return (xs >> rot) | (xs << ((32u - rot) & 31u));
#else
    return x;
#endif
}

/* v mod m != r (a miss) for an output v < 2^32 and r < m, without the remainder: with
   m = 2^z * o (o odd), v - r (mod 2^32) = j*m for j <= (2^32-1-r)/m exactly when
   rotr((v - r)*o^-1, z) <= (2^32-1-r)/m (x -> rotr(x*o^-1, z) is a bijection of the 32-bit
   words that maps j*m to j). The launcher passes each residue as the pair nr = -r*o^-1,
   nlim = ~((2^32-1-r)/m) (residue_keys), and a miss is the carry of key + nlim, added straight
   to the count (no compare-and-select). Per draw-test: a multiply-add, a rotate (m even), an
   add with carry-out and one with carry-in. m = 2^32: key = v ^ r, nlim = 2^32-1. */
#if MOD_IS_2_32
#define MISS_KEY(v, nr) ((v) ^ (nr))
#elif DIV_ROT == 0
#define MISS_KEY(v, nr) ((v) * (u32)DIV_INV + (nr))
#else
#define ROTR_DIV(t) (((t) >> DIV_ROT) | ((t) << (32 - DIV_ROT)))
#define MISS_KEY(v, nr) ROTR_DIV((v) * (u32)DIV_INV + (nr))
#endif
#define MISS(v, nr, nlim) ((int)(u32)(((u64)MISS_KEY(v, nr) + (nlim)) >> 32))
#endif

#if FAMILY == 7
__device__ __forceinline__ u32 mt_temper(u32 y) {
    y ^= y >> 11; y ^= (y << 7) & 0x9D2C5680u; y ^= (y << 15) & 0xEFC60000u; y ^= y >> 18;
    return y;
}

/* twist of one word from y = (upper bit of mt[i]) | (lower 31 bits of mt[i+1]) and mt[i+397] */
__device__ __forceinline__ u32 mt_twist_y(u32 y, u32 c) {
    return c ^ (y >> 1) ^ ((y & 1u) ? 0x9908B0DFu : 0u);
}
#endif

#if (FAMILY >= 4 && FAMILY <= 6) || (FAMILY == 7 && !MT_PARTIAL)
#define GEN_ONCE 1
/* one generator call: its output (not yet reduced mod m); advances the state */
#if FAMILY == 4
#define GEN_STATE u32 x = (u32)(seed & 0xFFFFFFFFull);
__device__ __forceinline__ u32 gen_next(u32* x) {
    u32 v = *x; v ^= v << 13; v ^= v >> 17; v ^= v << 5; *x = v; return v;
}
#define GEN_NEXT() gen_next(&x)
#elif FAMILY == 5
#define GEN_STATE u64 x = seed;
__device__ __forceinline__ u32 gen_next(u64* x) {
    u64 v = *x; v ^= v >> 12; v ^= v << 25; v ^= v >> 27; *x = v; return (u32)(v * 0x2545F4914F6CDD1Dull);
}
#define GEN_NEXT() gen_next(&x)
#elif FAMILY == 6
#define GEN_STATE u64 x = (seed ^ 0x5DEECE66Dull) & M48;
/* nextInt(m): rejection loop included; returns the value already in [0, m) */
__device__ __forceinline__ u32 gen_next(u64* x) {
    u64 v = (*x * 0x5DEECE66Dull + 0xBull) & M48;
#if JAVA_LIMIT != 0
    while (v >= JAVA_LIMIT) v = (v * 0x5DEECE66Dull + 0xBull) & M48;
#endif
    *x = v;
#if JAVA_POW2_SHIFT >= 0
    return (u32)((v >> 17) >> (31 - JAVA_POW2_SHIFT));
#else
    return (u32)(v >> 17);
#endif
}
#define GEN_NEXT() gen_next(&x)
#else
/* full-state mt19937: the 624-word state per thread, twisted lazily one word per output
   (the same order of reads and writes as the block twist, so the same stream) */
#define GEN_STATE u32 mt[624]; int mti = 0; \
    mt[0] = (u32)(seed & 0xFFFFFFFFull); \
    for (int q = 1; q < 624; q++) mt[q] = 1812433253u * (mt[q - 1] ^ (mt[q - 1] >> 30)) + (u32)q;
__device__ __forceinline__ u32 gen_next(u32* mt, int* mti) {
    int i = *mti;
    u32 y = (mt[i] & 0x80000000u) | (mt[i == 623 ? 0 : i + 1] & 0x7FFFFFFFu);
    u32 v = mt_twist_y(y, mt[i < 227 ? i + 397 : i - 227]);
    mt[i] = v;
    *mti = i == 623 ? 0 : i + 1;
    return mt_temper(v);
}
#define GEN_NEXT() gen_next(mt, &mti)
#endif
#endif

extern "C" __global__ void prng_sieve(u64 start, long long n, const u32* __restrict__ r, int need,
                                      int cap, int* __restrict__ count, int* __restrict__ rec,
                                      const u64* __restrict__ consts) {
#if GEN_ONCE
    __shared__ OUT_T buf[SEG * BLOCK];
#endif
    long long stride_threads = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride_threads) {
        u64 seed = start + (u64)idx;
        int bc = -1, bs = 0;
#if FAMILY <= 3
        Aff x0 = aff_init(seed);
#if AFF_UNROLLED
#pragma unroll
        for (int g = 0; g < N_SKIPS; g += GROUP) {
            Aff x[GROUP];
            int miss[GROUP];
#pragma unroll
            for (int j = 0; j < GROUP; j++)
                if (g + j < N_SKIPS) { x[j] = aff_step(AF[g + j], x0, CF[g + j]); miss[j] = 0; }
            for (int i = 0; i < K; i++) {
                u32 nr = r[2 * i], nlim = r[2 * i + 1];
#pragma unroll
                for (int j = 0; j < GROUP; j++)
                    if (g + j < N_SKIPS) {
                        miss[j] += MISS(aff_out(x[j]), nr, nlim);
                        x[j] = aff_step(AS[g + j], x[j], CS[g + j]);
                    }
            }
#pragma unroll
            for (int j = 0; j < GROUP; j++)
                if (g + j < N_SKIPS && K - miss[j] > bc) { bc = K - miss[j]; bs = SKIP_MIN + g + j; }
        }
#else
        /* many skips: one at a time, constants af|cf|as|cs from global memory */
        for (int j = 0; j < N_SKIPS; j++) {
            u64 a = consts[2 * N_SKIPS + j], c = consts[3 * N_SKIPS + j];
            Aff x = aff_step(consts[j], x0, consts[N_SKIPS + j]);
            int miss = 0;
            for (int i = 0; i < K; i++) {
                u32 nr = r[2 * i], nlim = r[2 * i + 1];
                miss += MISS(aff_out(x), nr, nlim);
                x = aff_step(a, x, c);
            }
            if (K - miss > bc) { bc = K - miss; bs = SKIP_MIN + j; }
        }
#endif
#elif GEN_ONCE
        GEN_STATE
        int cnt[N_SKIPS];
#pragma unroll
        for (int j = 0; j < N_SKIPS; j++) cnt[j] = 0;
        for (long long p = 0; p < P_LO; p++) (void)GEN_NEXT();  /* outputs no skip compares */
        OUT_T* col = buf + threadIdx.x;
        for (long long lo = P_LO; lo < P_HI; lo += SEG) {
            int len = P_HI - lo < SEG ? (int)(P_HI - lo) : SEG;
            for (int t = 0; t < len; t++) col[t * BLOCK] = (OUT_T)REDUCE(GEN_NEXT());
#if N_SKIPS <= 32
#pragma unroll
#endif
            for (int j = 0; j < N_SKIPS; j++) {
                const long long st = SKIP_MIN + j + 1;
                /* draws i with lo <= OFFSET + (i+1)*st - 1 < lo + len */
                long long q0 = (lo - OFFSET + st) / st - 1, q1 = (lo + len - OFFSET) / st;
                int i0 = q0 < 0 ? 0 : (int)q0, i1 = q1 > K ? K : (int)q1;
                int c = 0;
                const OUT_T* b = col + (int)(OFFSET + (i0 + 1) * st - 1 - lo) * BLOCK;
                for (int i = i0; i < i1; i++, b += (int)st * BLOCK) c += MATCH((u32)*b, r[i]);
                cnt[j] += c;
            }
        }
#pragma unroll
        for (int j = 0; j < N_SKIPS; j++)
            if (cnt[j] > bc) { bc = cnt[j]; bs = SKIP_MIN + j; }
#else
        int cnt[N_SKIPS];
#pragma unroll
        for (int j = 0; j < N_SKIPS; j++) cnt[j] = 0;
        mt_partial((u32)(seed & 0xFFFFFFFFull), r, cnt);
#pragma unroll
        for (int j = 0; j < N_SKIPS; j++)
            if (cnt[j] > bc) { bc = cnt[j]; bs = SKIP_MIN + j; }
#endif
        if (bc >= need) {
            int pos = atomicAdd(count, 1);
            if (pos < cap) { rec[3 * pos] = (int)idx; rec[3 * pos + 1] = bc; rec[3 * pos + 2] = bs; }
        }
    }
}
"""


@dataclass(frozen=True)
class KernelBuild:
    """A job's kernel: source (job header + KERNEL_BODY), compile options, launch shape."""

    source: str
    options: tuple[str, ...]
    threads: int
    consts: np.ndarray = field(repr=False)  # af|cf|as|cs per skip (affine), read by the runtime-skip path
    residues: np.ndarray = field(repr=False)  # the kernel's `r` (uint32): residue_keys (affine), else r
    name: str = "prng_sieve"


def _affine_consts(job: Any) -> list[tuple[int, ...]]:
    fam = get_family(job.family)
    lcg = fam.lcg  # type: ignore[attr-defined]
    first = job.offset - (1 if fam.output_before_step else 0)  # type: ignore[attr-defined]
    skips = range(job.skip_min, job.skip_max + 1)
    af, cf = zip(*(lcg.jump_int(first + s + 1) for s in skips), strict=True)
    ast, cst = zip(*(lcg.jump_int(s + 1) for s in skips), strict=True)
    return [af, cf, ast, cst]


def _div_constants(m: int) -> tuple[int, int]:
    """(z, o^-1 mod 2^32) for m = 2^z * o, o odd (m < 2^32; (0, 0) for m = 2^32)."""
    if m >= 1 << 32:
        return 0, 0
    z = (m & -m).bit_length() - 1
    return z, pow(m >> z, -1, 1 << 32)


def residue_keys(residues: np.ndarray, m: int) -> np.ndarray:
    """The affine kernels' residue words, a pair per window position: nr = -r * o^-1 mod 2^32
    and nlim = ~((2^32-1-r) // m) (see MISS_KEY in the kernel); for m = 2^32, r and 2^32-1.
    Residues must lie in [0, m): the divisibility test counts v mod m == r only for r < m."""
    r = np.asarray(residues, dtype=np.int64)
    if r.size and not 0 <= int(r.min()) <= int(r.max()) < m:
        raise ValueError(f"residues must lie in [0, {m})")
    r = r.astype(np.uint64)
    full = np.uint64(0xFFFFFFFF)
    out = np.empty(2 * r.size, dtype=np.uint32)
    if m == 1 << 32:
        out[0::2], out[1::2] = r, full
        return out
    _, inv = _div_constants(m)
    with np.errstate(over="ignore"):
        out[0::2] = (np.uint64(0) - r * np.uint64(inv)) & full
    out[1::2] = ~((full - r) // np.uint64(m)) & full
    return out


def _mt_partial_source(offset: int, k: int, skip_min: int, skip_max: int) -> str:
    """Straight-line seeding for partial-state mt19937: output p = temper(twist(y_p, w_{p+397}))
    with y_p = upper bit of w_p | lower 31 bits of w_{p+1}; only compared p are kept, at most
    MT_PASS of them live per pass (a pass re-runs the recurrence)."""
    uses: dict[int, list[tuple[int, int]]] = {}
    for j, s in enumerate(range(skip_min, skip_max + 1)):
        for i in range(k):
            uses.setdefault(offset + (i + 1) * (s + 1) - 1, []).append((i, j))
    ps = sorted(uses)
    lines = ["__device__ __forceinline__ void mt_partial(u32 seed32, const u32* __restrict__ r, int* cnt) {"]
    for lo in range(0, len(ps), MT_PASS):
        part = ps[lo : lo + MT_PASS]
        want = set(part)
        last = part[-1] + 397
        lines.append("    {")
        lines.append("        u32 w = seed32;")
        lines += [f"        u32 y{p};" for p in part]
        for t in range(0, last + 1):
            if t:
                lines.append(f"        w = 1812433253u * (w ^ (w >> 30)) + {t}u;")
            if t in want:
                lines.append(f"        y{t} = w & 0x80000000u;")
            if t - 1 in want:
                lines.append(f"        y{t - 1} |= w & 0x7FFFFFFFu;")
            if t - 397 in want:
                p = t - 397
                lines.append(f"        {{ u32 o = REDUCE(mt_temper(mt_twist_y(y{p}, w)));")
                lines += [f"          cnt[{j}] += MATCH(o, r[{i}]);" for i, j in uses[p]]
                lines.append("        }")
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build_kernel(job: Any, *, max_unrolled_skips: int = MAX_UNROLLED_SKIPS) -> KernelBuild:
    """The job's kernel source and options, the same for NVRTC, hipRTC, nvcc and the host
    build of the tests. Everything job-specific is a macro or a constant table."""
    family, m, k = job.family, int(job.m), int(job.window)
    n_skips = job.skip_max - job.skip_min + 1
    p_lo = job.offset + job.skip_min
    p_hi = job.offset + k * (job.skip_max + 1)
    if p_hi >= 1 << 62 or k >= 1 << 31:
        raise ValueError("window or skips beyond the kernel's integer range")
    out_t = "u16" if m <= 1 << 16 else "u32"
    seg = 128 if out_t == "u16" else 64
    partial = family == "mt19937" and p_hi - 1 < MT_PARTIAL_LIMIT
    gen_once = family in ("xorshift32", "xorshift64", "java_random") or (family == "mt19937" and not partial)
    threads = SEQ_THREADS if gen_once else THREADS
    limit = reject_limit(m) if family == "java_random" else 0
    pow2 = (m.bit_length() - 1) if family == "java_random" and m & (m - 1) == 0 else -1
    unrolled = n_skips <= max_unrolled_skips
    div_rot, div_inv = _div_constants(m)
    head = [
        f"#define FAMILY {FAMILY_IDS[family]}",
        f"#define MOD {m}ull",
        f"#define MOD_IS_2_32 {int(m == 1 << 32)}",
        f"#define K {k}",
        f"#define OFFSET {job.offset}ll",
        f"#define SKIP_MIN {job.skip_min}",
        f"#define N_SKIPS {n_skips}",
        f"#define P_LO {p_lo}ll",
        f"#define P_HI {p_hi}ll",
        f"#define BLOCK {threads}",
        f"#define SEG {seg}",
        f"#define OUT_T {out_t}",
        f"#define JAVA_LIMIT {limit}ull",
        f"#define JAVA_POW2_SHIFT {pow2}",
        f"#define MT_PARTIAL {int(partial)}",
        # v mod m == r as a divisibility test (affine families): m = 2^DIV_ROT * odd
        f"#define DIV_ROT {div_rot}",
        f"#define DIV_INV {div_inv}u",
    ]
    consts = np.zeros(4 * n_skips, dtype=np.uint64)
    tables = ""
    if family in AFFINE:
        rows = _affine_consts(job)
        consts = np.array([v for row in rows for v in row], dtype=np.uint64)
        groups = math.ceil(n_skips / SKIP_GROUP)
        head += [f"#define AFF_UNROLLED {int(unrolled)}", f"#define GROUP {math.ceil(n_skips / groups)}"]
        if unrolled:
            for name, row in zip(("AF", "CF", "AS", "CS"), rows, strict=True):
                tables += (
                    f"__constant__ const u64 {name}[{n_skips}] = {{"
                    + ", ".join(f"{v}ull" for v in row)
                    + "};\n"
                )
    body = KERNEL_BODY
    if partial:  # the generated function goes after the helpers it calls
        cut = body.index('extern "C"')
        body = body[:cut] + _mt_partial_source(job.offset, k, job.skip_min, job.skip_max) + "\n" + body[cut:]
    cut = body.index("#if FAMILY <= 3")
    source = "\n".join(head) + "\n" + body[:cut] + tables + body[cut:]
    words = residue_keys(job.residues, m) if family in AFFINE else job.residues.astype(np.uint32)
    return KernelBuild(source, (), threads, consts, words)


def unavailable_reason() -> str | None:
    """None when CuPy imports and sees at least one device, else the reason (one line)."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA/ROCm install
        return f"cupy not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no GPU device visible ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if count < 1:
        return "no GPU device visible"
    return None


def survivor_capacity(job: Any, chunk: int) -> int:
    """Record slots per chunk: 4x the noise model's expected survivors plus 4096, at most the
    chunk. A chunk with more survivors is run again with room for all (never truncated)."""
    from prng_workers.sieve import noise_survival_probability

    p = noise_survival_probability(job.window, job.need, job.m, job.n_skips)
    return int(min(chunk, 4 * chunk * p + 4096))


class GpuSieve:
    """One job's kernel, compiled once, run over seed chunks on the current device."""

    chunk = 1 << 24

    def __init__(self, job: Any) -> None:
        import cupy as cp

        self.cp = cp
        self.job = job
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"gpu")
        self.device_name = f"{'hip' if cp.cuda.runtime.is_hip else 'cuda'}:{dev.id} " + (
            name.decode() if isinstance(name, bytes) else str(name)
        )
        self.visible_devices = os.environ.get(
            "HIP_VISIBLE_DEVICES" if cp.cuda.runtime.is_hip else "CUDA_VISIBLE_DEVICES"
        )
        self.build = build_kernel(job)
        self.kernel = cp.RawKernel(self.build.source, self.build.name, options=self.build.options)
        self.kernel.compile()  # i7: compile now, before anything else (torch) is imported
        self.r = cp.asarray(self.build.residues)
        self.consts = cp.asarray(self.build.consts)
        self.cap = survivor_capacity(job, self.chunk)
        self.compute = cp.cuda.Stream(non_blocking=True)
        self.copy = cp.cuda.Stream(non_blocking=True)
        # two slots: chunk c+1 computes into one while chunk c's records are copied from the other
        self.slots = [
            (cp.zeros(1, dtype=cp.int32), cp.empty(RECORD_WORDS * self.cap, dtype=cp.int32)) for _ in range(2)
        ]

    def _launch(self, a: int, b: int, count: Any, rec: Any, cap: int) -> None:
        n = b - a
        blocks = min((n + self.build.threads - 1) // self.build.threads, 65535 * 8)
        count.fill(0)
        self.kernel(
            (blocks,),
            (self.build.threads,),
            (
                np.uint64(a),
                np.int64(n),
                self.r,
                np.int32(self.job.need),
                np.int32(cap),
                count,
                rec,
                self.consts,
            ),
        )

    def _collect(self, slot: int, a: int, b: int, done: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cp = self.cp
        count, rec = self.slots[slot]
        self.copy.wait_event(done)
        with self.copy:
            got = int(count.get(stream=self.copy)[0])
            if got > self.cap:  # more survivors than room: this chunk again, with room for all
                count, rec = cp.zeros(1, dtype=cp.int32), cp.empty(RECORD_WORDS * got, dtype=cp.int32)
                self._launch(a, b, count, rec, got)
            host = rec[: RECORD_WORDS * got].get(stream=self.copy).reshape(got, RECORD_WORDS)
        order = np.argsort(host[:, 0], kind="stable")  # atomic appends come in any order
        host = host[order]
        return (
            host[:, 0].astype(np.uint64) + np.uint64(a),
            host[:, 1].astype(np.int64),
            host[:, 2].astype(np.int64),
        )

    def survivor_chunks(self, start: int, end: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(seeds, matches, best_skip) of the survivors, chunk by chunk in seed order."""
        pending = None
        for c, a in enumerate(range(start, end, self.chunk)):
            b = min(end, a + self.chunk)
            slot = c % 2
            with self.compute:
                self._launch(a, b, *self.slots[slot], self.cap)
                done = self.compute.record()
            if pending is not None:
                yield self._collect(*pending)
            pending = (slot, a, b, done)
        if pending is not None:
            yield self._collect(*pending)
