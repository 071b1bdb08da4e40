"""The compiled CPU sieve's explicit-SIMD kernels (backends/cpu.py): every variant this CPU
runs (portable 256-bit, 512-bit, 512-bit + IFMA) gives the NumPy path's counts and skips on
random seeds for every family; the compare modes are exact at their edges; the early stops
keep the survivors exact; and the machine code is the code the variant promises (32-bit lanes
for mt19937's seeding, vpmadd52luq for java_lcg where the CPU has IFMA). No timings here:
speed is measured by bench/pair_mt19937.py and bench/pair_sieve_ceiling.py."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest

from prng_workers.backends import cpu
from prng_workers.families import FAMILY_NAMES, get_family
from prng_workers.history_cli import make_history
from prng_workers.sieve import SieveJob, make_job, numpy_sieve_range

AFFINE = ("java_lcg", "minstd", "lcg32", "pcg32")
SEED_BITS = {"mt19937": 32, "lcg32": 32, "xorshift32": 32}  # the others take 64-bit seeds


def _variants(family: str) -> list[int]:
    if family in AFFINE or family == "mt19937":
        return cpu.variants()
    return [cpu.VARIANT_PORTABLE]  # sequential families: one compiled path, checked against NumPy


def _cpu(job: SieveJob, variant: int) -> tuple[np.ndarray, np.ndarray]:
    return cpu.sieve_range(
        job.family,
        job.seed_start,
        job.seed_end,
        job.residues,
        job.m,
        job.offset,
        job.skip_min,
        job.skip_max,
        job.need,
        variant,
    )


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("m", [1000, 1024, 7, (1 << 31) + 11])
def test_every_variant_equals_numpy_on_random_seeds(family: str, m: int) -> None:
    # low threshold: no block can stop early, so every seed's count and skip must be exact
    if m > get_family(family).max_mod:
        m = get_family(family).max_mod  # java_random: nextInt's bound is below 2^31
    rng = np.random.default_rng([FAMILY_NAMES.index(family), m])
    bits = SEED_BITS.get(family, 64)
    start = int(rng.integers(0, 2**bits - 4000, dtype=np.uint64))
    k = int(rng.integers(5, 40))
    smax = int(rng.integers(0, 6))
    r = rng.integers(0, min(m, 10), k)  # small residues: matches happen even for big m
    job = SieveJob(family, r, m, int(rng.integers(0, 4)), 0, smax, 1 / k, start, start + 3000)
    want = numpy_sieve_range(job, job.seed_start, job.seed_end)
    for variant in _variants(family):
        got = _cpu(job, variant)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{family} m={m} variant {variant}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"{family} m={m} variant {variant}")


def test_ifma_variant_is_available_or_skipped_with_reason() -> None:
    if not cpu.HAS_IFMA:
        pytest.skip("this CPU has no AVX-512 IFMA: only the portable / 512-bit variants ran above")
    assert cpu.FAST["affine"] == cpu.WIDE | cpu.IFMA
    assert cpu.WIDE | cpu.IFMA in cpu.variants()


@pytest.mark.parametrize("m", [3, 1000, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, (1 << 32) - 1, 1 << 32, 1])
def test_compare_mode_is_exact_at_its_edges(m: int) -> None:
    # _affine_count's match test, evaluated here in Python integers, on outputs next to every
    # boundary: n = q*m + r + d for d in -1..1, the largest outputs, r at 0 and m - 1
    for ifma in (False, True):
        _check_compare_mode(m, *cpu._affine_compare(np.array([0, m - 1, m // 2, 1 % m]), m, ifma))


def _check_compare_mode(m: int, rt: np.ndarray, mode: int, mconst: int) -> None:
    rng = np.random.default_rng(m)
    ns = {0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1}
    for q in rng.integers(0, (2**32 - 1) // m + 1, 200).tolist() + [0, (2**32 - 1) // m]:
        for r in (0, m - 1, m // 2):
            for d in (-1, 0, 1):
                if 0 <= q * m + r + d < 2**32:
                    ns.add(q * m + r + d)
    for n in sorted(ns):
        for i, r in enumerate((0, m - 1, m // 2, 1 % m)):
            if mode == 0:
                hit = (n * mconst - int(rt[i])) % 2**64 < 2**32
            elif mode == 3:  # vpmadd52luq: rt + low 52 bits of the 104-bit product, mod 2^64
                hit = (int(rt[i]) + (n * mconst) % 2**52) % 2**64 < 2**32
            elif mode == 1:
                hit = n & mconst == int(rt[i])
            else:
                hit = n in (int(rt[i]), int(rt[i]) + mconst)
            assert hit == (n % m == r), (m, mode, n, r)


@pytest.mark.parametrize("family", [*AFFINE, "mt19937"])
@pytest.mark.parametrize("m", [(1 << 31) - 1, (1 << 31) + 1, (1 << 32) - 1, 1 << 32])
def test_planted_seed_with_a_huge_modulus(family: str, m: int) -> None:
    seed = 3_000_000_123
    hist, _ = make_history(family, seed, 40, skip=2, offset=1, m=m)
    job = make_job(
        family,
        hist,
        window=12,
        offset=1,
        skip_max=3,
        threshold=1.0,
        m=m,
        seed_start=seed - 500,
        seed_end=seed + 500,
    )
    want = numpy_sieve_range(job, job.seed_start, job.seed_end)
    for variant in _variants(family):
        got = _cpu(job, variant)
        hits = np.nonzero(got[0] >= job.need)[0]
        assert hits.tolist() == [500] and got[1][500] == 2, (family, m, variant)
        np.testing.assert_array_equal(got[0][hits], want[0][hits])


@pytest.mark.parametrize("family", [*AFFINE, "mt19937"])
def test_early_stop_keeps_the_survivors_exact(family: str) -> None:
    # an exact window (need == k): nearly every block stops at its first draws; a noisy
    # planted seed at a high threshold must still come out with its exact count and skip
    seed = 2_345_678
    for threshold, noise in ((1.0, 0.0), (0.85, 0.05)):
        hist, _ = make_history(family, seed, 60, skip=1, noise=noise, noise_seed=3, m=50)
        job = make_job(
            family,
            hist,
            window=40,
            skip_max=4,
            threshold=threshold,
            m=50,
            seed_start=seed - 6000,
            seed_end=seed + 6000,
        )
        want = numpy_sieve_range(job, job.seed_start, job.seed_end)
        keep = np.nonzero(want[0] >= job.need)[0]
        assert 6000 in keep.tolist()
        for variant in _variants(family):
            got = _cpu(job, variant)
            np.testing.assert_array_equal(np.nonzero(got[0] >= job.need)[0], keep)
            np.testing.assert_array_equal(got[0][keep], want[0][keep])
            np.testing.assert_array_equal(got[1][keep], want[1][keep])
            assert (got[0] <= want[0]).all()  # the others: lower bounds


def test_mt19937_exact_first_output_search() -> None:
    # php_mt_seed's question: which 32-bit seeds give this first output (m = 2^32, one draw)
    fam = get_family("mt19937")
    seed = 1_234_567_890
    v = int(fam.draws([seed], 1, 1 << 32)[0, 0])
    job = SieveJob("mt19937", np.array([v]), 1 << 32, 0, 0, 0, 1.0, seed - 9000, seed + 7000)
    want = numpy_sieve_range(job, job.seed_start, job.seed_end)
    assert np.nonzero(want[0] >= 1)[0].tolist() == [9000]
    for variant in cpu.variants():
        got = _cpu(job, variant)
        assert np.nonzero(got[0] >= 1)[0].tolist() == [9000]


@pytest.mark.parametrize("family", ["java_lcg", "mt19937", "xorshift32"])
def test_survivor_slices_that_fill_up_run_again(family: str) -> None:
    # m = 3, need 1: most seeds survive, far beyond slices sized for none (expect=0); the
    # kernels count on past a full slice and the call runs again with room for all
    r = np.array([1, 2, 0])
    job = SieveJob(family, r, 3, 0, 0, 2, 1 / 3, 5000, 9000)
    want = numpy_sieve_range(job, job.seed_start, job.seed_end)
    keep = np.nonzero(want[0] >= 1)[0]
    assert keep.size > 3000
    idx, cnt, skip = cpu.sieve_survivors(family, 5000, 9000, r, 3, 0, 0, 2, 1, expect=0.0)
    np.testing.assert_array_equal(idx, keep)
    np.testing.assert_array_equal(cnt, want[0][keep])
    np.testing.assert_array_equal(skip, want[1][keep])


def _survivor_outputs(n: int) -> tuple[np.ndarray, ...]:
    """A kernel's survivor outputs (seed offsets, counts, skips, per-chunk counts) for n seeds, 2 chunks."""
    return np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.int32), np.zeros(2, np.int64)


def test_mt19937_seeding_stays_in_32bit_lanes() -> None:
    # the old kernel widened the recurrence to 64-bit lanes (vpmuludq, narrowing moves); a
    # fresh compile of the same function, since Numba shows no machine code for cached ones
    variant = cpu.FAST["mt19937"]
    fn = numba.njit(parallel=True)(cpu.mt_partial_kernel(variant).py_func)
    fn(
        np.uint64(0),
        np.int64(300),
        np.array([5], np.uint32),
        np.int64(1000),
        np.int64(0),
        np.int64(0),
        np.int64(0),
        np.int64(1),
        *_survivor_outputs(300),
    )
    asm = "\n".join(fn.inspect_asm().values())
    reg = "zmm" if variant & cpu.WIDE else "ymm"
    assert re.search(rf"vpmulld\s+%{reg}", asm), "no 32-bit vector multiply"
    for widening in ("vpmuludq", "vpmullq", "vpmovqd", "vpmovzxdq"):
        assert widening not in asm, widening


def test_java_lcg_fast_variant_machine_code() -> None:
    variant = cpu.FAST["affine"]
    fn = numba.njit(parallel=True)(cpu.affine_kernel(0, variant).py_func)
    u = lambda *v: np.array(v, dtype=np.uint64)  # noqa: E731
    fn(
        np.uint64(0),
        np.int64(100),
        u(1, 2),
        np.int64(1),
        np.uint64(7),
        np.int64(1),
        np.int64(0),
        u(3),
        u(5),
        u(3),
        u(5),
        *_survivor_outputs(100),
    )
    asm = "\n".join(fn.inspect_asm().values())
    if variant & cpu.IFMA:
        assert re.search(r"vpmadd52luq\s+%zmm", asm), "no IFMA multiply-add"
    if variant & cpu.WIDE:
        assert "zmm" in asm
