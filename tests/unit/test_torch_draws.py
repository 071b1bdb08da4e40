"""Step 3 draws made by torch ops on the scoring device (`scoring.torch_draws`), checked against
the families' NumPy draws with torch on the CPU: the same code path as on a GPU (`device=cpu`).
On a GPU (marked `gpu`) the same comparison runs on `cuda`."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from prng_workers.families import FAMILY_NAMES, get_family  # noqa: E402
from prng_workers.scoring import engine, features, torch_draws  # noqa: E402

EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**48 - 1, 2**48, 2**63, 2**64 - 1]


def _seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    rand = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    return np.concatenate([rand, np.array(EDGE_SEEDS, dtype=np.uint64)])


def _check(family: str, m: int, count: int, offset: int, max_skip: int, device: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    seeds = _seeds(rng, 24)
    skips = rng.integers(0, max_skip + 1, seeds.size)
    got = torch_draws.draws(family, seeds, count, m, skips, offset, device)
    assert got.device.type == torch.device(device).type and got.dtype == torch_draws.draw_dtype(m)
    want = get_family(family).draws(seeds, count, m, skips, offset)
    np.testing.assert_array_equal(got.cpu().numpy().astype(np.int64), want)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_torch_draws_equal_numpy(family: str) -> None:
    cases = [(1000, 700, 0, 20), (7, 50, 5, 3), (100_003, 40, 1, 2)]  # int16, int16, int32 draws
    if get_family(family).max_mod >= 1 << 32:
        cases.append((1 << 32, 20, 2, 2))  # int64 draws, no reduction
    if family == "java_random":
        cases += [((1 << 30) + 1, 60, 2, 3), (1024, 60, 0, 3)]  # rejections on most steps; m = 2^k
    for n, (m, count, offset, max_skip) in enumerate(cases):
        _check(family, m, count, offset, max_skip, "cpu", seed=n)


def test_java_random_rejected_rows_take_numpys_exact_draws() -> None:
    """Where a rejection falls inside a seed's steps the jump-ahead is off by one call; those
    rows (found by the scan) must come out equal to NumPy too, and here there are some."""
    m = 1000
    fam = get_family("java_random")
    seeds = np.arange(2000, dtype=np.uint64) * np.uint64(7919)
    skips = np.full(seeds.size, 5)
    rej = fam.rejections(fam.init_np(seeds), np.full(seeds.size, 2000 * 6), m)
    assert rej, "no seed with a rejection: the case would not test the fix-up"
    got = torch_draws.draws("java_random", seeds, 2000, m, skips, 0, "cpu")
    np.testing.assert_array_equal(got.numpy().astype(np.int64), fam.draws(seeds, 2000, m, skips, 0))


def test_torch_scoring_makes_its_draws_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """score_chunk on torch takes the draws from torch_draws (one call per sub-batch), and the
    features equal the NumPy backend's."""
    calls = []
    real = torch_draws.draws

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((out.device.type, out.dtype, tuple(out.shape)))
        return out

    monkeypatch.setattr(torch_draws, "draws", spy)
    rng = np.random.default_rng(5)
    fam = get_family("java_lcg")
    seeds = _seeds(rng, 9)
    skips = rng.integers(0, 4, seeds.size)
    train, holdout = rng.integers(0, 1000, 300), rng.integers(0, 1000, 80)
    tb = engine.TorchBackend("cpu")
    got = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, tb, 4)
    want = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 4)
    assert calls == [("cpu", torch.int16, (min(4, seeds.size - lo), 380)) for lo in range(0, seeds.size, 4)]
    np.testing.assert_allclose(got.train, want.train, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.holdout, want.holdout, rtol=1e-9, atol=1e-9)
    assert len(features.TRAIN_FEATURES) == got.train.shape[1]


def test_sub_batch_size_on_cpu_comes_from_the_budget() -> None:
    tb = engine.TorchBackend("cpu")
    assert tb.device_batch_seeds(18_000) is None
    assert engine.batch_size(tb, 18_000, 64) == engine.batch_size("torch", 18_000, 64)
    assert engine.batch_size(tb, 18_000, 64, override=3) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_torch_draws_on_gpu_equal_numpy(family: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA/ROCm GPU visible to torch")
    _check(family, 1000, 3000, 0, 20, "cuda")
    tb = engine.TorchBackend("cuda")
    b = engine.batch_size(tb, 18_000, 64)
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= b and b * 18_000 * engine.BYTES_PER_SEED_DRAW["torch"] <= free
