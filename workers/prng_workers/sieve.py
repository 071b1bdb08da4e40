"""The constant-skip seed sieve (spec §3, §4).

For each seed in [seed_start, seed_end) and each skip s in [skip_min, skip_max], draw i
(i = 0..k-1) is the output of generator call offset + (i+1)(s+1), mod m, compared with the
window's residue r_i. rate(s) = matches / k; the best skip is the one with most matches
(ties: the smallest s); the seed survives if best rate >= threshold.

Directions:
- `forward`: r = the k residues of the chosen sessions starting at index `offset`
  (oldest first).
- `reverse`: compatibility mode of the replaced system: the SAME forward generator compared
  with the same window in reversed order (newest first). It does not invert the PRNG; a
  seed planted forward normally fails it.
Bidirectional survivors (`intersect`) are seeds in both the forward and reverse results.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prng_workers.errors import InputError
from prng_workers.families import get_family
from prng_workers.formats import history_residues, parse_sessions

DIRECTIONS = ("forward", "reverse")
BACKENDS = ("auto", "numpy", "cpu", "gpu")
MAX_SEED = 1 << 64
CPU_CHUNK = 1 << 22  # seeds per compiled-kernel call: bounds the per-seed result arrays


@dataclass(frozen=True)
class SieveJob:
    family: str
    residues: np.ndarray  # the compared window, in the order of `direction`
    m: int
    offset: int
    skip_min: int
    skip_max: int
    threshold: float
    seed_start: int
    seed_end: int
    direction: str = "forward"
    sessions: str = "both"

    @property
    def window(self) -> int:
        return int(self.residues.shape[0])

    @property
    def need(self) -> int:
        """Smallest match count whose rate reaches the threshold (integer compare everywhere)."""
        return max(1, math.ceil(round(self.threshold * self.window, 9)))

    @property
    def n_skips(self) -> int:
        return self.skip_max - self.skip_min + 1

    def params(self) -> dict[str, Any]:
        return {"family": self.family, "direction": self.direction, "window": self.window,
                "offset": self.offset, "skip_min": self.skip_min, "skip_max": self.skip_max,
                "threshold": self.threshold, "mod": self.m, "sessions": self.sessions,
                "seed_start": self.seed_start, "seed_end": self.seed_end}


def make_job(family: str, history: list[dict[str, Any]], *, window: int, offset: int = 0, skip_min: int = 0,
             skip_max: int = 0, threshold: float = 0.01, m: int = 1000, sessions: str = "both",
             seed_start: int = 0, seed_end: int = 0, direction: str = "forward") -> SieveJob:
    """Validate the parameters (InputError, one line each) and cut the window."""
    fam = get_family(family)
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be forward or reverse, got {direction!r}")
    if not 1 <= m <= fam.max_mod:
        raise InputError(f"--mod must be in [1, {fam.max_mod}] for {family}, got {m}")
    if not (threshold > 0 and threshold <= 1):  # also rejects NaN
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    if offset < 0:
        raise InputError(f"offset must be >= 0, got {offset}")
    if skip_min < 0 or skip_max < skip_min:
        raise InputError(f"skip range [{skip_min}, {skip_max}] is empty or negative")
    if seed_start < 0 or seed_end > MAX_SEED:
        raise InputError(f"seed range must lie in [0, 2^64), got [{seed_start}, {seed_end})")
    if seed_end <= seed_start:
        raise InputError(f"seed range [{seed_start}, {seed_end}) is empty or inverted")
    sess = ",".join(parse_sessions(sessions))
    allr = history_residues(history, sessions, m)
    if offset + window > allr.shape[0]:
        raise InputError(f"window {window} at offset {offset} is longer than the history "
                         f"({allr.shape[0]} draws for sessions {sess})")
    r = allr[offset:offset + window].copy()
    if direction == "reverse":
        r = r[::-1].copy()
    return SieveJob(family, r, m, offset, skip_min, skip_max, float(threshold), seed_start, seed_end,
                    direction, "both" if sess == "midday,evening" else sess)


# ---------------------------------------------------------------- NumPy backend

def numpy_sieve_range(job: SieveJob, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Best match count / skip per seed, NumPy only (the reference path)."""
    fam = get_family(job.family)
    k, r = job.window, job.residues
    n = end - start
    best_cnt = np.full(n, -1, dtype=np.int32)
    best_skip = np.zeros(n, dtype=np.int32)
    p_lo = job.offset + job.skip_min
    stream_len = job.offset + k * (job.skip_max + 1) - p_lo
    # one shared stream when it is not much longer than the draws compared (and fits ~32 MB for
    # 16 seeds); else per-skip draws (jump-ahead), whose width is only k
    use_stream = stream_len <= 4 * k * job.n_skips + 1024 and stream_len <= 1 << 18
    width = stream_len if use_stream else k
    chunk = max(16, (1 << 22) // max(width, 1))
    i = np.arange(k, dtype=np.int64)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        seeds = np.arange(c1 - c0, dtype=np.uint64) + np.uint64(start + c0)
        stream = fam.draws(seeds, stream_len, job.m, 0, p_lo) if use_stream else None
        for s in range(job.skip_min, job.skip_max + 1):
            if stream is not None:
                d = stream[:, job.offset + (i + 1) * (s + 1) - 1 - p_lo]
            else:
                d = fam.draws(seeds, k, job.m, s, job.offset)
            cnt = (d == r[None, :]).sum(axis=1, dtype=np.int32)
            better = cnt > best_cnt[c0:c1]
            best_cnt[c0:c1][better] = cnt[better]
            best_skip[c0:c1][better] = s
    return best_cnt, best_skip


# ---------------------------------------------------------------- orchestration

@dataclass
class SieveResult:
    columns: dict[str, np.ndarray]
    seeds_tested: int
    seconds: float
    backend: str
    device: str
    visible_devices: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def survivors(self) -> int:
        return int(self.columns["seeds"].shape[0])


def cpu_available() -> str | None:
    """None if the Numba backend can run, else why not."""
    try:
        import numba  # noqa: F401
    except ImportError as exc:  # pragma: no cover - numba is a hard dependency
        return f"numba not importable: {exc}"
    return None


def resolve_backend(name: str) -> str:
    """auto -> gpu if a GPU is really usable, else cpu (Numba), else numpy. An explicit
    `gpu` with no usable device is an InputError (i2: never a silent CPU fallback)."""
    if name not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name in ("gpu", "auto"):
        from prng_workers.backends import gpu

        problem = gpu.unavailable_reason()
        if problem is None:
            return "gpu"
        if name == "gpu":
            raise InputError(f"--backend gpu: no usable GPU ({problem})")
        name = "auto-cpu"
    if name in ("cpu", "auto-cpu"):
        problem = cpu_available()
        if problem is None:
            return "cpu"
        if name == "cpu":
            raise InputError(f"--backend cpu: {problem}")
    return "numpy"


def run_sieve(job: SieveJob, backend: str = "auto") -> SieveResult:
    """Run the job on `backend` (resolved honestly), return survivors sorted by seed."""
    chosen = resolve_backend(backend)
    device, visible = "cpu", None
    t0 = time.perf_counter()
    seeds_parts, cnt_parts, skip_parts = [], [], []
    if chosen == "gpu":
        from prng_workers.backends import gpu

        runner = gpu.GpuSieve(job)
        device, visible = runner.device_name, runner.visible_devices
        step = runner.chunk
        fn = runner.sieve_range
    elif chosen == "cpu":
        from prng_workers.backends import cpu

        step = CPU_CHUNK

        def fn(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return cpu.sieve_range(job.family, a, b, job.residues, job.m, job.offset, job.skip_min,
                                   job.skip_max, job.need)
    else:
        step = 1 << 20

        def fn(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return numpy_sieve_range(job, a, b)

    need = job.need
    for a in range(job.seed_start, job.seed_end, step):
        b = min(job.seed_end, a + step)
        best_cnt, best_skip = fn(a, b)
        hit = np.nonzero(best_cnt >= need)[0]
        if hit.size:
            seeds_parts.append(hit.astype(np.uint64) + np.uint64(a))
            cnt_parts.append(best_cnt[hit].astype(np.int64))
            skip_parts.append(best_skip[hit].astype(np.int64))
    seconds = time.perf_counter() - t0
    seeds = np.concatenate(seeds_parts) if seeds_parts else np.zeros(0, dtype=np.uint64)
    matches = np.concatenate(cnt_parts) if cnt_parts else np.zeros(0, dtype=np.int64)
    skips = np.concatenate(skip_parts) if skip_parts else np.zeros(0, dtype=np.int64)
    cols = {"seeds": seeds, "match_rate": matches / float(job.window), "matches": matches,
            "total": np.full(seeds.shape[0], job.window, dtype=np.int64), "best_skip": skips}
    if visible is None and chosen == "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("HIP_VISIBLE_DEVICES")
    return SieveResult(cols, job.seed_end - job.seed_start, seconds, chosen, device, visible)


def noise_survival_probability(k: int, need: int, m: int, n_skips: int) -> float:
    """Spec §5: P(a random seed survives) = 1 - (1 - P[Bin(k, 1/m) >= need])^n_skips."""
    if m == 1:
        return 1.0
    p = 1.0 / m
    tail = 0.0
    # sum the upper tail from `need` upward in log space (k up to a few thousand)
    for j in range(need, k + 1):
        log_term = (math.lgamma(k + 1) - math.lgamma(j + 1) - math.lgamma(k - j + 1)
                    + j * math.log(p) + (k - j) * math.log1p(-p))
        term = math.exp(log_term)
        tail += term
        if term < tail * 1e-17:
            break
    return 1.0 - (1.0 - tail) ** n_skips

