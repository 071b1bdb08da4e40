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
    "score",
    "exact_matches",
    "total_predictions",
    "confidence",
    "pred_mean",
    "pred_std",
    "pred_min",
    "pred_max",
    "actual_mean",
    "actual_std",
    "residual_mean",
    "residual_std",
    "residual_abs_mean",
    "residual_max_abs",
    "lane_agreement_8",
    "lane_agreement_125",
    "lane_consistency",
    "digit_hundreds_agreement",
    "digit_tens_agreement",
    "digit_ones_agreement",
    "digit_agreement_sum",
    *(f"residue_{mod}_{kind}" for mod in MODS for kind in ("match_rate", "kl_divergence", "coherence")),
    "temporal_mean",
    "temporal_std",
    "temporal_min",
    "temporal_max",
    "temporal_slope",
    "fft_peak_magnitude",
    *(f"autocorr_lag_{k}" for k in range(1, N_LAGS + 1)),
    "cusum_max",
    "cusum_mean_excursion",
    "popcount_bias",
)
HOLDOUT_FEATURES: tuple[str, ...] = (
    "holdout_hits",
    "holdout_lane_consistency",
    "holdout_coherence",
    "holdout_quality",
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
    return History(
        a=a,
        m=m,
        n=n,
        mean=mean,
        std=std,
        centered=centered,
        mod_probs=mod_probs,
        residues=residues,
        digits=digits,
    )


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


# ---------------------------------------------------------------- fast path (m <= 2^14)
#
# For int16 draws every sum below is an integer that float64 (or int32/int64) holds exactly,
# so the features do not depend on the summation order: pred/residual statistics come from
# exact integer sums (the value histogram, one BLAS product with the history), the 10
# autocorrelation lags from the FFT that fft_peak_magnitude needs anyway (power spectrum x a
# cosine table, then the circular wrap-around removed), and the cusum from an exact int32
# prefix sum. Only the FFT-derived features and the float64 formulas round (no float32:
# NumPy's float32 rfft is slower than its float64 one on the CPUs measured, and nothing else
# needs it). Passes over seeds x draws: ~14 elementwise int16 ops (remainders as
# p - d * (p // d): NumPy divides integers by a scalar with SIMD, its `%` is a scalar
# division), 6 compares counted 8 bytes at a time, a bincount per seed, then the float work
# LAG_BLOCK seeds at a time in L2-sized buffers (conversion, centring, FFT, |X|, int32 cumsum
# and 3 float64 passes for the cusum). The general path makes ~45 full passes, ten of them
# dot products for the lags. Stated tolerance against the float64 formulation:
# tests/unit/test_scoring_features.py (FAST_RTOL / FAST_ATOL).


# Seeds per block of the float work. Also the row count of every BLAS product there: BLAS picks
# its kernel by the matrix shape, so a fixed shape keeps each seed's bits independent of its batch.
LAG_BLOCK = 8


def _fast_path(p: np.ndarray, m: int) -> bool:
    """int16 draws whose per-seed sums fit the exact integer formulations used below."""
    n = p.shape[1]
    return p.dtype == np.int16 and m <= 2**14 and n * m < 2**31 and n >= 1


class _Workspace:
    """Buffers kept between sub-batches (and shared by the train and holdout features), so no
    batch faults in and zeroes fresh multi-MB arrays: the compare mask and three int16
    temporaries for the whole sub-batch (7 bytes per seed-draw), and one block of LAG_BLOCK
    rows for the float work (the float series, spectra, prefix sums: 32 bytes per draw of a
    row). Flat buffers, viewed as C-contiguous arrays of any shape that fits."""

    def __init__(self, rows: int, cells: int, cols: int) -> None:
        self.rows, self.cells, self.cols = rows, cells, cols  # b <= rows, b * n <= cells, n <= cols
        self.mask = np.zeros(cells + 8 * rows, dtype=np.bool_)  # rows padded to whole words
        self.small = np.empty(3 * cells, dtype=np.int16)
        self.wide = np.empty(LAG_BLOCK * cols, dtype=np.float64)  # the float series
        self.spec = np.empty(LAG_BLOCK * (cols // 2 + 1), dtype=np.complex128)
        self.power = np.zeros(LAG_BLOCK * (cols // 2 + 1), dtype=np.float64)
        self.csum = np.empty(LAG_BLOCK * cols, dtype=np.int32)

    def view(self, name: str, b: int, n: int) -> np.ndarray:
        return getattr(self, name)[: b * n].reshape(b, n)

    def i16(self, k: int, b: int, n: int) -> np.ndarray:
        return self.small[k * b * n : (k + 1) * b * n].reshape(b, n)


_WORKSPACE: list[_Workspace] = []


def _workspace(b: int, n: int) -> _Workspace:
    """The shared buffers, grown when a sub-batch needs more."""
    ws = _WORKSPACE[0] if _WORKSPACE else None
    if ws is None or ws.rows < b or ws.cells < b * n or ws.cols < n:
        rows, cells, cols = (ws.rows, ws.cells, ws.cols) if ws is not None else (0, 0, 0)
        del ws
        _WORKSPACE.clear()  # free the old buffers before the new ones are allocated
        _WORKSPACE.append(_Workspace(max(b, rows), max(b * n, cells), max(n, cols)))
    return _WORKSPACE[0]


class _RowCounter:
    """Counts True per row of a [B, n] mask, 8 bytes at a time: the mask lives in a zero-padded
    buffer whose rows are whole uint64 words (np.count_nonzero along rows is ~5x slower)."""

    def __init__(self, ws: _Workspace, b: int, n: int) -> None:
        self.n = n
        self.buf = ws.view("mask", b, -(-n // 8) * 8)
        self.buf[:, n:] = False  # the padding of each row (the buffer is shared)
        self.mask = self.buf[:, :n]

    def count(self, mask: np.ndarray) -> np.ndarray:
        assert mask is self.mask  # written with out=self.mask: the padded buffer is counted
        return np.bitwise_count(self.buf.view(np.uint64)).sum(axis=1, dtype=np.int64)

    def rate(self, mask: np.ndarray) -> np.ndarray:
        return self.count(mask) / self.n


def _remainder(p: np.ndarray, mod: int, out: np.ndarray) -> np.ndarray:
    """p % mod for p >= 0 as p - mod * (p // mod): NumPy's integer floor_divide by a scalar is
    vectorised (libdivide), its remainder is a scalar division per element. `out` must not be p."""
    np.floor_divide(p, mod, out=out)
    np.multiply(out, mod, out=out)
    return np.subtract(p, out, out=out)


def _value_histogram(p: np.ndarray, m: int) -> np.ndarray:
    """[B, m] int64 counts of each value per seed (a bincount per row: as fast as one bincount
    over offset indices, without their 8 bytes per seed-draw)."""
    full = np.empty((p.shape[0], m), dtype=np.int64)
    for i, row in enumerate(p):
        full[i] = np.bincount(row, minlength=m)
    return full


def _fold_histograms(full: np.ndarray, m: int) -> dict[int, np.ndarray]:
    """Counts of p % mod per mod (float64 [B, mod]) from the value histogram: bins padded with
    zeros to a multiple of mod and summed by a reshape (values q*mod + r)."""
    b = full.shape[0]
    out: dict[int, np.ndarray] = {}
    for mod in MODS:
        width = -(-m // mod) * mod
        if width == m:
            padded = full
        else:
            padded = np.zeros((b, width), dtype=full.dtype)
            padded[:, :m] = full
        out[mod] = padded.reshape(b, width // mod, mod).sum(axis=1).astype(np.float64)
    return out


@functools.lru_cache(maxsize=8)
def _value_tables(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per value 0..m-1: v, v^2, popcount(v) (int64), for sums from the value histogram."""
    v = np.arange(m, dtype=np.int64)
    return v, v * v, np.bitwise_count(v).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _lag_table(n: int) -> np.ndarray:
    """[n//2 + 1, N_LAGS] weights: circular autocorrelation at lag k of a centred series =
    power spectrum (rfft bins, bin 0 left out) @ this table."""
    f = np.arange(n // 2 + 1, dtype=np.float64)
    w = np.full(f.size, 2.0)
    w[0] = 0.0
    if n % 2 == 0:
        w[-1] = 1.0
    k = np.arange(1, N_LAGS + 1, dtype=np.float64)
    return w[:, None] * np.cos(2.0 * np.pi * np.outer(f, k) / n) / n


def _train_features_small(p: np.ndarray, h: History) -> np.ndarray:
    b, n = p.shape
    m = h.m
    out = np.empty((b, len(TRAIN_FEATURES)), dtype=np.float64)

    def put(name: str, value: np.ndarray | float) -> None:
        out[:, COL[name]] = value

    ws = _workspace(b, n)
    counter = _RowCounter(ws, b, n)
    mask = counter.mask
    tmp, tmp2 = ws.i16(0, b, n), ws.i16(1, b, n)

    # exact matches and the temporal windows
    np.equal(p, h.a, out=mask)
    matches = counter.count(mask)
    rate = matches / n
    put("score", 100.0 * rate)
    put("exact_matches", matches)
    put("total_predictions", n)
    put("confidence", np.maximum(rate, CONFIDENCE_FLOOR))
    w, starts = window_starts(n)
    win = np.stack([np.count_nonzero(mask[:, s : s + w], axis=1) / w for s in starts], axis=1)
    put("temporal_mean", win.mean(axis=1))
    put("temporal_std", win.std(axis=1))
    put("temporal_min", win.min(axis=1))
    put("temporal_max", win.max(axis=1))
    ks = np.arange(N_WINDOWS) - (N_WINDOWS - 1) / 2
    put("temporal_slope", win @ ks / float(ks @ ks))

    # lanes and digits (p >= 0: remainders from vectorised floor divisions)
    lane8 = counter.rate(np.equal(np.bitwise_and(p, 7, out=tmp), h.residues[8], out=mask))
    lane125 = counter.rate(np.equal(_remainder(p, 125, tmp), h.residues[125], out=mask))
    put("lane_agreement_8", lane8)
    put("lane_agreement_125", lane125)
    put("lane_consistency", (lane8 + lane125) / 2.0)
    q10 = np.floor_divide(p, 10, out=tmp)  # p // 10
    ones = np.subtract(p, np.multiply(q10, 10, out=tmp2), out=tmp2)
    ones = counter.rate(np.equal(ones, h.digits[2], out=mask))
    q100 = np.floor_divide(p, 100, out=tmp2)  # p // 100
    if m > 1000:  # (p // 100) % 10
        hundreds = counter.rate(np.equal(_remainder(q100, 10, ws.i16(2, b, n)), h.digits[0], out=mask))
    else:
        hundreds = counter.rate(np.equal(q100, h.digits[0], out=mask))
    tens = np.subtract(q10, np.multiply(q100, 10, out=tmp2), out=tmp)  # (p // 10) % 10
    tens = counter.rate(np.equal(tens, h.digits[1], out=mask))
    put("digit_hundreds_agreement", hundreds)
    put("digit_tens_agreement", tens)
    put("digit_ones_agreement", ones)
    put("digit_agreement_sum", hundreds + tens + ones)

    # residuals |p - a| (int16 holds the differences for m <= 2^14; the sums fit int32)
    absr = np.abs(np.subtract(p, h.a, out=tmp), out=tmp)
    put("residual_abs_mean", absr.sum(axis=1, dtype=np.int32) / n)
    put("residual_max_abs", absr.max(axis=1))

    # the value histogram: pred stats, popcount and the residue histograms
    full = _value_histogram(p, m)
    vals, squares, pops = _value_tables(m)
    s1 = full @ vals  # sum p, exact
    s2 = full @ squares  # sum p^2, exact
    seen = full > 0
    put("pred_min", seen.argmax(axis=1))
    put("pred_max", m - 1 - seen[:, ::-1].argmax(axis=1))
    del seen
    put("popcount_bias", (full @ pops) / n - expected_popcount(m))
    pmean = s1 / n
    ssn = n * s2 - s1 * s1  # n * sum (p - mean)^2, exact in int64 (n * m < 2^31)
    ss = ssn / n
    put("pred_mean", pmean)
    put("pred_std", np.sqrt(ss / n))
    put("actual_mean", h.mean)
    put("actual_std", h.std)
    put("residual_mean", pmean - h.mean)
    for mod, counts in _fold_histograms(full, m).items():
        if mod >= m:
            match = rate  # p % mod == p
        elif mod == 8:
            match = lane8
        elif mod == 125:
            match = lane125
        else:
            match = counter.rate(np.equal(_remainder(p, mod, tmp), h.residues[mod], out=mask))
        kl, coh = _kl_coherence(counts, n, h.mod_probs[mod])
        put(f"residue_{mod}_match_rate", match)
        put(f"residue_{mod}_kl_divergence", kl)
        put(f"residue_{mod}_coherence", coh)
    del full

    # float64 work, LAG_BLOCK seeds at a time (their buffers stay in the L2 cache): sum p*a
    # exactly (integers < 2^53 in any order), the centred series' spectrum (the peak, and the
    # lags by Wiener-Khinchin), and the cusum from exact int32 prefix sums
    lags = min(N_LAGS, n - 1)
    nf = n // 2 + 1
    table = _lag_table(n)
    a64 = h.a.astype(np.float64)
    t1 = np.arange(1, n + 1, dtype=np.float64)
    spa, peak, cmax, cexc = (np.empty(b) for _ in range(4))
    lin = np.zeros((b, N_LAGS))
    power = ws.view("power", LAG_BLOCK, nf)  # a fixed LAG_BLOCK-row shape for BLAS (see _rows_matmul)
    for i in range(0, b, LAG_BLOCK):
        rows = min(LAG_BLOCK, b - i)
        sl = slice(i, i + rows)
        x = ws.view("wide", rows, n)
        x[...] = p[sl]
        spa[sl] = x @ a64
        x -= pmean[sl, None]
        spec = np.fft.rfft(x, axis=1, out=ws.view("spec", rows, nf))
        np.abs(spec, out=power[:rows])
        power[rows:] = 0.0
        peak[sl] = power[:rows, 1:].max(axis=1) if nf > 1 else 0.0
        np.square(power, out=power)
        circ = (power @ table)[:rows]  # circular autocorrelation, lags 1..N_LAGS
        for k in range(1, lags + 1):  # linear = circular minus the k wrapped products x[n-k+t] * x[t]
            lin[sl, k - 1] = circ[:, k - 1] - np.einsum("ij,ij->i", x[:, n - k :], x[:, :k])
        csum = np.cumsum(p[sl], axis=1, dtype=np.int32, out=ws.view("csum", rows, n))
        np.multiply(pmean[sl, None], t1, out=x)
        np.subtract(csum, x, out=x)
        np.abs(x, out=x)
        cmax[sl] = x.max(axis=1)
        cexc[sl] = x.sum(axis=1)
    a_sum = int(h.a.sum(dtype=np.int64))
    d1 = s1 - a_sum  # sum (p - a)
    d2 = s2 - 2 * np.rint(spa).astype(np.int64) + int(np.dot(h.a.astype(np.int64), h.a.astype(np.int64)))
    put("residual_std", np.sqrt(np.maximum((n * d2 - d1 * d1) / float(n * n), 0.0)))
    put("fft_peak_magnitude", peak / n)
    ok = ssn > 0
    safe_ss = np.where(ok, ss, 1.0)
    for k in range(1, N_LAGS + 1):
        put(f"autocorr_lag_{k}", np.where(ok, lin[:, k - 1] / safe_ss, 0.0))
    norm = np.sqrt(safe_ss)
    put("cusum_max", np.where(ok, cmax / norm, 0.0))
    put("cusum_mean_excursion", np.where(ok, cexc / n / norm, 0.0))
    return out


def train_features(p: np.ndarray, h: History) -> np.ndarray:
    """All train features for a batch: p [B, n] (draw dtype, values in [0, m)) -> [B, F]."""
    b, n = p.shape
    if n != h.n:
        raise ValueError(f"predicted draws have {n} columns, history has {h.n}")
    if _fast_path(p, h.m):
        return _train_features_small(p, h)
    return _train_features_general(p, h)


def _train_features_general(p: np.ndarray, h: History) -> np.ndarray:
    """Any modulus (int32/int64 draws): the float64 formulation, one feature group at a time."""
    b, n = p.shape
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
    win = np.stack([np.count_nonzero(eq[:, s : s + w], axis=1) / w for s in starts], axis=1)
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
    if _fast_path(ph, h.m):
        ws = _workspace(b, nh)
        counter = _RowCounter(ws, b, nh)
        tmp = ws.i16(0, b, nh)
        hits = counter.rate(np.equal(ph, h.a, out=counter.mask))
        lane8 = counter.rate(np.equal(np.bitwise_and(ph, 7, out=tmp), h.residues[8], out=counter.mask))
        lane125 = counter.rate(np.equal(_remainder(ph, 125, tmp), h.residues[125], out=counter.mask))
        lanes = (lane8 + lane125) / 2.0
        hists = _fold_histograms(_value_histogram(ph, h.m), h.m)
    else:
        hits = _rate(ph == h.a)
        lanes = (_rate((ph & 7) == h.residues[8]) + _rate((ph % 125) == h.residues[125])) / 2.0
        hists = _mod_histograms(ph, h.m)
    coh = np.mean([_kl_coherence(hists[mod], nh, h.mod_probs[mod])[1] for mod in MODS], axis=0)
    out[:, HCOL["holdout_hits"]] = hits
    out[:, HCOL["holdout_lane_consistency"]] = lanes
    out[:, HCOL["holdout_coherence"]] = coh
    out[:, HCOL["holdout_quality"]] = (hits + lanes + coh) / 3.0
    return out
