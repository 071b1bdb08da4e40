"""`prng-make-history`: planted seed/skip/offset, optional noise, train/holdout split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prng_workers import history_cli
from prng_workers.families import FAMILY_NAMES, get_family
from prng_workers.formats import history_residues, load_history, load_int_list


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_planted_entries_are_the_stream(family: str):
    hist, intact = history_cli.make_history(family, 987654, 50, skip=2, offset=6, sessions="both")
    draws = np.array([h["draw"] for h in hist])
    want = get_family(family).draws([987654], 44, 1000, 2, 6)[0]
    np.testing.assert_array_equal(draws[6:], want)
    assert intact[6:].all() and not intact[:6].any()
    assert [h["session"] for h in hist[:4]] == ["midday", "evening", "midday", "evening"]
    assert hist[0]["date"] == hist[1]["date"] != hist[2]["date"]


def test_noise_changes_exactly_the_marked_entries():
    clean, _ = history_cli.make_history("mt19937", 11, 2000, skip=1)
    noisy, intact = history_cli.make_history("mt19937", 11, 2000, skip=1, noise=0.25, noise_seed=3)
    a = np.array([h["draw"] for h in clean])
    b = np.array([h["draw"] for h in noisy])
    np.testing.assert_array_equal(a == b, intact)
    assert 0.2 < 1 - intact.mean() < 0.3


def test_cli_writes_history_train_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out, tr, ho = tmp_path / "h.json", tmp_path / "train.json", tmp_path / "holdout.json"
    rc = history_cli.main(["--family", "java_lcg", "--seed", "0x1234", "--count", "100", "--skip", "2",
                           "--out", str(out), "--train-out", str(tr), "--holdout-out", str(ho),
                           "--sessions", "midday"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 0x1234 and summary["train"] == 80 and summary["holdout"] == 20
    hist = load_history(out)
    allr = history_residues(hist, "midday", 1000)
    train, hold = load_int_list(tr), load_int_list(ho)
    np.testing.assert_array_equal(np.concatenate([train, hold]), allr)
    # i8: holdout draw j is draw len(train) + j of the same stream
    stream = get_family("java_lcg").draws([0x1234], 100, 1000, 2)[0]
    np.testing.assert_array_equal(hold, stream[80:])


@pytest.mark.parametrize("argv", [
    ["--family", "nope", "--seed", "1", "--count", "10"],
    ["--family", "java_lcg", "--seed", "1", "--count", "0"],
    ["--family", "java_lcg", "--seed", "1", "--count", "10", "--offset", "10"],
    ["--family", "java_lcg", "--seed", "1", "--count", "10", "--noise", "1.5"],
    ["--family", "java_lcg", "--seed", "-1", "--count", "10"],
])
def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]):
    assert history_cli.main([*argv, "--out", str(tmp_path / "h.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "h.json").exists()


def test_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc = history_cli.main(["--family", "java_lcg", "--seed", "1", "--count", "10", "--out",
                           str(tmp_path / "missing" / "h.json")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: cannot write")
