"""Step 3 features: batched NumPy vs the per-seed reference vs torch; holdout offset (i8)."""

from __future__ import annotations

import numpy as np
import pytest

from prng_workers.families import get_family
from prng_workers.scoring import engine, features
from prng_workers.scoring.reference import reference_features, reference_holdout, reference_score_seed

# NumPy vs reference: the same float64 formulas, summed in a different order.
REF_RTOL, REF_ATOL = 1e-9, 1e-9
# NumPy vs torch (CPU build, float64 in both): stated tolerance of the backends' agreement.
TORCH_RTOL, TORCH_ATOL = 1e-9, 1e-9


def _random_case(m: int, n: int, nh: int, seeds: int, rng: np.random.Generator):
    a = rng.integers(0, m, n)
    hh = rng.integers(0, m, nh)
    p = rng.integers(0, m, (seeds, n))
    ph = rng.integers(0, m, (seeds, nh))
    p[0], ph[0] = a, hh  # a perfect seed
    p[1], ph[1] = 7 % m, 3 % m  # a constant seed (zero variance paths)
    p[2, : n // 2] = a[: n // 2]  # half right
    return a, hh, p, ph


def _as_dict(row: np.ndarray, hrow: np.ndarray) -> dict[str, float]:
    d = {name: float(row[i]) for i, name in enumerate(features.TRAIN_FEATURES)}
    d.update({name: float(hrow[i]) for i, name in enumerate(features.HOLDOUT_FEATURES)})
    return d


@pytest.mark.parametrize(
    ("m", "n", "nh"), [(1000, 537, 130), (10, 60, 7), (50000, 300, 40), (1000, 5, 3), (1000, 1, 1)]
)
def test_batched_numpy_matches_per_seed_reference(m: int, n: int, nh: int) -> None:
    rng = np.random.default_rng(m + n)
    a, hh, p, ph = _random_case(m, n, nh, 6, rng)
    dt = features.draw_dtype(m)
    got = features.train_features(p.astype(dt), features.prepare_history(a, m))
    goth = features.holdout_features(ph.astype(dt), features.prepare_history(hh, m))
    for i in range(p.shape[0]):
        ref = reference_features(p[i].tolist(), a.tolist(), m)
        ref.update(reference_holdout(ph[i].tolist(), hh.tolist(), m))
        batched = _as_dict(got[i], goth[i])
        assert set(ref) == set(batched)
        for name, value in ref.items():
            assert batched[name] == pytest.approx(value, rel=REF_RTOL, abs=REF_ATOL), (i, name)


def test_torch_matches_numpy_within_stated_tolerance() -> None:
    torch = pytest.importorskip("torch")
    from prng_workers.scoring import torch_backend

    rng = np.random.default_rng(5)
    for m, n, nh in [(1000, 1500, 300), (50000, 200, 20), (10, 30, 4)]:
        a, hh, p, ph = _random_case(m, n, nh, 9, rng)
        h, hho = features.prepare_history(a, m), features.prepare_history(hh, m)
        dt = features.draw_dtype(m)
        want = features.train_features(p.astype(dt), h)
        wanth = features.holdout_features(ph.astype(dt), hho)
        cpu = torch.device("cpu")
        got = torch_backend.train_features(torch.from_numpy(p), torch_backend.to_torch(h, cpu)).numpy()
        goth = torch_backend.holdout_features(torch.from_numpy(ph), torch_backend.to_torch(hho, cpu)).numpy()
        np.testing.assert_allclose(got, want, rtol=TORCH_RTOL, atol=TORCH_ATOL)
        np.testing.assert_allclose(goth, wanth, rtol=TORCH_RTOL, atol=TORCH_ATOL)


def test_perfect_seed_features() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, 400)
    f = features.train_features(a[None, :].astype(np.int16), features.prepare_history(a, 1000))[0]
    col = features.COL
    assert f[col["score"]] == 100.0 and f[col["exact_matches"]] == 400
    assert f[col["residual_abs_mean"]] == 0 and f[col["residual_std"]] == pytest.approx(0, abs=1e-9)
    for mod in features.MODS:
        assert f[col[f"residue_{mod}_kl_divergence"]] == pytest.approx(0, abs=1e-12)
        assert f[col[f"residue_{mod}_coherence"]] == pytest.approx(1.0)
    assert f[col["lane_consistency"]] == 1.0 and f[col["digit_agreement_sum"]] == 3.0
    assert f[col["temporal_min"]] == 1.0 and f[col["temporal_slope"]] == 0.0


def test_expected_popcount_exact() -> None:
    for m in (1, 2, 3, 7, 8, 1000, 1023, 1024, 65537):
        brute = sum(bin(v).count("1") for v in range(m)) / m
        assert features.expected_popcount(m) == pytest.approx(brute, rel=1e-15)


def _planted(family_name: str, seed: int, skip: int, n: int, nh: int, m: int = 1000):
    fam = get_family(family_name)
    stream = fam.draws(np.array([seed], dtype=np.uint64), n + nh, m, skip=skip)[0]
    return fam, stream[:n], stream[n:]


@pytest.mark.parametrize(("family_name", "skip"), [("java_lcg", 0), ("java_lcg", 3), ("mt19937", 2)])
def test_i8_holdout_offset_is_train_length_planted_seed(family_name: str, skip: int) -> None:
    seed, n, nh, m = 987654321, 1200, 600, 1000
    fam, train, holdout = _planted(family_name, seed, skip, n, nh, m)
    rng = np.random.default_rng(8)
    others = rng.integers(1, 2**40, 40).astype(np.uint64)
    seeds = np.concatenate([np.array([seed], dtype=np.uint64), others])
    skips = np.full(seeds.size, skip, dtype=np.int64)
    res = engine.score_chunk(fam, seeds, skips, train, holdout, m, engine.NumpyBackend(), 16)
    hits = res.holdout[:, features.HCOL["holdout_hits"]]
    assert hits[0] == 1.0
    assert res.train[0, features.COL["score"]] == 100.0
    assert 0.0 <= hits[1:].mean() <= 4.0 / m  # random seeds: about 1/m
    quality = res.holdout[:, features.HCOL["holdout_quality"]]
    assert ((quality >= 0) & (quality <= 1)).all() and quality[0] == pytest.approx(1.0)
    assert quality[1:].max() < quality[0]
    # the old bug: holdout compared with the start of the stream (offset 0) -> ~1/m, not 1.0
    restart = fam.draws(seeds[:1], nh, m, skip=skip)
    wrong = features.holdout_features(restart.astype(np.int16), features.prepare_history(holdout, m))
    assert wrong[0, features.HCOL["holdout_hits"]] < 0.05


def test_score_chunk_independent_of_sub_batch_size() -> None:
    fam, train, holdout = _planted("java_lcg", 42, 1, 700, 150)
    seeds = np.arange(1000, 1023, dtype=np.uint64)
    skips = np.arange(23, dtype=np.int64) % 4
    one = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 1)
    many = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 7)
    np.testing.assert_array_equal(one.train, many.train)
    np.testing.assert_array_equal(one.holdout, many.holdout)


def test_batched_chunk_matches_reference_with_family_draws() -> None:
    fam, train, holdout = _planted("java_random", 77, 0, 300, 80)
    seeds = np.array([77, 5, 2**47 + 3], dtype=np.uint64)
    skips = np.array([0, 2, 5], dtype=np.int64)
    res = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 2)
    for i, (seed, skip) in enumerate(zip(seeds.tolist(), skips.tolist(), strict=True)):
        ref = reference_score_seed(fam, seed, skip, train.tolist(), holdout.tolist(), 1000)
        got = _as_dict(res.train[i], res.holdout[i])
        for name, value in ref.items():
            assert got[name] == pytest.approx(value, rel=REF_RTOL, abs=REF_ATOL), (seed, name)


def test_batch_size_bounded_by_budget() -> None:
    b = engine.batch_size("numpy", 18_000, 64)
    assert 1 <= b and b * 18_000 * engine.BYTES_PER_SEED_DRAW["numpy"] <= 64 * 2**20
    assert engine.batch_size("numpy", 10**9, 1) == 1
    assert engine.batch_size("torch", 100, 64, override=5) == 5


# The int16 fast path (m <= 2^14) sums integers exactly (int32/int64, or float64 below 2^53)
# and takes the 10 autocorrelation lags from the FFT's power spectrum; only the FFT-derived
# features (fft_peak_magnitude, autocorr_lag_k) and float64 formulas round. Stated tolerance
# against the float64 formulation (the general path, and the per-seed reference above):
FAST_RTOL, FAST_ATOL = 1e-9, 1e-12


@pytest.mark.parametrize(
    ("m", "n"), [(1000, 14450), (999, 3001), (5000, 2000), (2**14, 4000), (7, 400), (1000, 11)]
)
def test_fast_path_equals_the_float64_formulation(m: int, n: int) -> None:
    rng = np.random.default_rng([m, n])
    a, hh, p, ph = _random_case(m, n, max(1, n // 4), 12, rng)
    p[3] = np.arange(n) % 2 * (m - 1)  # alternating: autocorrelation -1 / +1 at odd / even lags
    p[4] = (np.arange(n) // 3) % m  # slow ramp: strong positive autocorrelation, large cusum
    p[5, n // 2 :] = m - 1  # a step
    h, hho = features.prepare_history(a, m), features.prepare_history(hh, m)
    p16, ph16 = p.astype(np.int16), ph.astype(np.int16)
    assert features._fast_path(p16, m)
    fast = features.train_features(p16, h)
    general = features._train_features_general(p16, h)
    np.testing.assert_allclose(fast, general, rtol=FAST_RTOL, atol=FAST_ATOL)
    got_h = features.holdout_features(ph16, hho)
    want_h = features.holdout_features(ph.astype(np.int32), features.prepare_history(hh, m))  # general path
    np.testing.assert_allclose(got_h, want_h, rtol=FAST_RTOL, atol=FAST_ATOL)
    for i in (3, 4, 5):  # the shaped series against the per-seed reference too
        ref = reference_features(p[i].tolist(), a.tolist(), m)
        for name, value in ref.items():
            assert fast[i, features.COL[name]] == pytest.approx(value, rel=REF_RTOL, abs=REF_ATOL), (i, name)
    col = features.COL
    assert fast[3, col["autocorr_lag_1"]] < -0.9 and fast[3, col["autocorr_lag_2"]] > 0.8
    exact = [
        "exact_matches",
        "pred_min",
        "pred_max",
        "residual_max_abs",
        "lane_agreement_8",
        "lane_agreement_125",
        "digit_hundreds_agreement",
        "digit_tens_agreement",
        "digit_ones_agreement",
    ]
    for name in exact:  # integer counts: identical, not just close
        np.testing.assert_array_equal(fast[:, col[name]], general[:, col[name]], err_msg=name)


def test_fast_path_is_taken_only_where_its_sums_are_exact() -> None:
    p = np.zeros((2, 14450), dtype=np.int16)
    assert features._fast_path(p, 1000)
    assert not features._fast_path(p.astype(np.int32), 1000)  # m > 2^14 draws
    assert not features._fast_path(np.zeros((2, 200_000), dtype=np.int16), 2**14)  # n * m >= 2^31


def test_workspace_reuse_does_not_leak_between_batches() -> None:
    # buffers are kept between sub-batches (and between train / holdout lengths): a batch after
    # a bigger one, and after another history length, must give the same rows as alone
    rng = np.random.default_rng(12)
    a, hh, p, ph = _random_case(1000, 900, 200, 10, rng)
    h, hho = features.prepare_history(a, 1000), features.prepare_history(hh, 1000)
    p16, ph16 = p.astype(np.int16), ph.astype(np.int16)
    alone = [features.train_features(p16[i : i + 1], h) for i in range(10)]
    features.train_features(p16, h)
    features.holdout_features(ph16, hho)
    for i in (9, 0, 4):
        np.testing.assert_array_equal(features.train_features(p16[i : i + 1], h), alone[i])
