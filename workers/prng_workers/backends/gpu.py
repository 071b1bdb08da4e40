"""GPU sieve: one CuPy RawKernel source for every family, built for CUDA (NVRTC) and HIP
(hipRTC on ROCm) alike: plain C, 32/64-bit integer arithmetic, no vendor intrinsics.

One thread per seed. The family, the modulus and (for mt19937) the partial-state width are
compile-time macros, so `v % MOD` becomes a multiply-high sequence and dead branches vanish.
Affine families jump ahead (one multiply-add per compared draw); xorshift / java_random step
through the skipped outputs; mt19937 uses the partial-state trick (output p < 227 needs only
seeded words p, p+1, p+397) when the window allows, else a full per-thread state.

No GPU here means no CuPy import: `unavailable_reason()` says why, and `--backend gpu`
fails loudly (i2) instead of falling back to the CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from prng_workers.families import get_family
from prng_workers.families.java_random import reject_limit

FAMILY_IDS = {"java_lcg": 0, "minstd": 1, "lcg32": 2, "pcg32": 3, "xorshift32": 4, "xorshift64": 5,
              "java_random": 6, "mt19937": 7}
MT_PARTIAL_LIMIT = 227
THREADS = 256

KERNEL_SOURCE = r"""
typedef unsigned long long u64;
typedef unsigned int u32;

#define M48 0xFFFFFFFFFFFFull
#define P31 0x7FFFFFFFull

__device__ __forceinline__ u64 prime_fold(u64 v) {
    u64 r = (v & P31) + (v >> 31);
    r = (r & P31) + (r >> 31);
    return r >= P31 ? r - P31 : r;
}

__device__ __forceinline__ u64 affine_step(u64 a, u64 x, u64 c) {
#if FAMILY == 0
    return (a * x + c) & M48;
#elif FAMILY == 1 || FAMILY == 2
    return prime_fold(a * x + c);
#else
    return a * x + c;
#endif
}

__device__ __forceinline__ u32 affine_out(u64 x) {
#if FAMILY == 0
    return (u32)((x >> 16) & 0xFFFFFFFFull);
#elif FAMILY == 3
    u32 xs = (u32)(((x >> 18) ^ x) >> 27);
    u32 rot = (u32)(x >> 59);
    return (xs >> rot) | (xs << ((32u - rot) & 31u));
#else
    return (u32)x;
#endif
}

__device__ __forceinline__ u64 seq_step(u64 x) {
#if FAMILY == 4
    x ^= (x << 13) & 0xFFFFFFFFull; x ^= x >> 17; x ^= (x << 5) & 0xFFFFFFFFull;
#elif FAMILY == 5
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
#else
    x = (x * 0x5DEECE66Dull + 0xBull) & M48;
#endif
    return x;
}

/* one generator call: returns its output mod MOD, advances x */
__device__ __forceinline__ u32 seq_call(u64* x, u64 limit) {
#if FAMILY == 4
    *x = seq_step(*x); return (u32)(*x % MOD);
#elif FAMILY == 5
    *x = seq_step(*x); return (u32)(((*x * 0x2545F4914F6CDD1Dull) & 0xFFFFFFFFull) % MOD);
#else
    *x = seq_step(*x);
    while (limit != 0 && *x >= limit) *x = seq_step(*x);  /* nextInt's rejection loop */
    u64 bits = *x >> 17;
#if JAVA_POW2_SHIFT >= 0
    return (u32)(bits >> (31 - JAVA_POW2_SHIFT));
#else
    return (u32)(bits % MOD);
#endif
#endif
}

__device__ __forceinline__ u32 mt_temper(u32 y) {
    y ^= y >> 11; y ^= (y << 7) & 0x9D2C5680u; y ^= (y << 15) & 0xEFC60000u; y ^= y >> 18;
    return y;
}

__device__ __forceinline__ u32 mt_twist_word(u32 a, u32 b, u32 c) {
    u32 y = (a & 0x80000000u) | (b & 0x7FFFFFFFu);
    return c ^ (y >> 1) ^ ((y & 1u) ? 0x9908B0DFu : 0u);
}

extern "C" __global__ void prng_sieve(
        u64 start, long long n, const u32* r, int k, int offset, int skip_min, int n_skips, int need,
        const u64* a_first, const u64* c_first, const u64* a_stride, const u64* c_stride,
        u64 limit, int* best_cnt, int* best_skip) {
    long long stride_threads = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride_threads) {
        u64 seed = start + (u64)idx;
        int bc = -1, bs = 0;
#if FAMILY <= 3
        u64 x0;
#if FAMILY == 0
        x0 = seed & M48;
#elif FAMILY == 1
        x0 = seed % P31; if (x0 == 0) x0 = 1;
#elif FAMILY == 2
        x0 = (seed & 0xFFFFFFFFull) % P31;
#else
        x0 = seed;
#endif
        for (int j = 0; j < n_skips; j++) {
            u64 a = a_stride[j], c = c_stride[j];
            u64 x = affine_step(a_first[j], x0, c_first[j]);
            int cnt = 0;
            for (int i = 0; i < k; i++) {
                cnt += (affine_out(x) % MOD) == r[i];
                x = affine_step(a, x, c);
                if ((i & 31) == 31 && cnt + (k - 1 - i) < need) break;
            }
            if (cnt > bc) { bc = cnt; bs = skip_min + j; }
        }
#elif FAMILY <= 6
        u64 x0;
#if FAMILY == 4
        x0 = seed & 0xFFFFFFFFull;
#elif FAMILY == 5
        x0 = seed;
#else
        x0 = (seed ^ 0x5DEECE66Dull) & M48;
#endif
        for (int j = 0; j < n_skips; j++) {
            int s = skip_min + j;
            u64 x = x0;
            for (int t = 0; t < offset; t++) seq_call(&x, limit);
            int cnt = 0;
            for (int i = 0; i < k; i++) {
                for (int t = 0; t < s; t++) seq_call(&x, limit);
                cnt += seq_call(&x, limit) == r[i];
                if ((i & 31) == 31 && cnt + (k - 1 - i) < need) break;
            }
            if (cnt > bc) { bc = cnt; bs = s; }
        }
#else
#if MT_PARTIAL_W > 0
        /* every compared output index p < 227: words p, p+1 (low) and p+397 (high) suffice */
        u32 low[MT_PARTIAL_W], high[MT_PARTIAL_W];
        u32 w = (u32)(seed & 0xFFFFFFFFull);
        low[0] = w;
        for (int i = 1; i < 397 + MT_PARTIAL_W - 1; i++) {
            w = 1812433253u * (w ^ (w >> 30)) + (u32)i;
            if (i < MT_PARTIAL_W) low[i] = w;
            if (i >= 397) high[i - 397] = w;
        }
        for (int j = 0; j < n_skips; j++) {
            int s = skip_min + j, cnt = 0;
            for (int i = 0; i < k; i++) {
                int p = offset + (i + 1) * (s + 1) - 1;
                cnt += (mt_temper(mt_twist_word(low[p], low[p + 1], high[p])) % MOD) == r[i];
            }
            if (cnt > bc) { bc = cnt; bs = s; }
        }
#else
        u32 mt[624];
        for (int j = 0; j < n_skips; j++) {
            int s = skip_min + j, cnt = 0;
            mt[0] = (u32)(seed & 0xFFFFFFFFull);
            for (int i = 1; i < 624; i++) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + (u32)i;
            int mti = 624;
            long long next = offset + s;  /* 0-based index of the next compared output */
            int i = 0;
            for (long long p = 0; i < k; p++) {
                if (mti >= 624) {
                    for (int q = 0; q < 624; q++)
                        mt[q] = mt_twist_word(mt[q], mt[q < 623 ? q + 1 : 0],
                                              mt[q < 227 ? q + 397 : q - 227]);
                    mti = 0;
                }
                u32 y = mt[mti++];
                if (p == next) {
                    cnt += (mt_temper(y) % MOD) == r[i];
                    i++;
                    next += s + 1;
                }
            }
            if (cnt > bc) { bc = cnt; bs = s; }
        }
#endif
#endif
        best_cnt[idx] = bc;
        best_skip[idx] = bs;
    }
}
"""


def kernel_options(family: str, m: int, offset: int, k: int, skip_max: int) -> tuple[str, ...]:
    """Compile-time macros of one job's kernel (same on NVRTC, nvcc and hipRTC)."""
    fid = FAMILY_IDS[family]
    pow2 = (m.bit_length() - 1) if family == "java_random" and m & (m - 1) == 0 else -1
    p_max = offset + k * (skip_max + 1) - 1
    mt_w = p_max + 2 if family == "mt19937" and p_max < MT_PARTIAL_LIMIT else 0
    return (f"-DFAMILY={fid}", f"-DMOD={m}ull", f"-DJAVA_POW2_SHIFT={pow2}", f"-DMT_PARTIAL_W={mt_w}")


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
            name.decode() if isinstance(name, bytes) else str(name))
        self.visible_devices = os.environ.get("HIP_VISIBLE_DEVICES" if cp.cuda.runtime.is_hip
                                              else "CUDA_VISIBLE_DEVICES")
        self.kernel = cp.RawKernel(KERNEL_SOURCE, "prng_sieve",
                                   options=kernel_options(job.family, job.m, job.offset, job.window,
                                                          job.skip_max))
        self.kernel.compile()  # i7: compile now, before anything else (torch) is imported
        fam = get_family(job.family)
        skips = range(job.skip_min, job.skip_max + 1)
        if job.family in ("java_lcg", "minstd", "lcg32", "pcg32"):
            lcg = fam.lcg  # type: ignore[attr-defined]
            first = job.offset - (1 if fam.output_before_step else 0)  # type: ignore[attr-defined]
            af, cf = zip(*(lcg.jump_int(first + s + 1) for s in skips), strict=True)
            ast, cst = zip(*(lcg.jump_int(s + 1) for s in skips), strict=True)
        else:
            af = cf = ast = cst = (0,) * job.n_skips
        self.consts = [cp.asarray(np.array(v, dtype=np.uint64)) for v in (af, cf, ast, cst)]
        self.r = cp.asarray(job.residues.astype(np.uint32))
        self.limit = reject_limit(job.m) if job.family == "java_random" else 0

    def sieve_range(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        cp, job = self.cp, self.job
        n = b - a
        best_cnt = cp.empty(n, dtype=cp.int32)
        best_skip = cp.empty(n, dtype=cp.int32)
        blocks = min((n + THREADS - 1) // THREADS, 65535 * 8)
        self.kernel((blocks,), (THREADS,), (
            np.uint64(a), np.int64(n), self.r, np.int32(job.window), np.int32(job.offset),
            np.int32(job.skip_min), np.int32(job.n_skips), np.int32(job.need), *self.consts,
            np.uint64(self.limit), best_cnt, best_skip))
        return cp.asnumpy(best_cnt), cp.asnumpy(best_skip)
