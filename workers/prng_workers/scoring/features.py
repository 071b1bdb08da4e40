"""Step 3 features, batched over seeds: p = predicted draws [seeds, n], a = history [n].

Every feature is one column of a float64 matrix [seeds, len(TRAIN_FEATURES)], in the
order of `TRAIN_FEATURES`; the torch backend and the per-seed reference produce the same
columns. Definitions (n = train length, x = p - mean(p) per seed):

- base: score = 100 * mean(p == a), exact_matches, total_predictions = n,
  confidence = max(mean(p == a), 0.1)
- stats: pred_mean/std/min/max, actual_mean/std (population std), residual r = p - a:
  residual_mean, residual_std, residual_abs_mean, residual_max_abs
- lanes: lane_agreement_8 = mean(p%8 == a%8), lane_agreement_125, lane_consistency = their
  mean; digit_{hundreds,tens,ones}_agreement ((v//100)%10, (v//10)%10, v%10) and their sum
- residues, mod in (8, 125, 1000): match rate, KL(P || Q) of the histograms of p%mod (P)
  and a%mod (Q), both clamped at 1e-10, coherence = 1 / (1 + KL)
- temporal: match rate in 5 windows of w = min(100, n) draws starting at k*(n-w)//4,
  k = 0..4: mean, std, min, max, least-squares slope over k
- spectrum/battery on p: fft_peak_magnitude = max_{f>0} |rfft(x)_f| / n,
  autocorr_lag_k = sum_t x_t x_{t+k} / sum_t x_t^2 (k = 1..10, 0 when undefined),
  cusum_max / cusum_mean_excursion = max / mean of |cumsum(x)| divided by sqrt(sum x^2),
  popcount_bias = mean(popcount(p)) - mean popcount of the uniform values 0..m-1
Holdout (ph = the seed's draws len(train)..len(train)+nh-1, h = holdout history):
holdout_hits = mean(ph == h), holdout_lane_consistency, holdout_coherence (mean over the
three mods), holdout_quality = mean of those three, in [0, 1].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Version of the feature set below: bump it whenever a feature is added, removed, renamed or
# computed differently, so that a run's identity (and its resume) sees the change.
FEATURES_VERSION = 1

MODS = (8, 125, 1000)
N_LAGS = 10
N_WINDOWS = 5
WINDOW = 100
# Shortest histories scoring accepts: the temporal windows are WINDOW draws each (spec:
# "5 windows of 100 draws") and need them whole; the autocorrelation lags need N_LAGS + 1.
MIN_TRAIN_DRAWS = max(WINDOW, N_LAGS + 1)
MIN_HOLDOUT_DRAWS = 1
KL_EPS = 1e-10
CONFIDENCE_FLOOR = 0.1
# Full value histograms (then folded per mod) only while [seeds, m] stays small.
FULL_HIST_MAX_M = 4096

TRAIN_FEATURES: tuple[str, ...] = (
    "score", "exact_matches", "total_predictions", "confidence",
    "pred_mean", "pred_std", "pred_min", "pred_max", "actual_mean", "actual_std",
    "residual_mean", "residual_std", "residual_abs_mean", "residual_max_abs",
    "lane_agreement_8", "lane_agreement_125", "lane_consistency",
    "digit_hundreds_agreement", "digit_tens_agreement", "digit_ones_agreement",
    "digit_agreement_sum",
    *(f"residue_{mod}_{kind}" for mod in MODS for kind in ("match_rate", "kl_divergence", "coherence")),
    "temporal_mean", "temporal_std", "temporal_min", "temporal_max", "temporal_slope",
    "fft_peak_magnitude", *(f"autocorr_lag_{k}" for k in range(1, N_LAGS + 1)),
    "cusum_max", "cusum_mean_excursion", "popcount_bias",
)
HOLDOUT_FEATURES: tuple[str, ...] = (
    "holdout_hits", "holdout_lane_consistency", "holdout_coherence", "holdout_quality",
)
COL = {name: i for i, name in enumerate(TRAIN_FEATURES)}
HCOL = {name: i for i, name in enumerate(HOLDOUT_FEATURES)}


def draw_dtype(m: int) -> np.dtype:
    """Smallest signed dtype holding draws and their differences (p - a) for modulus m."""
    if m <= 2**14:
        return np.dtype(np.int16)
    if m <= 2**30:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def expected_popcount(m: int) -> float:
    """Mean popcount of 0..m-1, exact for any m (bit b is set in (m>>(b+1))<<b + rest values)."""
    total = 0
    for b in range(max(1, m.bit_length())):
        period = 1 << (b + 1)
        total += (m // period) * (1 << b) + max(0, m % period - (1 << b))
    return total / m


def window_starts(n: int) -> tuple[int, list[int]]:
    w = min(WINDOW, n)
    return w, [k * (n - w) // (N_WINDOWS - 1) for k in range(N_WINDOWS)]


@functools.lru_cache(maxsize=16)
def fold_matrix(m: int, mod: int) -> np.ndarray:
    """[m, mod] one-hot matrix: full value histogram @ fold = histogram of values % mod."""
    fold = np.zeros((m, mod), dtype=np.float64)
    fold[np.arange(m), np.arange(m) % mod] = 1.0
    return fold


@dataclass(frozen=True)
class History:
    """A draw history prepared once and shared by every sub-batch of seeds."""

    a: np.ndarray  # [n] in draw_dtype(m)
    m: int
    n: int
    mean: float
    std: float
    centered: np.ndarray  # [n] float64, a - mean
    mod_probs: dict[int, np.ndarray]  # mod -> clamped histogram probabilities of a % mod
    residues: dict[int, np.ndarray]  # mod -> a % mod (draw dtype)
    digits: tuple[np.ndarray, np.ndarray, np.ndarray]


def prepare_history(values: np.ndarray | list[int], m: int) -> History:
    a64 = np.asarray(values, dtype=np.int64)
    if a64.ndim != 1 or a64.size == 0:
        raise ValueError("a history must be a non-empty 1-D list of ints")
    a64 = a64 % m  # histories are compared as residues mod m
    a = a64.astype(draw_dtype(m))
    n = int(a.size)
    mean = float(a64.sum()) / n
    centered = a64.astype(np.float64) - mean
    std = float(np.sqrt(np.dot(centered, centered) / n))
    mod_probs = {}
    residues = {}
    for mod in MODS:
        r = a % mod
        residues[mod] = r
        mod_probs[mod] = np.maximum(np.bincount(r.astype(np.int64), minlength=mod) / n, KL_EPS)
    digits = ((a // 100) % 10, (a // 10) % 10, a % 10)
    return History(a=a, m=m, n=n, mean=mean, std=std, centered=centered,
                   mod_probs=mod_probs, residues=residues, digits=digits)


def _rate(mask: np.ndarray) -> np.ndarray:
    return np.count_nonzero(mask, axis=1) / mask.shape[1]


def _mod_histograms(p: np.ndarray, m: int) -> dict[int, np.ndarray]:
    """Per-seed counts of p % mod for each mod: [B, mod] float64."""
    b = p.shape[0]
    out: dict[int, np.ndarray] = {}
    if m <= FULL_HIST_MAX_M:
        # one bincount of the values, folded per mod by a small matrix product
        idx = p + (np.arange(b, dtype=np.int64) * m)[:, None]
        full = np.bincount(idx.ravel(), minlength=b * m).reshape(b, m).astype(np.float64)
        del idx
        for mod in MODS:
            if mod == m:
                out[mod] = full
            elif m % mod == 0:  # values q*mod + r: fold by a reshape, no BLAS call
                out[mod] = full.reshape(b, m // mod, mod).sum(axis=1)
            else:
                out[mod] = full @ fold_matrix(m, mod)
        return out
    for mod in MODS:
        idx = (p % mod) + (np.arange(b, dtype=np.int64) * mod)[:, None]
        out[mod] = np.bincount(idx.ravel(), minlength=b * mod).reshape(b, mod).astype(np.float64)
    return out


def _kl_coherence(counts: np.ndarray, n: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pc = np.maximum(counts / n, KL_EPS)
    kl = (pc * (np.log(pc) - np.log(q))).sum(axis=1)
    return kl, 1.0 / (1.0 + kl)


def train_features(p: np.ndarray, h: History) -> np.ndarray:
    """All train features for a batch: p [B, n] (draw dtype, values in [0, m)) -> [B, F]."""
    b, n = p.shape
    if n != h.n:
        raise ValueError(f"predicted draws have {n} columns, history has {h.n}")
    m = h.m
    out = np.empty((b, len(TRAIN_FEATURES)), dtype=np.float64)

    def put(name: str, value: np.ndarray | float) -> None:
        out[:, COL[name]] = value

    eq = p == h.a
    rate = _rate(eq)
    put("score", 100.0 * rate)
    put("exact_matches", np.count_nonzero(eq, axis=1))
    put("total_predictions", n)
    put("confidence", np.maximum(rate, CONFIDENCE_FLOOR))
    w, starts = window_starts(n)
    win = np.stack([np.count_nonzero(eq[:, s:s + w], axis=1) / w for s in starts], axis=1)
    del eq
    put("temporal_mean", win.mean(axis=1))
    put("temporal_std", win.std(axis=1))
    put("temporal_min", win.min(axis=1))
    put("temporal_max", win.max(axis=1))
    ks = np.arange(N_WINDOWS) - (N_WINDOWS - 1) / 2
    put("temporal_slope", win @ ks / float(ks @ ks))

    # stats: exact integer sums, then float64; x = centred p (float64) serves several groups
    pmean = p.sum(axis=1, dtype=np.int64) / n
    x = p.astype(np.float64)
    x -= pmean[:, None]
    ss = np.einsum("ij,ij->i", x, x)
    var_p = ss / n
    put("pred_mean", pmean)
    put("pred_std", np.sqrt(var_p))
    put("pred_min", p.min(axis=1))
    put("pred_max", p.max(axis=1))
    put("actual_mean", h.mean)
    put("actual_std", h.std)
    put("residual_mean", pmean - h.mean)
    absr = np.abs(p - h.a)
    put("residual_abs_mean", absr.sum(axis=1, dtype=np.int64) / n)
    put("residual_max_abs", absr.max(axis=1))
    # var(p - a) from exact integer sums (a float formula cancels when p ~ a)
    s1 = p.sum(axis=1, dtype=np.int64) - int(h.a.sum(dtype=np.int64))
    wide = np.int64 if m <= 2**14 else np.float64
    sq = absr.astype(wide)
    del absr
    sq *= sq
    s2 = sq.sum(axis=1)
    del sq
    put("residual_std", np.sqrt(np.maximum((n * s2 - s1 * s1) / float(n * n), 0.0)))

    # lanes and digits
    lane8 = _rate((p & 7) == h.residues[8])
    lane125 = _rate((p % 125) == h.residues[125])
    put("lane_agreement_8", lane8)
    put("lane_agreement_125", lane125)
    put("lane_consistency", (lane8 + lane125) / 2.0)
    ones = _rate((p % 10) == h.digits[2])
    tens = _rate(((p // 10) % 10) == h.digits[1])
    hundreds = _rate(((p // 100) % 10) == h.digits[0])
    put("digit_hundreds_agreement", hundreds)
    put("digit_tens_agreement", tens)
    put("digit_ones_agreement", ones)
    put("digit_agreement_sum", hundreds + tens + ones)

    # residue sets: match rate, KL and coherence per mod
    hists = _mod_histograms(p, m)
    for mod in MODS:
        if mod >= m:
            match = rate  # p % mod == p
        elif mod == 8:
            match = lane8
        elif mod == 125:
            match = lane125
        else:
            match = _rate((p % mod) == h.residues[mod])
        kl, coh = _kl_coherence(hists[mod], n, h.mod_probs[mod])
        put(f"residue_{mod}_match_rate", match)
        put(f"residue_{mod}_kl_divergence", kl)
        put(f"residue_{mod}_coherence", coh)
    del hists

    # spectrum / battery on p
    safe_ss = np.where(ss > 0, ss, 1.0)
    spec = np.abs(np.fft.rfft(x, axis=1)[:, 1:])
    put("fft_peak_magnitude", spec.max(axis=1) / n if spec.shape[1] else 0.0)
    del spec
    for k in range(1, N_LAGS + 1):
        ac = np.einsum("ij,ij->i", x[:, :-k], x[:, k:]) / safe_ss if k < n else np.zeros(b)
        put(f"autocorr_lag_{k}", np.where(ss > 0, ac, 0.0))
    cs = np.cumsum(x, axis=1)
    del x
    np.abs(cs, out=cs)
    norm = np.sqrt(safe_ss)
    put("cusum_max", np.where(ss > 0, cs.max(axis=1) / norm, 0.0))
    put("cusum_mean_excursion", np.where(ss > 0, cs.mean(axis=1) / norm, 0.0))
    del cs
    put("popcount_bias", np.bitwise_count(p).sum(axis=1, dtype=np.int64) / n - expected_popcount(m))
    return out


def holdout_features(ph: np.ndarray, h: History) -> np.ndarray:
    """Holdout features: ph [B, nh] = the seeds' draws after the train part -> [B, 4]."""
    b, nh = ph.shape
    if nh != h.n:
        raise ValueError(f"holdout draws have {nh} columns, holdout history has {h.n}")
    out = np.empty((b, len(HOLDOUT_FEATURES)), dtype=np.float64)
    hits = _rate(ph == h.a)
    lanes = (_rate((ph & 7) == h.residues[8]) + _rate((ph % 125) == h.residues[125])) / 2.0
    hists = _mod_histograms(ph, h.m)
    coh = np.mean([_kl_coherence(hists[mod], nh, h.mod_probs[mod])[1] for mod in MODS], axis=0)
    out[:, HCOL["holdout_hits"]] = hits
    out[:, HCOL["holdout_lane_consistency"]] = lanes
    out[:, HCOL["holdout_coherence"]] = coh
    out[:, HCOL["holdout_quality"]] = (hits + lanes + coh) / 3.0
    return out
