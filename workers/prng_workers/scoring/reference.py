"""Per-seed reference of the Step 3 features: plain Python, one seed at a time.

The correctness oracle for the batched NumPy and torch paths (same definitions as
`features`, written independently and literally) and the "old way" in the benchmark.
Draws come from the family's scalar `reference_draws`. Only the FFT peak uses NumPy
(on one seed's 1-D series); everything else is Python loops over one seed's draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prng_workers.scoring.features import KL_EPS, MODS, N_LAGS, N_WINDOWS, WINDOW


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _pstd(xs: Sequence[float]) -> float:
    mu = _mean(xs)
    return math.sqrt(sum((v - mu) ** 2 for v in xs) / len(xs))


def _match(p: Sequence[int], a: Sequence[int], f) -> float:
    return sum(1 for x, y in zip(p, a, strict=True) if f(x) == f(y)) / len(p)


def _kl(p: Sequence[int], a: Sequence[int], mod: int) -> float:
    hp = [0] * mod
    ha = [0] * mod
    for v in p:
        hp[v % mod] += 1
    for v in a:
        ha[v % mod] += 1
    total = 0.0
    for cp, ca in zip(hp, ha, strict=True):
        pp = max(cp / len(p), KL_EPS)
        qq = max(ca / len(a), KL_EPS)
        total += pp * math.log(pp / qq)
    return total


def reference_features(p: Sequence[int], a: Sequence[int], m: int) -> dict[str, float]:
    """Train features of one seed: p = its n predicted draws (mod m), a = train history."""
    n = len(a)
    a = [v % m for v in a]
    f: dict[str, float] = {}
    matches = sum(1 for x, y in zip(p, a, strict=True) if x == y)
    rate = matches / n
    f["score"] = 100.0 * rate
    f["exact_matches"] = float(matches)
    f["total_predictions"] = float(n)
    f["confidence"] = max(rate, 0.1)
    f["pred_mean"] = _mean(p)
    f["pred_std"] = _pstd(p)
    f["pred_min"] = float(min(p))
    f["pred_max"] = float(max(p))
    f["actual_mean"] = _mean(a)
    f["actual_std"] = _pstd(a)
    r = [x - y for x, y in zip(p, a, strict=True)]
    f["residual_mean"] = _mean(r)
    f["residual_std"] = _pstd(r)
    f["residual_abs_mean"] = _mean([abs(v) for v in r])
    f["residual_max_abs"] = float(max(abs(v) for v in r))
    f["lane_agreement_8"] = _match(p, a, lambda v: v % 8)
    f["lane_agreement_125"] = _match(p, a, lambda v: v % 125)
    f["lane_consistency"] = (f["lane_agreement_8"] + f["lane_agreement_125"]) / 2
    f["digit_hundreds_agreement"] = _match(p, a, lambda v: (v // 100) % 10)
    f["digit_tens_agreement"] = _match(p, a, lambda v: (v // 10) % 10)
    f["digit_ones_agreement"] = _match(p, a, lambda v: v % 10)
    f["digit_agreement_sum"] = (f["digit_hundreds_agreement"] + f["digit_tens_agreement"]
                                + f["digit_ones_agreement"])
    for mod in MODS:
        kl = _kl(p, a, mod)
        f[f"residue_{mod}_match_rate"] = _match(p, a, lambda v, mod=mod: v % mod)
        f[f"residue_{mod}_kl_divergence"] = kl
        f[f"residue_{mod}_coherence"] = 1.0 / (1.0 + kl)
    w = min(WINDOW, n)
    rates = []
    for k in range(N_WINDOWS):
        s = k * (n - w) // (N_WINDOWS - 1)
        rates.append(sum(1 for i in range(s, s + w) if p[i] == a[i]) / w)
    f["temporal_mean"] = _mean(rates)
    f["temporal_std"] = _pstd(rates)
    f["temporal_min"] = min(rates)
    f["temporal_max"] = max(rates)
    ks = [k - (N_WINDOWS - 1) / 2 for k in range(N_WINDOWS)]
    f["temporal_slope"] = sum(k * v for k, v in zip(ks, rates, strict=True)) / sum(k * k for k in ks)
    mu = _mean(p)
    x = [v - mu for v in p]
    ss = sum(v * v for v in x)
    spec = np.abs(np.fft.rfft(np.array(x, dtype=np.float64)))[1:]
    f["fft_peak_magnitude"] = float(spec.max()) / n if spec.size else 0.0
    for k in range(1, N_LAGS + 1):
        ok = ss > 0 and k < n
        f[f"autocorr_lag_{k}"] = sum(x[t] * x[t + k] for t in range(n - k)) / ss if ok else 0.0
    run = 0.0
    peak = 0.0
    exc = 0.0
    for v in x:
        run += v
        peak = max(peak, abs(run))
        exc += abs(run)
    f["cusum_max"] = peak / math.sqrt(ss) if ss > 0 else 0.0
    f["cusum_mean_excursion"] = exc / n / math.sqrt(ss) if ss > 0 else 0.0
    expected = sum(bin(v).count("1") for v in range(m)) / m
    f["popcount_bias"] = sum(bin(v).count("1") for v in p) / n - expected
    return f


def reference_holdout(ph: Sequence[int], h: Sequence[int], m: int) -> dict[str, float]:
    """Holdout features of one seed: ph = its draws len(train).. (mod m), h = holdout."""
    h = [v % m for v in h]
    hits = _match(ph, h, lambda v: v)
    lanes = (_match(ph, h, lambda v: v % 8) + _match(ph, h, lambda v: v % 125)) / 2
    coh = _mean([1.0 / (1.0 + _kl(ph, h, mod)) for mod in MODS])
    return {"holdout_hits": hits, "holdout_lane_consistency": lanes, "holdout_coherence": coh,
            "holdout_quality": (hits + lanes + coh) / 3}


def reference_score_seed(family, seed: int, skip: int, train: Sequence[int],
                         holdout: Sequence[int], m: int) -> dict[str, float]:
    """All features of one seed from the family's scalar reference draws.

    Holdout draw j is stream draw len(train) + j (i8): one stream of n + nh draws.
    """
    n = len(train)
    stream = family.reference_draws(seed, n + len(holdout), m, skip=skip)
    out = reference_features(stream[:n], train, m)
    out.update(reference_holdout(stream[n:], holdout, m))
    return out
