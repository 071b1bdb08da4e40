"""The sieve (spec §3-§6): backends agree seed for seed, planted seeds are found at rate 1.0
at their skip, the reverse mode is the documented compat semantics, and survivor counts on
random draws follow the noise model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prng_workers.errors import InputError
from prng_workers.families import FAMILY_NAMES, get_family
from prng_workers.history_cli import make_history
from prng_workers.sieve import SieveJob, make_job, noise_survival_probability, numpy_sieve_range, run_sieve

PLANT = {"seed": 3_141_592_653, "skip": 3, "offset": 2}  # < 2^32: valid for the 32-bit-seed families


def cpu_range(job: SieveJob, a: int, b: int):
    from prng_workers.backends import cpu

    return cpu.sieve_range(job.family, a, b, job.residues, job.m, job.offset, job.skip_min, job.skip_max,
                           job.need)


def planted_job(family: str, **kw) -> SieveJob:
    hist, _ = make_history(family, PLANT["seed"], 60, skip=PLANT["skip"], offset=PLANT["offset"])
    args = {"window": 24, "offset": PLANT["offset"], "skip_min": 0, "skip_max": 5, "threshold": 1.0,
            "seed_start": PLANT["seed"] - 40, "seed_end": PLANT["seed"] + 40} | kw
    return make_job(family, hist, **args)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_planted_seed_found_at_rate_1_at_its_skip(family: str, backend: str):
    res = run_sieve(planted_job(family), backend)
    assert res.backend == backend
    cols = res.columns
    assert cols["seeds"].tolist() == [PLANT["seed"]]
    assert cols["match_rate"].tolist() == [1.0]
    assert cols["best_skip"].tolist() == [PLANT["skip"]]
    assert cols["total"].tolist() == [24]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_backends_identical_per_seed(family: str):
    # small m and low threshold: many survivors, ties between skips, both directions
    rng = np.random.default_rng(11)
    for direction, (k, off, smin, smax) in (("forward", (16, 3, 0, 6)), ("reverse", (9, 0, 2, 4))):
        r = rng.integers(0, 10, k)
        job = SieveJob(family, r, 10, off, smin, smax, 0.2, 2**40 - 300, 2**40 + 700, direction)
        a = numpy_sieve_range(job, job.seed_start, job.seed_end)
        b = cpu_range(job, job.seed_start, job.seed_end)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert (a[0] >= job.need).sum() > 10


@pytest.mark.parametrize("family", ["mt19937", "java_random", "xorshift32"])
def test_backends_identical_long_streams(family: str):
    # mt19937 past the partial-state limit (full twists), several stream segments, skip range far from 0
    rng = np.random.default_rng(3)
    r = rng.integers(0, 7, 200)
    job = SieveJob(family, r, 7, 5, 18, 21, 0.2, 1000, 1100)
    a = numpy_sieve_range(job, 1000, 1100)
    b = cpu_range(job, 1000, 1100)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_java_random_rejection_loop_in_the_sieve():
    # m = 2^30 + 1: nextInt rejects ~half its raw values, so calls != steps
    rng = np.random.default_rng(4)
    r = rng.integers(0, 3, 30)
    m = (1 << 30) + 1
    job = SieveJob("java_random", r % m, m, 1, 0, 3, 1 / 30, 0, 300)
    a = numpy_sieve_range(job, 0, 300)
    b = cpu_range(job, 0, 300)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    fam = get_family("java_random")
    seed = 123
    hist, _ = make_history("java_random", seed, 40, skip=2, offset=1, m=m)
    job2 = make_job("java_random", hist, window=30, offset=1, skip_min=0, skip_max=3, threshold=1.0, m=m,
                    seed_start=100, seed_end=140)
    for backend in ("numpy", "cpu"):
        assert run_sieve(job2, backend).columns["seeds"].tolist() == [seed]
    assert fam.draws([seed], 3, m, 2, 1).tolist() == [fam.reference_draws(seed, 3, m, 2, 1)]


def test_mt19937_partial_state_path_equals_full_state():
    # p_max < 227 takes the partial-state kernel; the NumPy path always builds 624 words
    rng = np.random.default_rng(8)
    r = rng.integers(0, 5, 20)
    job = SieveJob("mt19937", r, 5, 4, 0, 9, 0.25, 0, 500)  # p_max = 4 + 20*10 - 1 = 203
    assert job.offset + job.window * (job.skip_max + 1) - 1 < 227
    a = numpy_sieve_range(job, 0, 500)
    b = cpu_range(job, 0, 500)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_reverse_is_the_forward_generator_on_the_reversed_window():
    hist, _ = make_history("java_lcg", 777, 50, skip=1)
    fwd = make_job("java_lcg", hist, window=20, skip_max=2, threshold=1.0, seed_start=700, seed_end=800)
    rev = make_job("java_lcg", hist, window=20, skip_max=2, threshold=1.0, seed_start=700, seed_end=800,
                   direction="reverse")
    np.testing.assert_array_equal(rev.residues, fwd.residues[::-1])
    assert run_sieve(fwd, "cpu").columns["seeds"].tolist() == [777]
    # compat semantics: the PRNG is not inverted, so the planted seed fails the reverse pass
    assert run_sieve(rev, "cpu").columns["seeds"].tolist() == []
    # a history planted newest-first is found by the reverse pass
    hist_rev = [dict(h, draw=d["draw"]) for h, d in zip(hist, reversed(hist[:20]), strict=False)] + hist[20:]
    rev2 = make_job("java_lcg", hist_rev, window=20, skip_max=2, threshold=1.0, seed_start=700, seed_end=800,
                    direction="reverse")
    assert run_sieve(rev2, "cpu").columns["seeds"].tolist() == [777]


def test_noise_model_formula_matches_spec_example():
    # spec §5: k=512, tau=0.01 (>= 6 matches), skips 0..20, m=1000: about 331,000 per 10^9 seeds
    p = noise_survival_probability(512, 6, 1000, 21)
    assert 325_000 < p * 1e9 < 337_000


@pytest.mark.parametrize("family", ["java_lcg", "mt19937", "xorshift64", "pcg32", "minstd"])
def test_survivor_count_on_random_draws_follows_noise_model(family: str):
    # Random window, 200k consecutive seeds, cpu backend. Bound: |count - E| <= 5 sigma (binomial)
    # where E = n * P(survive) from spec §5; a wrong skip/offset/mod/compare would shift it.
    rng = np.random.default_rng(2024)
    k, m, n_skips, n = 100, 50, 4, 200_000
    r = rng.integers(0, m, k)
    job = SieveJob(family, r, m, 0, 0, n_skips - 1, 0.06, 10**9, 10**9 + n)  # need = 6
    assert job.need == 6
    p = noise_survival_probability(k, job.need, m, n_skips)
    expected = n * p
    sigma = math.sqrt(n * p * (1 - p))
    count = run_sieve(job, "cpu").survivors
    assert abs(count - expected) <= 5 * sigma, (count, expected, sigma)


def test_need_is_exact_integer_threshold():
    r = np.zeros(512, dtype=np.int64)
    assert SieveJob("java_lcg", r, 1000, 0, 0, 0, 0.01, 0, 1).need == 6
    assert SieveJob("java_lcg", r[:10], 1000, 0, 0, 0, 1.0, 0, 1).need == 10
    assert SieveJob("java_lcg", r[:10], 1000, 0, 0, 0, 0.3, 0, 1).need == 3


@pytest.mark.parametrize(("kw", "msg"), [
    ({"window": 61}, "longer than the history"),
    ({"window": 0}, "window"),
    ({"seed_start": 10, "seed_end": 10}, "empty or inverted"),
    ({"seed_start": 10, "seed_end": 5}, "empty or inverted"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"skip_min": 3, "skip_max": 2}, "skip range"),
    ({"direction": "sideways"}, "direction"),
    ({"seed_end": 2**64 + 1}, r"2\^64"),
])
def test_bad_job_parameters(kw: dict, msg: str):
    hist, _ = make_history("java_lcg", 5, 60)
    args = {"window": 10, "threshold": 0.5, "seed_start": 0, "seed_end": 10} | kw
    with pytest.raises(InputError, match=msg):
        make_job("java_lcg", hist, **args)


def test_unknown_family_in_job():
    hist, _ = make_history("java_lcg", 5, 20)
    with pytest.raises(InputError, match="unknown family"):
        make_job("rand48", hist, window=5, seed_start=0, seed_end=5)


def test_i2_gpu_backend_without_gpu_fails_loudly():
    from prng_workers.backends import gpu

    if gpu.unavailable_reason() is None:
        pytest.skip("a GPU is present: the no-GPU path cannot be shown here")
    hist, _ = make_history("java_lcg", 5, 20)
    job = make_job("java_lcg", hist, window=5, seed_start=0, seed_end=5)
    with pytest.raises(InputError, match="no usable GPU"):
        run_sieve(job, "gpu")
    assert run_sieve(job, "auto").backend == "cpu"  # auto reports what it really used


@pytest.mark.parametrize("family", ["java_lcg", "pcg32", "xorshift64"])
def test_top_of_the_64bit_seed_range(family: str):
    rng = np.random.default_rng(9)
    r = rng.integers(0, 10, 12)
    job = SieveJob(family, r, 10, 1, 0, 3, 0.25, 2**64 - 200, 2**64)
    a = numpy_sieve_range(job, job.seed_start, job.seed_end)
    b = cpu_range(job, job.seed_start, job.seed_end)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    res = run_sieve(job, "cpu")
    assert res.columns["seeds"].dtype == np.uint64
    assert int(res.columns["seeds"].max()) <= 2**64 - 1


@pytest.mark.parametrize("family", ["java_lcg", "minstd", "pcg32"])
def test_high_threshold_survivors_identical(family: str):
    # threshold 0.85: nearly every block of the compiled kernel stops early; the noisy planted
    # seed (5% of its draws changed) must still come out with its exact count and skip
    seed = 1_234_567
    hist, intact = make_history(family, seed, 160, skip=2, noise=0.05, noise_seed=4, m=4)
    job = make_job(family, hist, window=128, skip_max=3, threshold=0.85, m=4, seed_start=seed - 20_000,
                   seed_end=seed + 20_000)
    a, b = run_sieve(job, "numpy").columns, run_sieve(job, "cpu").columns
    assert a["seeds"].tolist() == [seed] and a["best_skip"].tolist() == [2]
    assert a["matches"].tolist() == [int(intact[:128].sum())]
    for key in ("seeds", "matches", "best_skip"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("family", ["java_lcg", "pcg32", "mt19937", "xorshift32"])
@pytest.mark.parametrize("m", [1, 2**32])
def test_modulus_edges(family: str, m: int):
    # m = 2^32 compares raw 32-bit outputs; m = 1 makes every draw match
    seed = 77_777
    hist, _ = make_history(family, seed, 30, skip=1, m=m)
    job = make_job(family, hist, window=20, skip_max=2, threshold=1.0, m=m, seed_start=seed - 30,
                   seed_end=seed + 30)
    a, b = run_sieve(job, "numpy").columns, run_sieve(job, "cpu").columns
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_array_equal(a["best_skip"], b["best_skip"])
    if m == 1:
        assert a["seeds"].size == 60 and set(a["best_skip"].tolist()) == {0}
    else:
        assert a["seeds"].tolist() == [seed] and a["best_skip"].tolist() == [1]
