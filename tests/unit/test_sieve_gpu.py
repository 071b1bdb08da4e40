"""The GPU kernel. Three levels:
1. its source compiles with nvcc for sm_90 (where nvcc exists; no device needed);
2. the SAME source, compiled by g++ as host code (one thread walking the grid-stride loop),
   gives the NumPy path's results seed for seed: the kernel's logic is checked on any machine;
3. on a real GPU (marked `gpu`), `--backend gpu` equals NumPy and finds planted seeds.
It uses no vendor intrinsics, so hipRTC builds the same text on ROCm."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from prng_workers.backends.gpu import FAMILY_IDS, KERNEL_SOURCE, kernel_options, unavailable_reason
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
#include "kernel.cu"
int main() {
    unsigned long long start, limit; long long n; int k, offset, skip_min, n_skips, need;
    if (std::scanf("%llu %lld %d %d %d %d %d %llu", &start, &n, &k, &offset, &skip_min, &n_skips, &need,
                   &limit) != 8) return 3;
    std::vector<unsigned> r(k);
    for (int i = 0; i < k; i++) std::scanf("%u", &r[i]);
    std::vector<unsigned long long> c[4];
    for (int a = 0; a < 4; a++) {
        c[a].resize(n_skips);
        for (int j = 0; j < n_skips; j++) std::scanf("%llu", &c[a][j]);
    }
    std::vector<int> bc(n), bs(n);
    prng_sieve(start, n, r.data(), k, offset, skip_min, n_skips, need, c[0].data(), c[1].data(), c[2].data(),
               c[3].data(), limit, bc.data(), bs.data());
    for (long long i = 0; i < n; i++) std::printf("%d %d\n", bc[i], bs[i]);
    return 0;
}
"""


def job_constants(job: SieveJob) -> list[list[int]]:
    fam = get_family(job.family)
    skips = range(job.skip_min, job.skip_max + 1)
    if hasattr(fam, "lcg") and job.family != "java_random":
        first = job.offset - (1 if fam.output_before_step else 0)
        firsts = [fam.lcg.jump_int(first + s + 1) for s in skips]
        strides = [fam.lcg.jump_int(s + 1) for s in skips]
        return [[a for a, _ in firsts], [c for _, c in firsts],
                [a for a, _ in strides], [c for _, c in strides]]
    return [[0] * job.n_skips for _ in range(4)]


def test_kernel_uses_no_vendor_only_intrinsics():
    words = set(re.findall(r"\b__\w+", KERNEL_SOURCE))
    assert words <= {"__global__", "__device__", "__forceinline__"}, words
    assert "cuda" not in KERNEL_SOURCE.lower()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kernel_compiles_with_nvcc(tmp_path: Path, family: str):
    if not shutil.which("nvcc"):
        pytest.skip("nvcc not installed")
    src = tmp_path / "kernel.cu"
    src.write_text(KERNEL_SOURCE)
    configs = [(1000, 0, 512, 20)] + ([(1000, 0, 10, 0)] if family == "mt19937" else [])  # full + partial
    for m, off, k, smax in configs:
        argv = ["nvcc", "-cubin", "-arch=sm_90", *kernel_options(family, m, off, k, smax),
                "-o", str(tmp_path / "k.cubin"), str(src)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "k.cubin").stat().st_size > 0


@pytest.fixture(scope="module")
def gxx() -> str:
    path = shutil.which("g++")
    if not path:
        pytest.skip("g++ not installed")
    return path


_BUILT: dict[tuple[str, ...], Path] = {}


def host_kernel(tmp: Path, gxx: str, job: SieveJob) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernel source compiled by g++ (built once per macro set) on the job's seeds."""
    opts = kernel_options(job.family, job.m, job.offset, job.window, job.skip_max)
    exe = _BUILT.get(opts)
    if exe is None or not exe.exists():
        (tmp / "kernel.cu").write_text(KERNEL_SOURCE)
        (tmp / "host.cpp").write_text(HOST_HARNESS)
        exe = tmp / f"host{len(_BUILT)}"
        subprocess.run([gxx, "-O1", "-std=c++17", *opts, "-o", str(exe), str(tmp / "host.cpp")], check=True,
                       capture_output=True, timeout=300)
        _BUILT[opts] = exe
    from prng_workers.families.java_random import reject_limit

    limit = reject_limit(job.m) if job.family == "java_random" else 0
    n = job.seed_end - job.seed_start
    words = [job.seed_start, n, job.window, job.offset, job.skip_min, job.n_skips, job.need, limit,
             *job.residues.tolist(), *[v for row in job_constants(job) for v in row]]
    out = subprocess.run([str(exe)], input=" ".join(map(str, words)), capture_output=True, text=True,
                         check=True, timeout=300).stdout
    arr = np.array([[int(v) for v in line.split()] for line in out.strip().splitlines()], dtype=np.int64)
    return arr[:, 0], arr[:, 1]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kernel_source_logic_equals_numpy(tmp_path: Path, gxx: str, family: str):
    rng = np.random.default_rng(FAMILY_IDS[family])
    cases = [(10, 12, 3, 0, 5), (7, 9, 0, 2, 4)]
    if family == "mt19937":
        cases.append((7, 60, 2, 3, 5))  # p_max = 2 + 60*6 - 1 > 227: full-state path
    if family == "java_random":
        cases.append(((1 << 30) + 1, 10, 1, 0, 3))  # rejection loop
    for m, k, off, smin, smax in cases:
        r = rng.integers(0, min(m, 10), k)
        job = SieveJob(family, r, m, off, smin, smax, 0.2, 2**33 - 50, 2**33 + 150)
        want = numpy_sieve_range(job, job.seed_start, job.seed_end)
        got = host_kernel(tmp_path, gxx, job)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # planted seed: found at rate 1.0 at its skip
    seed, skip = 3_141_592_653, 3
    hist, _ = make_history(family, seed, 40, skip=skip, offset=3, m=10)
    job = make_job(family, hist, window=12, offset=3, skip_max=5, threshold=1.0, m=10,
                   seed_start=seed - 30, seed_end=seed + 30)
    cnt, sk = host_kernel(tmp_path, gxx, job)
    hits = np.nonzero(cnt >= job.need)[0]
    assert (hits + job.seed_start).tolist() == [seed] and sk[hits].tolist() == [skip]


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gpu_backend_equals_numpy(family: str):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    rng = np.random.default_rng(7)
    for m, k, off, smin, smax in ((10, 16, 3, 0, 6), (7, 60, 2, 3, 5)):
        r = rng.integers(0, m, k)
        job = SieveJob(family, r, m, off, smin, smax, 0.2, 2**40 - 300, 2**40 + 3000)
        res = run_sieve(job, "gpu")
        assert res.backend == "gpu" and res.device != "cpu"
        want = run_sieve(job, "numpy").columns
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
    job = make_job(family, hist, window=24, offset=2, skip_max=5, threshold=1.0, seed_start=seed - 5000,
                   seed_end=seed + 5000)
    res = run_sieve(job, "gpu")
    assert res.columns["seeds"].tolist() == [seed]
    assert res.columns["best_skip"].tolist() == [skip]
    assert res.columns["match_rate"].tolist() == [1.0]
