"""The GPU kernel. Four levels:
1. its source (as `build_kernel` makes it for a job) compiles with nvcc for sm_90 where nvcc
   exists (no device needed; the NVRTC build and its SASS are checked in test_gpu_static.py);
2. the SAME source, compiled by g++ as host code (one thread walking the grid-stride loop, the
   atomic survivor append done by one thread), gives the NumPy path's results seed for seed:
   with need = 0 every seed is a record (its best count and skip are compared), with the job's
   need the compacted survivor set equals NumPy's;
3. it stays portable to hipRTC: no vendor intrinsics, no inline PTX;
4. on a real GPU (marked `gpu`), `--backend gpu` equals NumPy and finds planted seeds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from prng_workers.backends.gpu import FAMILY_IDS, KERNEL_BODY, build_kernel, unavailable_reason
from prng_workers.families import FAMILY_NAMES, get_family
from prng_workers.history_cli import make_history
from prng_workers.sieve import SieveJob, make_job, numpy_sieve_range, run_sieve

HOST_HARNESS = r"""
#include <cstdio>
#include <vector>
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, gridDim = {1, 1, 1}, blockDim = {1, 1, 1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __constant__
#define __shared__ static
static int atomicAdd(int* p, int v) { int old = *p; *p += v; return old; }
#include "kernel.cu"
int main() {
    unsigned long long start; long long n; int n_words, need, n_consts;
    if (std::scanf("%llu %lld %d %d %d", &start, &n, &n_words, &need, &n_consts) != 5) return 3;
    std::vector<unsigned> r(n_words > 0 ? n_words : 1);
    for (int i = 0; i < n_words; i++) if (std::scanf("%u", &r[i]) != 1) return 3;
    std::vector<unsigned long long> consts(n_consts > 0 ? n_consts : 1);
    for (int i = 0; i < n_consts; i++) if (std::scanf("%llu", &consts[i]) != 1) return 3;
    std::vector<int> rec(3 * n);
    int count = 0;
    prng_sieve(start, n, r.data(), need, (int)n, &count, rec.data(), consts.data());
    std::printf("%d\n", count);
    for (int i = 0; i < count; i++) std::printf("%d %d %d\n", rec[3 * i], rec[3 * i + 1], rec[3 * i + 2]);
    return 0;
}
"""


def test_kernel_is_portable_to_hiprtc():
    """Only keywords CUDA and HIP share; no inline PTX, no vendor names, no warp intrinsics."""
    rng = np.random.default_rng(0)
    for family in FAMILY_NAMES:
        for k, smax in ((512, 20), (10, 0)):
            src = build_kernel(SieveJob(family, rng.integers(0, 10, k), 1000, 0, 0, smax, 0.1, 0, 10)).source
            words = set(re.findall(r"\b__\w+", src))
            assert words <= {
                "__global__",
                "__device__",
                "__forceinline__",
                "__constant__",
                "__shared__",
                "__restrict__",
            }, words
            assert "cuda" not in src.lower() and "asm" not in src and "_sync" not in src
            assert set(re.findall(r"\batomic\w+", src)) == {"atomicAdd"}
    assert "__syncthreads" not in KERNEL_BODY  # a thread reads only its own buffer column


def _job(family: str, m: int, k: int, off: int, smin: int, smax: int, seed: int = 7) -> SieveJob:
    """Seeds 2^33-50 .. 2^33+150; the window is seed 2^33+17's draws at a middle skip with 30 %
    replaced by small random values, so that with a large m too one seed has many matches
    (its count checks the stream exactly) and the others a few."""
    rng = np.random.default_rng(seed)
    r = get_family(family).draws([2**33 + 17], k, m, (smin + smax) // 2, off)[0]
    noise = rng.random(k) < 0.3
    r[noise] = rng.integers(0, min(m, 10), int(noise.sum()))
    return SieveJob(family, r, m, off, smin, smax, 0.2, 2**33 - 50, 2**33 + 150)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kernel_compiles_with_nvcc(tmp_path: Path, family: str):
    if not shutil.which("nvcc"):
        pytest.skip("nvcc not installed")
    jobs = [_job(family, 1000, 512, 0, 0, 20)] + (
        [_job(family, 1000, 10, 0, 0, 0)] if family == "mt19937" else []
    )
    for job in jobs:  # mt19937: full and partial state
        src = tmp_path / "kernel.cu"
        src.write_text(build_kernel(job).source)
        argv = ["nvcc", "-cubin", "-arch=sm_90", "-o", str(tmp_path / "k.cubin"), str(src)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "k.cubin").stat().st_size > 0


@pytest.fixture(scope="module")
def gxx() -> str:
    path = shutil.which("g++")
    if not path:
        pytest.skip("g++ not installed")
    return path


_BUILT: dict[str, Path] = {}


def host_kernel(
    tmp: Path, gxx: str, job: SieveJob, need: int, **build_args: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Survivor records (seed, matches, best skip) of the job's kernel compiled by g++ (built
    once per source), for seeds whose best count reaches `need`."""
    build = build_kernel(job, **build_args)
    exe = _BUILT.get(build.source)
    if exe is None or not exe.exists():
        d = tmp / f"k{len(_BUILT)}"
        d.mkdir()
        (d / "kernel.cu").write_text(build.source)
        (d / "host.cpp").write_text(HOST_HARNESS)
        exe = d / "host"
        p = subprocess.run(
            [gxx, "-O1", "-std=c++17", "-o", str(exe), str(d / "host.cpp")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        _BUILT[build.source] = exe
    n = job.seed_end - job.seed_start
    words = [
        job.seed_start,
        n,
        build.residues.size,
        need,
        build.consts.size,
        *build.residues.tolist(),
        *build.consts.tolist(),
    ]
    out = subprocess.run(
        [str(exe)], input=" ".join(map(str, words)), capture_output=True, text=True, check=True, timeout=300
    ).stdout.split("\n")
    count = int(out[0])
    rec = np.array([[int(v) for v in line.split()] for line in out[1 : 1 + count]], dtype=np.int64).reshape(
        -1, 3
    )
    assert np.all(np.diff(rec[:, 0]) > 0)  # one thread: appended in seed order, each seed once
    return rec[:, 0].astype(np.uint64) + np.uint64(job.seed_start), rec[:, 1], rec[:, 2]


def check_equal(tmp: Path, gxx: str, job: SieveJob, **build_args: int) -> None:
    want_cnt, want_skip = numpy_sieve_range(job, job.seed_start, job.seed_end)
    seeds, cnt, skip = host_kernel(tmp, gxx, job, 0, **build_args)  # need 0: every seed is a record
    assert seeds.size == job.seed_end - job.seed_start
    np.testing.assert_array_equal(cnt, want_cnt)
    np.testing.assert_array_equal(skip, want_skip)
    keep = np.nonzero(want_cnt >= job.need)[0]
    seeds, cnt, skip = host_kernel(tmp, gxx, job, job.need, **build_args)  # compacted survivors only
    np.testing.assert_array_equal(seeds, keep.astype(np.uint64) + np.uint64(job.seed_start))
    np.testing.assert_array_equal(cnt, want_cnt[keep])
    np.testing.assert_array_equal(skip, want_skip[keep])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kernel_source_logic_equals_numpy(tmp_path: Path, gxx: str, family: str):
    cases = [
        (10, 12, 3, 0, 5),
        (7, 9, 0, 2, 4),
        (7, 60, 2, 3, 5),
    ]  # p_max = 2 + 60*6 - 1 > 227 (mt19937 full state); > SEG outputs
    if family == "mt19937":
        cases.append((10, 30, 1, 0, 5))  # partial state, more than MT_PASS words: several passes
    if family == "java_random":
        cases += [((1 << 30) + 1, 10, 1, 0, 3), (1024, 9, 2, 0, 3)]  # rejection loop; m a power of two
    if family in ("xorshift32", "xorshift64", "java_random"):
        cases.append((100_003, 8, 1, 0, 40))  # u32 buffer (m > 2^16); 41 skips: runtime skip loop
    if family == "pcg32":
        cases.append(((1 << 32), 8, 0, 0, 2))  # m = 2^32: no reduction
    for n, (m, k, off, smin, smax) in enumerate(cases):
        check_equal(tmp_path, gxx, _job(family, m, k, off, smin, smax, seed=FAMILY_IDS[family] + n))
    if family in ("java_lcg", "minstd", "lcg32", "pcg32"):  # skips one at a time (many-skips path)
        check_equal(tmp_path, gxx, _job(family, 7, 9, 1, 2, 6), max_unrolled_skips=1)
    # planted seed: found at rate 1.0 at its skip, and alone
    seed, skip = 3_141_592_653, 3
    hist, _ = make_history(family, seed, 40, skip=skip, offset=3, m=10)
    job = make_job(
        family,
        hist,
        window=12,
        offset=3,
        skip_max=5,
        threshold=1.0,
        m=10,
        seed_start=seed - 30,
        seed_end=seed + 30,
    )
    seeds, cnt, sk = host_kernel(tmp_path, gxx, job, job.need)
    assert seeds.tolist() == [seed] and sk.tolist() == [skip] and cnt.tolist() == [12]


@pytest.mark.parametrize("family", ["java_lcg", "minstd", "lcg32", "pcg32"])
def test_affine_divisibility_test_equals_numpy(tmp_path: Path, gxx: str, family: str):
    """The affine kernels count v mod m == r as rotr((v - r) * o^-1, z) <= (2^32-1-r) // m
    (m = 2^z * o). Residues r = v + (2^32 mod m) are the trap: v - r wraps to 2^32 - (2^32 mod
    m), a multiple of m, so a test with one bound for every residue ((2^32-1) // m) would count
    them; the exact count (NumPy) does not. Even and odd m, m = 1, and m near 2^32."""
    seed, skip, k, off = 2**33 + 17, 2, 12, 1
    for m in (1, 3, 1024, 3 << 30, (1 << 32) - 5, (1 << 32) - 2):
        v = get_family(family).draws([seed], k, 1 << 32, skip, off)[0]
        c0 = (1 << 32) % m
        trap = (np.arange(k) % 2 == 0) & (v + c0 < m) & (c0 > 0)
        r = np.where(trap, v + c0, v % m)
        assert m < 1 << 30 or trap.any()  # the trap is laid where it can be
        job = SieveJob(family, r, m, off, 0, 3, 0.2, 2**33 - 50, 2**33 + 150)
        check_equal(tmp_path, gxx, job)
        want, _ = numpy_sieve_range(job, seed, seed + 1)
        assert want[0] == k - int(trap.sum()), (m, want)  # the planted seed: all but the traps


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gpu_backend_equals_numpy(family: str):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    rng = np.random.default_rng(7)
    for m, k, off, smin, smax, tau in (
        (10, 16, 3, 0, 6, 0.2),
        (7, 60, 2, 3, 5, 0.2),
        (1000, 64, 0, 0, 20, 0.0001),
    ):
        r = rng.integers(0, m, k)
        job = SieveJob(family, r, m, off, smin, smax, tau, 2**40 - 300, 2**40 + 3000)
        res = run_sieve(job, "gpu")
        assert res.backend == "gpu" and res.device != "cpu"
        want = run_sieve(job, "numpy").columns
        for key in ("seeds", "matches", "best_skip"):
            np.testing.assert_array_equal(res.columns[key], want[key])


@pytest.mark.gpu
def test_gpu_survivor_overflow_reruns_the_chunk(monkeypatch: pytest.MonkeyPatch):
    """More survivors than the record buffer holds: the chunk runs again with room for all."""
    from prng_workers.backends import gpu

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    monkeypatch.setattr(gpu, "survivor_capacity", lambda job, chunk: 16)
    job = SieveJob("java_lcg", np.zeros(8, dtype=np.int64), 2, 0, 0, 1, 0.25, 10**6, 10**6 + 5000)
    res = run_sieve(job, "gpu")
    want = run_sieve(job, "numpy").columns
    assert res.survivors > 16
    for key in ("seeds", "matches", "best_skip"):
        np.testing.assert_array_equal(res.columns[key], want[key])


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gpu_planted_seed(family: str):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    seed, skip = 3_141_592_653, 3
    hist, _ = make_history(family, seed, 60, skip=skip, offset=2)
    job = make_job(
        family,
        hist,
        window=24,
        offset=2,
        skip_max=5,
        threshold=1.0,
        seed_start=seed - 5000,
        seed_end=seed + 5000,
    )
    res = run_sieve(job, "gpu")
    assert res.columns["seeds"].tolist() == [seed]
    assert res.columns["best_skip"].tolist() == [skip]
    assert res.columns["match_rate"].tolist() == [1.0]
