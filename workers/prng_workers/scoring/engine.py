"""Scoring a chunk in bounded memory: seeds are processed in sub-batches.

A sub-batch of B seeds needs the draws [B, n + nh] (int64 from the family) and the
feature temporaries (int16 draws, float64 centred series, FFT, cusum). B is chosen so
that B * (n + nh) * bytes_per_seed_draw stays under a memory budget, so a worker's peak
RSS does not grow with the chunk size, only (slowly) with the history length. The torch
backend makes the draws itself, on its device (`torch_draws`: int16 for m <= 2^15, straight
into a device tensor), and on a GPU sizes B from the device's free memory.

Holdout draw j is draw len(train) + j of the same stream (i8): one call to
`family.draws(seeds, n + nh, ...)` and a split at column n. (With skip s that is raw
generator step offset len(train) * (s + 1): the stream continues, it does not restart.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from prng_workers.errors import InputError
from prng_workers.scoring import features

# Working bytes per seed-draw of one sub-batch (int64 draws + feature temporaries),
# an estimate used only to size sub-batches; real peaks are measured by prng-memory-model.
BYTES_PER_SEED_DRAW = {"numpy": 48, "torch": 72}
DEFAULT_BUDGET_MB = 64
DEVICE_MEMORY_SHARE = 0.5  # torch on a GPU: the part of the free device memory one sub-batch may use


class Backend(Protocol):
    name: str
    device: str
    device_name: str

    def prepare(self, train: features.History, holdout: features.History) -> None: ...

    def score(self, draws: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...


class NumpyBackend:
    name = "numpy"
    device = "cpu"
    device_name = "cpu"

    def prepare(self, train: features.History, holdout: features.History) -> None:
        self.train, self.holdout = train, holdout
        self.dtype = features.draw_dtype(train.m)

    def score(self, draws: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = draws[:, :n].astype(self.dtype)
        ph = draws[:, n:].astype(self.dtype)
        return features.train_features(p, self.train), features.holdout_features(ph, self.holdout)


class TorchBackend:
    name = "torch"

    def __init__(self, device: str, threads: int | None = 1) -> None:
        from prng_workers.scoring import torch_backend  # lazy: torch only when asked (i7)

        self.tb = torch_backend
        self.dev = torch_backend.resolve_device(device)
        if self.dev.type == "cpu" and threads:
            # one worker per slot: the slots are the parallelism; more intra-op threads
            # than cores made torch 4x slower on the 2-core machine under load
            torch_backend.torch.set_num_threads(threads)
        self.device = str(self.dev)
        self.device_name = torch_backend.device_name(self.dev)

    def prepare(self, train: features.History, holdout: features.History) -> None:
        self.train = self.tb.to_torch(train, self.dev)
        self.holdout = self.tb.to_torch(holdout, self.dev)

    def score(self, draws: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        return self.score_draws(torch.from_numpy(draws).to(self.dev), n)

    def device_draws(
        self, family: Any, seeds: np.ndarray, skips: np.ndarray, count: int, m: int, offset: int = 0
    ) -> Any:
        """A sub-batch's draws made on the device by torch ops (`torch_draws`), int16 for m <= 2^15."""
        from prng_workers.scoring import torch_draws

        return torch_draws.draws(family.name, seeds, count, m, skips, offset, self.dev)

    def score_draws(self, t: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        f = self.tb.train_features(t[:, :n], self.train)
        g = self.tb.holdout_features(t[:, n:], self.holdout)
        return f.cpu().numpy(), g.cpu().numpy()

    def device_batch_seeds(self, n_draws: int) -> int | None:
        """On a GPU: seeds per sub-batch from the device's free memory (half of it, at
        BYTES_PER_SEED_DRAW["torch"] per seed-draw); None on the CPU (the memory budget rules)."""
        if self.dev.type == "cpu":
            return None
        free, _total = self.tb.torch.cuda.mem_get_info(self.dev)
        return max(1, int(free * DEVICE_MEMORY_SHARE // (BYTES_PER_SEED_DRAW["torch"] * max(1, n_draws))))


def visible_devices() -> str | None:
    """The GPU binding of this process (CUDA_VISIBLE_DEVICES, else HIP_VISIBLE_DEVICES)."""
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is not None:
            return value
    return None


def bound_to_gpu() -> bool:
    value = visible_devices()
    return value is not None and value.strip() not in ("", "-1", "NoDevFiles")


def make_backend(backend: str, device: str | None, threads: int | None = 1) -> Backend:
    """Pick the backend. `auto` = torch on the bound GPU when a GPU is bound to this
    process (visible-devices variable set), else NumPy; torch is not imported otherwise.
    `torch` without a device: `cuda` when bound to a GPU, else `cpu`.
    A GPU that was asked for (explicitly or by binding) and is absent is an error (i2)."""
    if backend == "auto":
        if device is not None and device != "cpu":
            backend = "torch"
        elif device is None and bound_to_gpu():
            backend, device = "torch", "cuda"
        else:
            backend = "numpy" if device in (None, "cpu") else "torch"
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise InputError(f"the numpy backend runs on the CPU only, not on {device!r}")
        return NumpyBackend()
    if backend == "torch":
        # no --device: the bound GPU if there is a binding, else the CPU
        return TorchBackend(device or ("cuda" if bound_to_gpu() else "cpu"), threads)
    raise InputError(f"unknown backend {backend!r} (auto, numpy or torch)")


def batch_size(backend: str | Backend, n_draws: int, budget_mb: float, override: int | None = None) -> int:
    """Seeds per sub-batch: `override`, else from the GPU's free memory (torch on a GPU), else
    from the host memory budget. `backend` is a Backend or its name."""
    if override is not None:
        if override < 1:
            raise InputError("--batch-seeds must be >= 1")
        return override
    on_device = getattr(backend, "device_batch_seeds", None)
    if on_device is not None and (b := on_device(n_draws)) is not None:
        return b
    name = backend if isinstance(backend, str) else backend.name
    return max(1, int(budget_mb * 2**20 // (BYTES_PER_SEED_DRAW[name] * max(1, n_draws))))


@dataclass
class ChunkScores:
    train: np.ndarray  # [N, len(TRAIN_FEATURES)] float64
    holdout: np.ndarray  # [N, len(HOLDOUT_FEATURES)] float64
    batch_seeds: int


def score_chunk(
    family: Any,
    seeds: np.ndarray,
    skips: np.ndarray,
    train: np.ndarray,
    holdout: np.ndarray,
    m: int,
    backend: Backend,
    batch_seeds: int,
    offset: int = 0,
) -> ChunkScores:
    """Features of every seed of a chunk, B seeds at a time. `offset`: the generator calls
    consumed before train draw 0 (the sieve's offset; the caller drops the history draws
    before it), so draw i is call offset + (i+1)(skip+1), as in Step 1."""
    n, nh = int(train.size), int(holdout.size)
    htrain = features.prepare_history(train, m)
    hhold = features.prepare_history(holdout, m)
    backend.prepare(htrain, hhold)
    count = int(seeds.size)
    out_f = np.empty((count, len(features.TRAIN_FEATURES)), dtype=np.float64)
    out_h = np.empty((count, len(features.HOLDOUT_FEATURES)), dtype=np.float64)
    on_device = getattr(backend, "device_draws", None)  # torch: the draws are made on its device
    for lo in range(0, count, batch_seeds):
        hi = min(count, lo + batch_seeds)
        if on_device is not None:
            t = on_device(family, seeds[lo:hi], skips[lo:hi], n + nh, m, offset)
            out_f[lo:hi], out_h[lo:hi] = backend.score_draws(t, n)
            del t
            continue
        draws = family.draws(seeds[lo:hi], n + nh, m, skip=skips[lo:hi], offset=offset)
        out_f[lo:hi], out_h[lo:hi] = backend.score(draws, n)
        del draws
    return ChunkScores(out_f, out_h, batch_seeds)
