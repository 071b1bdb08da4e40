"""The bidirectional sieve (docs/sieve.md, "Bidirectional"): a true seed is kept at rate 1.0
both ways for every family and CPU backend, the reverse check really looks at other draws
(the newest ones, walked backwards), survivor counts on random draws follow the derived
noise model, and Step 1's bidirectional output is a valid Step 3 input."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

from prng_workers import sieve_cli
from prng_workers.contract import check_score_inputs, check_sieve_inputs
from prng_workers.errors import InputError
from prng_workers.families import FAMILIES, FAMILY_NAMES, get_family
from prng_workers.formats import read_survivors, survivors_params
from prng_workers.history_cli import make_history
from prng_workers.sieve import (
    bidirectional_survival_probability,
    binomial_tail,
    make_job,
    noise_survival_probability,
    run_sieve,
)

PLANT = {"seed": 3_141_592_653, "skip": 3, "offset": 2}  # < 2^32: valid for the 32-bit-seed families


def random_history(rng: np.random.Generator, n: int, m: int) -> list[dict]:
    day0 = dt.date(2020, 1, 1)
    return [
        {
            "date": (day0 + dt.timedelta(days=i // 2)).isoformat(),
            "session": ("midday", "evening")[i % 2],
            "draw": int(v),
        }
        for i, v in enumerate(rng.integers(0, m, n))
    ]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_walking_back_equals_the_forward_stream_read_backwards(family: str):
    # affine families step back with the modular inverse; the others regenerate: both must give
    # exactly the outputs of calls last, last-(s+1), ... (pure-Python reference included)
    fam = get_family(family)
    seeds = np.array([0, 1, 77, 2**40 + 3, 2**63 + 11, 2**64 - 1], dtype=np.uint64)
    for skip, last, count in ((0, 40, 12), (2, 97, 9), (5, 400, 20)):
        back = fam.draws_backward(seeds, count, 1000, skip, last)
        first = last - count * (skip + 1)
        np.testing.assert_array_equal(back, fam.draws(seeds, count, 1000, skip, first)[:, ::-1])
        assert back[3].tolist() == fam.reference_draws(int(seeds[3]), count, 1000, skip, first)[::-1]
    with pytest.raises(InputError, match="too early"):
        fam.draws_backward(seeds, 10, 1000, 1, 15)


def test_affine_inverse_is_exact():
    for fam in (FAMILIES[n] for n in ("java_lcg", "minstd", "lcg32", "pcg32")):
        lcg = fam.lcg  # type: ignore[attr-defined]
        for k in (1, 2, 7, 1000):
            a, c = lcg.jump_int(k)
            ia, ic = lcg.inverse_int(a, c)
            for x in (1, 12345, lcg.mod - 2):
                assert (ia * ((a * x + c) % lcg.mod) + ic) % lcg.mod == x


def planted(family: str, count: int = 60, **kw: object):
    hist, _ = make_history(family, PLANT["seed"], count, skip=PLANT["skip"], offset=PLANT["offset"])
    args = {
        "window": 24,
        "offset": PLANT["offset"],
        "skip_min": 0,
        "skip_max": 5,
        "threshold": 1.0,
        "seed_start": PLANT["seed"] - 40,
        "seed_end": PLANT["seed"] + 40,
        "direction": "bidirectional",
    } | kw
    return hist, make_job(family, hist, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_planted_seed_is_bidirectional_at_rate_1(family: str, backend: str):
    _, job = planted(family)
    assert job.reverse_window == 24 and job.n_draws == 60  # the newest 24 draws, after the window
    res = run_sieve(job, backend)
    assert res.backend == backend
    cols = res.columns
    assert cols["seeds"].tolist() == [PLANT["seed"]]
    assert cols["forward_match_rate"].tolist() == [1.0]
    assert cols["reverse_match_rate"].tolist() == [1.0]
    assert cols["score"].tolist() == [1.0]
    assert cols["best_skip"].tolist() == [PLANT["skip"]]
    assert cols["reverse_matches"].tolist() == [24] and cols["total"].tolist() == [24]
    assert res.extra["forward_survivors"] == 1


@pytest.mark.parametrize("family", ["java_lcg", "mt19937", "java_random"])
def test_compat_mode_drops_the_planted_seed_the_new_mode_keeps(family: str):
    # the issue: the reversed_window compat mode (old `reverse`) fails a true seed by construction
    hist, job = planted(family)
    compat = make_job(
        family,
        hist,
        window=24,
        offset=PLANT["offset"],
        skip_max=5,
        threshold=1.0,
        seed_start=job.seed_start,
        seed_end=job.seed_end,
        direction="reverse",
    )
    assert compat.direction == "reversed_window"
    assert run_sieve(compat, "cpu").columns["seeds"].tolist() == []
    assert run_sieve(job, "cpu").columns["seeds"].tolist() == [PLANT["seed"]]


def test_reverse_check_reads_the_newest_draws_not_the_forward_window():
    # a seed planted only in the old part of the history passes forward but not the check
    hist, job = planted("java_lcg", count=80)
    rng = np.random.default_rng(5)
    tail = [dict(h, draw=int((h["draw"] + rng.integers(1, 1000)) % 1000)) for h in hist[40:]]
    old_only = hist[:40] + tail
    fwd = make_job(
        "java_lcg",
        old_only,
        window=24,
        offset=PLANT["offset"],
        skip_max=5,
        threshold=1.0,
        seed_start=job.seed_start,
        seed_end=job.seed_end,
    )
    bid = make_job(
        "java_lcg",
        old_only,
        window=24,
        offset=PLANT["offset"],
        skip_max=5,
        threshold=1.0,
        seed_start=job.seed_start,
        seed_end=job.seed_end,
        direction="bidirectional",
    )
    assert run_sieve(fwd, "cpu").columns["seeds"].tolist() == [PLANT["seed"]]
    res = run_sieve(bid, "cpu")
    assert res.columns["seeds"].tolist() == [] and res.extra["forward_survivors"] == 1
    # with a reverse window inside the planted part the seed is back
    fits = make_job(
        "java_lcg",
        hist[:40],
        window=24,
        offset=PLANT["offset"],
        skip_max=5,
        threshold=1.0,
        seed_start=job.seed_start,
        seed_end=job.seed_end,
        direction="bidirectional",
    )
    assert fits.reverse_window == 14  # all the draws after the forward window (fewer than 24)
    assert run_sieve(fits, "cpu").columns["seeds"].tolist() == [PLANT["seed"]]


def test_noise_model_is_forward_times_an_independent_tail():
    p_f = noise_survival_probability(512, 6, 1000, 21)
    p_b = bidirectional_survival_probability(512, 6, 1000, 21, 512, 6)
    assert p_b == pytest.approx(p_f * binomial_tail(512, 6, 1000))
    # spec §5's example: ~331,000 forward survivors per 10^9 seeds; the check leaves ~5
    assert 4 < p_b * 1e9 < 6
    assert binomial_tail(10, 0, 7) == 1.0 and binomial_tail(5, 6, 2) == 0.0


NOISE = {"k": 100, "k_r": 40, "m": 50, "n_skips": 4, "threshold": 0.06}  # need 6 of 100, 3 of 40


@pytest.mark.parametrize(
    ("family", "backend", "n"),
    [
        ("java_lcg", "cpu", 400_000),
        ("mt19937", "cpu", 200_000),
        ("xorshift64", "cpu", 200_000),
        ("pcg32", "cpu", 200_000),
        ("minstd", "cpu", 200_000),
        ("java_random", "cpu", 200_000),
        ("lcg32", "numpy", 100_000),
    ],
)
def test_survivor_count_on_random_draws_follows_the_noise_model(family: str, backend: str, n: int):
    # Deterministic (fixed RNG seeds, fixed seed range): the same counts every run, so the test
    # cannot flake; the bound is 5 binomial sigmas, so a wrong model or a check that is not
    # independent of the forward pass (e.g. comparing the forward window again) fails it.
    rng = np.random.default_rng(20260124)
    hist = random_history(rng, NOISE["k"] + 60, NOISE["m"])
    job = make_job(
        family,
        hist,
        window=NOISE["k"],
        skip_max=NOISE["n_skips"] - 1,
        threshold=NOISE["threshold"],
        m=NOISE["m"],
        seed_start=10**9,
        seed_end=10**9 + n,
        direction="bidirectional",
        reverse_window=NOISE["k_r"],
    )
    assert (job.need, job.reverse_need) == (6, 3)
    res = run_sieve(job, backend)
    forward, kept = res.extra["forward_survivors"], res.survivors
    # 1. the forward pass alone (spec §5)
    p_f = noise_survival_probability(NOISE["k"], job.need, NOISE["m"], NOISE["n_skips"])
    assert abs(forward - n * p_f) <= 5 * math.sqrt(n * p_f * (1 - p_f)), (forward, n * p_f)
    # 2. given F forward survivors, the check keeps Bin(F, tail) of them
    tail = binomial_tail(NOISE["k_r"], job.reverse_need, NOISE["m"])
    assert abs(kept - forward * tail) <= 5 * math.sqrt(forward * tail * (1 - tail)), (kept, forward * tail)
    # 3. unconditionally: n * P_bidirectional
    p_b = bidirectional_survival_probability(
        NOISE["k"], job.need, NOISE["m"], NOISE["n_skips"], NOISE["k_r"], job.reverse_need
    )
    assert abs(kept - n * p_b) <= 5 * math.sqrt(n * p_b * (1 - p_b)), (kept, n * p_b)
    assert kept > 40  # enough survivors for the bounds to mean something
    cols = res.columns
    assert np.all(cols["reverse_matches"] >= 3) and np.all(cols["matches"] >= 6)
    np.testing.assert_allclose(cols["score"], (cols["forward_match_rate"] + cols["reverse_match_rate"]) / 2)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"window": 58}, "bidirectional needs draws after the forward window"),
        ({"reverse_window": 35}, r"reverse_window must be in \[0, 34\]"),
        ({"reverse_window": -1}, "reverse_window must be"),
        ({"reverse_window": 5, "direction": "forward"}, "applies to direction bidirectional"),
    ],
)
def test_bad_bidirectional_parameters(kw: dict, msg: str):
    with pytest.raises(InputError, match=msg):
        planted("java_lcg", **kw)


def test_contract_checks_the_bidirectional_windows(tmp_path: Path):
    hist, _ = make_history("java_lcg", 5, 60)
    path = tmp_path / "h.json"
    path.write_text(json.dumps(hist))
    common = ("java_lcg", 1000, 60, 0, 0, 0, "both", 0.5, 0, 10)
    assert check_sieve_inputs(str(path), *common)["window"] == 60  # forward: the whole history is fine
    with pytest.raises(InputError, match="^bidirectional needs draws after the forward window"):
        check_sieve_inputs(str(path), *common, direction="bidirectional")
    got = check_sieve_inputs(
        str(path), "java_lcg", 1000, 40, 0, 0, 0, "both", 0.5, 0, 10, direction="bidirectional"
    )
    assert got["direction"] == "bidirectional" and got["reverse_window"] == 20


def test_cli_bidirectional_output_is_a_step3_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    seed = 2**47 + 987_654_321  # 48 bits: survives only as uint64 (i27)
    hist, _ = make_history("java_lcg", seed, 300, skip=1)
    (tmp_path / "h.json").write_text(json.dumps(hist))
    draws = [h["draw"] for h in hist]
    (tmp_path / "train.json").write_text(json.dumps(draws[:240]))
    (tmp_path / "holdout.json").write_text(json.dumps(draws[240:]))
    out = tmp_path / "bidirectional_survivors.npz"
    rc = sieve_cli.main(
        [
            "--family",
            "java_lcg",
            "--history",
            str(tmp_path / "h.json"),
            "--window",
            "32",
            "--skip-max",
            "2",
            "--threshold",
            "0.03",
            "--seed-start",
            str(seed - 3000),
            "--seed-end",
            str(seed + 3000),
            "--direction",
            "bidirectional",
            "--backend",
            "cpu",
            "--out",
            str(out),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["direction"] == "bidirectional" and summary["reverse_window"] == 32
    assert summary["forward_survivors"] >= summary["survivors"] >= 1
    cols = read_survivors(out)
    assert cols["seeds"].dtype == np.uint64 and seed in cols["seeds"].tolist()
    row = cols["seeds"].tolist().index(seed)
    assert cols["score"][row] == 1.0 and cols["best_skip"][row] == 1
    params = survivors_params(out)
    assert params["family"] == "java_lcg" and params["direction"] == "bidirectional"
    assert params["reverse_window"] == 32 and params["mod"] == 1000
    got = check_score_inputs(
        str(out), str(tmp_path / "train.json"), str(tmp_path / "holdout.json"), "java_lcg", 1000
    )
    assert got["survivors"]["count"] == summary["survivors"]


@pytest.mark.parametrize("family", ["java_lcg", "mt19937", "xorshift32", "pcg32", "minstd"])
def test_step3_scores_a_seed_found_at_an_offset_and_skip_on_its_own_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str
):
    """Step 1's window starts at history index `offset` after `offset` generator calls; Step 3
    given the pipeline's split (first 80 % / rest of the whole history) must read the survivors'
    offset the same way. It scored draw i as call (i+1)(s+1) against train draw i, so a seed
    planted at offset 7 and skip 3 got 0 train matches and was not ranked first."""
    from prng_workers.scoring import cli as score_cli

    seed, skip, offset = 5_000_123, 3, 7
    hist, _ = make_history(family, seed, 300, skip=skip, offset=offset)
    (tmp_path / "h.json").write_text(json.dumps(hist))
    draws = [h["draw"] for h in hist]
    (tmp_path / "train.json").write_text(json.dumps(draws[:240]))
    (tmp_path / "holdout.json").write_text(json.dumps(draws[240:]))
    surv = tmp_path / "bidirectional_survivors.npz"
    argv = f"--family {family} --history {tmp_path / 'h.json'} --window 32 --offset {offset} --skip-max 4"
    argv += f" --threshold 0.03 --seed-start {seed - 1500} --seed-end {seed + 1500} --direction bidirectional"
    assert sieve_cli.main([*argv.split(), "--backend", "numpy", "--out", str(surv)]) == 0
    capsys.readouterr()
    out = tmp_path / "scored.json"
    argv = f"--survivors {surv} --train-history {tmp_path / 'train.json'} --holdout-history"
    argv += f" {tmp_path / 'holdout.json'} --family {family} --backend numpy --out {out}"
    assert score_cli.main(argv.split()) == 0
    assert json.loads(capsys.readouterr().out)["offset"] == offset
    scored = {r["seed"]: r for r in json.loads(out.read_text())}
    best = max(scored.values(), key=lambda r: r["score"])
    planted = scored[seed]
    assert planted["features"]["exact_matches"] == planted["features"]["total_predictions"] == 240 - offset
    assert planted["holdout_hits"] == 1.0 and best["seed"] == seed and len(scored) > 1


def test_step3_refuses_an_offset_past_the_train_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from prng_workers.scoring import cli as score_cli

    (tmp_path / "s.json").write_text(json.dumps([{"seed": 1, "family": "java_lcg", "offset": 40}]))
    (tmp_path / "t.json").write_text(json.dumps(list(range(40))))
    argv = f"--survivors {tmp_path / 's.json'} --train-history {tmp_path / 't.json'} --holdout-history"
    argv += f" {tmp_path / 't.json'} --family java_lcg --backend numpy --out {tmp_path / 'o.json'}"
    assert score_cli.main(argv.split()) == 2
    assert "offset 40 leaves no train draw (train history has 40)" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("family", ["java_lcg", "mt19937", "java_random"])
def test_step3_offset_reaches_the_torch_draws_too(family: str):
    """The torch backend makes its draws itself (`device_draws`): the offset must reach it."""
    pytest.importorskip("torch")
    from prng_workers.scoring import engine

    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 2**31, 20).astype(np.uint64)
    skips = rng.integers(0, 4, 20)
    train, holdout = rng.integers(0, 1000, 120), rng.integers(0, 1000, 30)
    fam = get_family(family)
    want = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 7, offset=7)
    got = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.TorchBackend("cpu"), 7, offset=7)
    at_zero = engine.score_chunk(fam, seeds, skips, train, holdout, 1000, engine.NumpyBackend(), 7)
    np.testing.assert_allclose(got.train, want.train, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.holdout, want.holdout, rtol=1e-9, atol=1e-9)
    assert not np.allclose(at_zero.train, want.train)
