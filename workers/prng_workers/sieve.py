"""The constant-skip seed sieve (spec §3, §4).

For each seed in [seed_start, seed_end) and each skip s in [skip_min, skip_max], draw i
(i = 0..k-1) is the output of generator call offset + (i+1)(s+1), mod m, compared with the
window's residue r_i. rate(s) = matches / k; the best skip is the one with most matches
(ties: the smallest s); the seed survives if best rate >= threshold.

Directions (docs/sieve.md):
- `forward`: r = the k residues of the chosen sessions starting at index `offset`
  (oldest first).
- `bidirectional`: the forward pass, then every forward survivor is checked from the
  newest end of the history: its generator runs to the call of the newest draw and walks
  back (LCG families step back with the modular inverse, the others regenerate) over the
  `reverse_window` newest draws, which lie after the forward window, at the forward best
  skip. The seed stays if that reverse rate also reaches the threshold. A true seed passes
  both at 1.0; a random seed passes the check with P[Bin(k_r, 1/m) >= need_r], independently
  of the forward pass (`bidirectional_survival_probability`).
- `reversed_window` (old name `reverse`): compatibility mode of the replaced system: the
  SAME forward generator compared with the window in reversed order (newest first). It
  does not invert the PRNG; a seed planted forward normally fails it.
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

DIRECTIONS = ("forward", "bidirectional", "reversed_window")
#: old names still accepted (and recorded under the new one)
DIRECTION_ALIASES = {"reverse": "reversed_window"}
BACKENDS = ("auto", "numpy", "cpu", "gpu")
MAX_SEED = 1 << 64
# seeds per compiled-kernel call: the kernels return only survivors, so a call is sized by the
# survivors it may hold (CPU_SURVIVORS at the expected rate), between 2^20 and 2^26 seeds
CPU_CHUNK_MIN, CPU_CHUNK_MAX, CPU_SURVIVORS = 1 << 20, 1 << 26, 1 << 20
REVERSE_CHUNK = 1 << 12  # seeds per reverse-check call (mt19937 keeps 2.5 kB of state per seed)


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
    #: bidirectional: the `reverse_window` newest residues, newest first
    reverse_residues: np.ndarray | None = None
    #: bidirectional: draws of the chosen sessions in the history (the newest is call
    #: offset + (n_draws - offset)(s+1) at skip s)
    n_draws: int = 0

    @property
    def window(self) -> int:
        return int(self.residues.shape[0])

    @property
    def reverse_window(self) -> int:
        return 0 if self.reverse_residues is None else int(self.reverse_residues.shape[0])

    @property
    def reverse_need(self) -> int:
        """Reverse matches needed: the same threshold over the reverse window."""
        return max(1, math.ceil(round(self.threshold * self.reverse_window, 9)))

    @property
    def need(self) -> int:
        """Smallest match count whose rate reaches the threshold (integer compare everywhere)."""
        return max(1, math.ceil(round(self.threshold * self.window, 9)))

    @property
    def n_skips(self) -> int:
        return self.skip_max - self.skip_min + 1

    def params(self) -> dict[str, Any]:
        out = {
            "family": self.family,
            "direction": self.direction,
            "window": self.window,
            "offset": self.offset,
            "skip_min": self.skip_min,
            "skip_max": self.skip_max,
            "threshold": self.threshold,
            "mod": self.m,
            "sessions": self.sessions,
            "seed_start": self.seed_start,
            "seed_end": self.seed_end,
        }
        if self.direction == "bidirectional":
            out["reverse_window"] = self.reverse_window
        return out


def make_job(
    family: str,
    history: list[dict[str, Any]],
    *,
    window: int,
    offset: int = 0,
    skip_min: int = 0,
    skip_max: int = 0,
    threshold: float = 0.01,
    m: int = 1000,
    sessions: str = "both",
    seed_start: int = 0,
    seed_end: int = 0,
    direction: str = "forward",
    reverse_window: int = 0,
) -> SieveJob:
    """Validate the parameters (InputError, one line each) and cut the window(s).

    `reverse_window` (bidirectional only): how many of the newest draws the reverse check
    compares; 0 = as many as the forward window, or all the draws after it if fewer."""
    fam = get_family(family)
    direction = DIRECTION_ALIASES.get(direction, direction)
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
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
        raise InputError(
            f"window {window} at offset {offset} is longer than the history "
            f"({allr.shape[0]} draws for sessions {sess})"
        )
    r = allr[offset : offset + window].copy()
    if direction == "reversed_window":
        r = r[::-1].copy()
    rev = None
    n = int(allr.shape[0])
    if direction == "bidirectional":
        rev = allr[reverse_slice(n, window, offset, reverse_window, sess)][::-1].copy()
    elif reverse_window:
        raise InputError(f"reverse_window applies to direction bidirectional, not {direction}")
    return SieveJob(
        family,
        r,
        m,
        offset,
        skip_min,
        skip_max,
        float(threshold),
        seed_start,
        seed_end,
        direction,
        "both" if sess == "midday,evening" else sess,
        rev,
        n,
    )


def reverse_slice(n_draws: int, window: int, offset: int, reverse_window: int, sessions: str) -> slice:
    """The reverse check's draws: the newest `reverse_window` of the history, all after the
    forward window (disjoint windows keep the two checks independent for a random seed)."""
    after = n_draws - offset - window
    if after < 1:
        raise InputError(
            f"bidirectional needs draws after the forward window: the history has {n_draws} "
            f"draws for sessions {sessions}, the window ends at {offset + window}"
        )
    if reverse_window < 0 or reverse_window > after:
        raise InputError(
            f"reverse_window must be in [0, {after}] (the draws after the forward window; "
            f"0 = automatic), got {reverse_window}"
        )
    k_r = reverse_window or min(window, after)
    return slice(n_draws - k_r, n_draws)


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


# ---------------------------------------------------------------- bidirectional check


def reverse_counts(job: SieveJob, seeds: np.ndarray, skips: np.ndarray) -> np.ndarray:
    """Reverse matches of each seed at its own skip: its generator run to the call of the
    newest draw, compared backwards with the `reverse_window` newest residues."""
    fam = get_family(job.family)
    rr = job.reverse_residues
    if rr is None:
        raise ValueError("reverse_counts needs a bidirectional job")
    out = np.zeros(seeds.shape[0], dtype=np.int64)
    for s in np.unique(skips).tolist():
        rows = np.nonzero(skips == s)[0]
        last = job.offset + (job.n_draws - job.offset) * (int(s) + 1)
        for c0 in range(0, rows.size, REVERSE_CHUNK):
            part = rows[c0 : c0 + REVERSE_CHUNK]
            d = fam.draws_backward(seeds[part], job.reverse_window, job.m, int(s), last)
            out[part] = (d == rr[None, :]).sum(axis=1)
    return out


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
    elif chosen == "cpu":
        from prng_workers.backends import cpu

        expect = noise_survival_probability(job.window, job.need, job.m, job.n_skips)
        step = int(min(CPU_CHUNK_MAX, max(CPU_CHUNK_MIN, CPU_SURVIVORS / max(expect, 1e-12))))

        def fn(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            j = job
            return cpu.sieve_survivors(
                j.family, a, b, j.residues, j.m, j.offset, j.skip_min, j.skip_max, j.need, expect=expect
            )
    else:
        step = 1 << 20

        def fn(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            best_cnt, best_skip = numpy_sieve_range(job, a, b)
            hit = np.nonzero(best_cnt >= job.need)[0]
            return hit, best_cnt[hit], best_skip[hit]

    def scan():  # (seeds, matches, best skip) of each chunk's survivors
        for a in range(job.seed_start, job.seed_end, step):
            hit, cnt, skip = fn(a, min(job.seed_end, a + step))
            yield hit.astype(np.uint64) + np.uint64(a), cnt.astype(np.int64), skip.astype(np.int64)

    # the GPU compacts the survivors on the device: only they come back
    for hit_seeds, hit_cnt, hit_skip in (
        runner.survivor_chunks(job.seed_start, job.seed_end) if chosen == "gpu" else scan()
    ):
        if hit_seeds.size:
            seeds_parts.append(hit_seeds)
            cnt_parts.append(hit_cnt)
            skip_parts.append(hit_skip)
    seeds = np.concatenate(seeds_parts) if seeds_parts else np.zeros(0, dtype=np.uint64)
    matches = np.concatenate(cnt_parts) if cnt_parts else np.zeros(0, dtype=np.int64)
    skips = np.concatenate(skip_parts) if skip_parts else np.zeros(0, dtype=np.int64)
    total = np.full(seeds.shape[0], job.window, dtype=np.int64)
    extra: dict[str, Any] = {}
    if job.direction == "bidirectional":
        rev = reverse_counts(job, seeds, skips)
        keep = rev >= job.reverse_need
        extra = {
            "forward_survivors": int(seeds.shape[0]),
            "reverse_window": job.reverse_window,
            "reverse_need": job.reverse_need,
        }
        seeds, matches, skips, rev, total = seeds[keep], matches[keep], skips[keep], rev[keep], total[keep]
        fr, rr = matches / float(job.window), rev / float(job.reverse_window)
        cols = {
            "seeds": seeds,
            "forward_match_rate": fr,
            "reverse_match_rate": rr,
            "score": (fr + rr) / 2,
            "matches": matches,
            "reverse_matches": rev,
            "total": total,
            "best_skip": skips,
        }
    else:
        cols = {
            "seeds": seeds,
            "match_rate": matches / float(job.window),
            "matches": matches,
            "total": total,
            "best_skip": skips,
        }
    seconds = time.perf_counter() - t0
    if visible is None and chosen == "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("HIP_VISIBLE_DEVICES")
    return SieveResult(cols, job.seed_end - job.seed_start, seconds, chosen, device, visible, extra)


def noise_survival_probability(k: int, need: int, m: int, n_skips: int) -> float:
    """Spec §5: P(a random seed survives) = 1 - (1 - P[Bin(k, 1/m) >= need])^n_skips."""
    return 1.0 - (1.0 - binomial_tail(k, need, m)) ** n_skips


def bidirectional_survival_probability(
    k: int, need: int, m: int, n_skips: int, k_r: int, need_r: int
) -> float:
    """P(a random seed survives the bidirectional mode) on random draws: it survives the
    forward pass (spec §5) and then, at its one best skip, matches >= need_r of the k_r
    newest draws. Those draws lie outside the forward window, so for a random seed the
    check is a fresh Bin(k_r, 1/m), independent of the forward pass (docs/sieve.md)."""
    return noise_survival_probability(k, need, m, n_skips) * binomial_tail(k_r, need_r, m)


def binomial_tail(k: int, need: int, m: int) -> float:
    """P[Bin(k, 1/m) >= need]."""
    if m == 1 or need <= 0:
        return 1.0
    p = 1.0 / m
    tail = 0.0
    # sum the upper tail from `need` upward in log space (k up to a few thousand)
    for j in range(need, k + 1):
        log_term = (
            math.lgamma(k + 1)
            - math.lgamma(j + 1)
            - math.lgamma(k - j + 1)
            + j * math.log(p)
            + (k - j) * math.log1p(-p)
        )
        term = math.exp(log_term)
        tail += term
        if term < tail * 1e-17:
            break
    return min(1.0, tail)
