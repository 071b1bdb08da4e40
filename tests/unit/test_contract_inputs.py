"""i31 / i33: a step's inputs are checked once, before any job, and every bad input gets one
line naming the file or parameter, what was found and what is expected.

SCORE_CASES and SIEVE_CASES are data (name, files to write, call arguments, exact message,
with {d} = the folder the files are in) so that the bad-input table in docs/ can be made
from them. The real files are written and read; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prng_workers import contract, formats
from prng_workers.errors import InputError
from prng_workers.families import FAMILY_NAMES
from prng_workers.scoring import features

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent
KNOWN = ", ".join(FAMILY_NAMES)
TRAIN = list(range(400))
HOLDOUT = [7] * 100


def _recs(seeds: list[Any], **extra: Any) -> list[dict[str, Any]]:
    return [
        {"seed": s, "match_rate": 1.0, "best_skip": 0, "family": "java_lcg", "mod": 1000, **extra}
        for s in seeds
    ]


def _npz(d: Path, name: str, seeds: np.ndarray, sidecar: bool = True) -> None:
    """An NPZ as the sieve writes it (write_survivors), then the seeds array swapped if asked."""
    path = d / name
    formats.write_survivors(
        path,
        {"seeds": np.arange(seeds.size, dtype=np.uint64), "best_skip": np.zeros(seeds.size, dtype=np.int64)},
        {"family": "java_lcg", "mod": 1000},
    )
    with open(path, "wb") as fh:
        np.savez(fh, seeds=seeds, best_skip=np.zeros(seeds.size, dtype=np.int64))
    side = formats.sidecar_path(path)
    if sidecar:
        meta = json.loads(side.read_text())
        meta["npz_sha256"] = formats.file_sha256(path)
        side.write_text(json.dumps(meta))
    else:
        side.unlink()


# name -> (files {name: JSON value or callable(dir)}, overrides of the call, exact message)
Files = dict[str, Any]
SCORE_CASES: dict[str, tuple[Files, dict[str, Any], str]] = {
    "survivors file missing": ({}, {"survivors": "gone.json"}, "survivors {d}/gone.json: file not found"),
    "survivors not JSON": (
        {"s.json": "[{\n  seed: 1}]"},
        {},
        "survivors {d}/s.json: not valid JSON (Expecting property name enclosed in double quotes at line 2)",
    ),
    "survivors a JSON object, not a list": (
        {"s.json": {"seeds": [1, 2]}},
        {},
        "survivors {d}/s.json: found a JSON object, expected a JSON list of survivor records",
    ),
    "survivors a list of numbers, not records": (
        {"s.json": [1, 2]},
        {},
        "survivors {d}/s.json: record 0 is a JSON number, expected an object with a 'seed' field",
    ),
    "records without seed": (
        {"s.json": [{"id": 1, "family": "java_lcg"}]},
        {},
        "survivors {d}/s.json: records have no 'seed' field (fields: id, family), "
        "expected every record to carry its seed",
    ),
    "negative seed": (
        {"s.json": _recs([3, -5])},
        {},
        "survivors {d}/s.json: record 1 has seed -5, expected an integer in [0, 2^64)",
    ),
    "seed >= 2^64": (
        {"s.json": _recs([2**64])},
        {},
        "survivors {d}/s.json: record 0 has seed 18446744073709551616, expected an integer in [0, 2^64)",
    ),
    "seed a string": (
        {"s.json": _recs(["12"])},
        {},
        'survivors {d}/s.json: record 0 has seed "12", expected an integer in [0, 2^64)',
    ),
    "duplicate seeds": (
        {"s.json": _recs([9, 7, 3, 7, 9, 7])},
        {},
        "survivors {d}/s.json: seed 7 appears 3 times (3 repeated rows in all), expected each seed once",
    ),
    "empty survivors": (
        {"s.json": []},
        {},
        "survivors {d}/s.json: no survivors (0 records), expected at least one",
    ),
    "survivors without family": (
        {"s.json": [{"seed": 1}]},
        {},
        "survivors {d}/s.json: no 'family' recorded, expected the survivors' family ('java_lcg' asked for)",
    ),
    "family mismatch": (
        {"s.json": _recs([1, 2], family="java_random")},
        {},
        "survivors {d}/s.json: recorded family java_random, expected java_lcg",
    ),
    "recorded mod differs": (
        {"s.json": _recs([1, 2], mod=997)},
        {},
        "survivors {d}/s.json: recorded mod 997, expected 1000",
    ),
    "negative best_skip": (
        {"s.json": _recs([1, 2], best_skip=-1)},
        {},
        "survivors {d}/s.json: record 0 has best_skip -1, expected an integer >= 0",
    ),
    "survivors extension": (
        {"s.csv": "seed\n1\n"},
        {"survivors": "s.csv"},
        "survivors {d}/s.csv: extension '.csv', expected .json or .npz",
    ),
    "uint32 NPZ (i27)": (
        {"s.npz": lambda d: _npz(d, "s.npz", np.arange(5, dtype=np.uint32))},
        {"survivors": "s.npz"},
        "survivors {d}/s.npz: seeds are uint32, expected uint64 (i27)",
    ),
    "int64 NPZ (i27)": (
        {"s.npz": lambda d: _npz(d, "s.npz", np.arange(5, dtype=np.int64))},
        {"survivors": "s.npz"},
        "survivors {d}/s.npz: seeds are int64, expected uint64 (i27)",
    ),
    "NPZ without sidecar": (
        {"s.npz": lambda d: _npz(d, "s.npz", np.arange(5, dtype=np.uint64), sidecar=False)},
        {"survivors": "s.npz"},
        "survivors {d}/s.npz: sidecar s.npz.meta.json missing, expected next to the NPZ "
        "(written last: an incomplete write?)",
    ),
    "NPZ duplicate seeds": (
        {"s.npz": lambda d: _npz(d, "s.npz", np.array([5, 2**48 + 1, 5], dtype=np.uint64))},
        {"survivors": "s.npz"},
        "survivors {d}/s.npz: seed 5 appears 2 times (1 repeated row in all), expected each seed once",
    ),
    "unknown family": ({}, {"family": "nope"}, f'family: unknown family "nope", expected one of {KNOWN}'),
    "mod < 2": ({}, {"mod": 1}, "mod: found 1, expected an integer in [2, 4294967296] for family java_lcg"),
    "mod not an integer": (
        {},
        {"mod": "1000"},
        'mod: found "1000", expected an integer in [2, 4294967296] for family java_lcg',
    ),
    "train history missing": (
        {},
        {"train_history": "gone.json"},
        "train history {d}/gone.json: file not found",
    ),
    "train history not JSON": (
        {"t.json": "[1, 2,"},
        {},
        "train history {d}/t.json: not valid JSON (Expecting value at line 1)",
    ),
    "train history a JSON object": (
        {"t.json": {"draws": TRAIN}},
        {},
        "train history {d}/t.json: found a JSON object, expected a JSON list of integers in [0, 1000)",
    ),
    "train history draw >= mod": (
        {"t.json": [5, 6, 1000] + TRAIN},
        {},
        "train history {d}/t.json: entry 2 is 1000, expected an integer in [0, 1000) (mod 1000)",
    ),
    "holdout history non-int": (
        {"h.json": [1, "3", 4]},
        {},
        'holdout history {d}/h.json: entry 1 is "3" (a JSON string), expected an integer in [0, 1000)',
    ),
    "holdout history float": (
        {"h.json": [1, 2.5]},
        {},
        "holdout history {d}/h.json: entry 1 is 2.5 (a JSON number), expected an integer in [0, 1000)",
    ),
    "train history too short": (
        {"t.json": [1, 2, 3]},
        {},
        "train history {d}/t.json: 3 draws, scoring needs at least 100 (the 5 temporal windows of 100 draws)",
    ),
    "holdout history empty": (
        {"h.json": []},
        {},
        "holdout history {d}/h.json: 0 draws, scoring needs at least 1 (holdout features need a draw)",
    ),
}

SIEVE_DEFAULTS: dict[str, Any] = {  # playbooks/step1.yml's defaults
    "history": str(DEMO / "history.json"),
    "family": "java_lcg",
    "mod": 1000,
    "window": 32,
    "offset": 0,
    "skip_min": 0,
    "skip_max": 0,
    "sessions": "both",
    "threshold": 0.9,
    "seed_start": 25337360706,
    "seed_stop": 25339360706,
}
SIEVE_CASES: dict[str, tuple[Files, dict[str, Any], str]] = {
    "history missing": ({}, {"history": "gone.json"}, "history {d}/gone.json: file not found"),
    "history a JSON object": (
        {"h.json": {"draws": []}},
        {"history": "h.json"},
        "history {d}/h.json: found a JSON object, expected a JSON list of draw records",
    ),
    "history entry without draw": (
        {"h.json": [{"date": "2024-01-01", "session": "midday"}]},
        {"history": "h.json"},
        "history {d}/h.json: entry 0 lacks 'draw' (expected date, session and draw)",
    ),
    "history shorter than offset + window": (
        {},
        {"window": 512},
        "history {demo}/history.json: 500 draws for sessions midday,evening, window 512 "
        "at offset 0 needs at least 512",
    ),
    "history short for one session": (
        {},
        {"window": 200, "offset": 100, "sessions": "midday"},
        "history {demo}/history.json: 250 draws for sessions midday, window 200 at offset 100 "
        "needs at least 300",
    ),
    "seed range beyond the family's seed space": (
        {},
        {"family": "mt19937", "seed_start": 0, "seed_stop": 2**32 + 1},
        "seed_stop: found 4294967297, expected an integer > seed_start 0 and <= 2^32 "
        "(the seed space of mt19937)",
    ),
    "seed range empty": (
        {},
        {"seed_start": 10, "seed_stop": 10},
        "seed_stop: found 10, expected an integer > seed_start 10 and <= 2^48 (the seed space of java_lcg)",
    ),
    "negative seed_start": (
        {},
        {"seed_start": -1},
        "seed_start: found -1, expected an integer in [0, 2^48) (the seed space of java_lcg)",
    ),
    "threshold above 1": ({}, {"threshold": 1.5}, "threshold: found 1.5, expected a number in (0, 1]"),
    "threshold zero": ({}, {"threshold": 0}, "threshold: found 0, expected a number in (0, 1]"),
    "window zero": ({}, {"window": 0}, "window: found 0, expected an integer in [1, 2147483647]"),
    "skip_max below skip_min": (
        {},
        {"skip_min": 5, "skip_max": 2},
        "skip_max: found 2, expected an integer in [skip_min 5, 2147483647]",
    ),
    "unknown session": (
        {},
        {"sessions": "night"},
        'sessions: found "night", expected midday, evening or both',
    ),
    "sieve mod < 2": (
        {},
        {"mod": 0},
        "mod: found 0, expected an integer in [2, 4294967296] for family java_lcg",
    ),
    "sieve unknown family": (
        {},
        {"family": "rand48"},
        f'family: unknown family "rand48", expected one of {KNOWN}',
    ),
}


def _layout(d: Path, files: Files) -> None:
    for name, value in files.items():
        if callable(value):
            value(d)
        else:
            (d / name).write_text(value if isinstance(value, str) else json.dumps(value))


def score_call(d: Path, files: Files, over: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """The good demo-like set in `d`, with the case's files and overrides on top."""
    (d / "s.json").write_text(json.dumps(_recs([1, 2**40, 2**48 - 1])))
    (d / "t.json").write_text(json.dumps(TRAIN))
    (d / "h.json").write_text(json.dumps(HOLDOUT))
    _layout(d, files)
    args: dict[str, Any] = {
        "survivors": "s.json",
        "train_history": "t.json",
        "holdout_history": "h.json",
        "family": "java_lcg",
        "mod": 1000,
        **over,
    }
    for key in ("survivors", "train_history", "holdout_history"):
        args[key] = str(d / args[key])
    return lambda: contract.check_score_inputs(**args)


def sieve_call(d: Path, files: Files, over: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    _layout(d, files)
    args = {**SIEVE_DEFAULTS, **over}
    if "history" in over:
        args["history"] = str(d / over["history"])
    return lambda: contract.check_sieve_inputs(**args)


def _message(call: Callable[[], Any]) -> str:
    with pytest.raises(InputError) as exc:
        call()
    return str(exc.value)


@pytest.mark.parametrize("name", list(SCORE_CASES))
def test_i31_i33_bad_score_input_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    files, over, want = SCORE_CASES[name]
    msg = _message(score_call(tmp_path, files, over))
    assert msg == want.format(d=tmp_path), name
    assert "\n" not in msg and " object at 0x" not in msg


@pytest.mark.parametrize("name", list(SIEVE_CASES))
def test_i31_i33_bad_sieve_input_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    files, over, want = SIEVE_CASES[name]
    msg = _message(sieve_call(tmp_path, files, over))
    assert msg == want.format(d=tmp_path, demo=DEMO), name
    assert "\n" not in msg


def test_demo_step3_inputs_pass() -> None:
    got = contract.check_score_inputs(
        str(DEMO / "survivors.json"),
        str(DEMO / "train_history.json"),
        str(DEMO / "holdout_history.json"),
        "java_lcg",
        1000,
    )
    assert got["survivors"]["format"] == "json" and got["survivors"]["count"] == 2000
    assert got["survivors"]["sha256"] == hashlib.sha256((DEMO / "survivors.json").read_bytes()).hexdigest()
    assert (got["train_history"]["draws"], got["holdout_history"]["draws"], got["n_draws"]) == (400, 100, 500)
    assert (got["family"], got["mod"]) == ("java_lcg", 1000)
    no_holdout = contract.check_score_inputs(
        str(DEMO / "survivors.json"), str(DEMO / "train_history.json"), None, "java_lcg", 1000
    )
    assert no_holdout["holdout_history"] is None and no_holdout["n_draws"] == 400


def test_demo_step1_inputs_pass_with_step1_defaults() -> None:
    got = contract.check_sieve_inputs(**SIEVE_DEFAULTS)
    assert got["history"]["draws"] == 500 and got["seeds"] == 2_000_000
    assert got["need"] == 29 and got["sessions"] == "both"


def test_npz_survivors_pass_and_are_memory_mapped_not_loaded(tmp_path: Path) -> None:
    recs = json.loads((DEMO / "survivors.json").read_text())
    path = tmp_path / "s.npz"
    formats.write_survivors(
        path,
        [{k: r[k] for k in ("seed", "score", "best_skip")} for r in recs],  # the demo: bidirectional records
        {"family": "java_lcg", "mod": 1000, "direction": "bidirectional"},
    )
    got = contract.check_survivors(path, "java_lcg", 1000)
    assert got == {"path": str(path), "format": "npz", "count": 2000, "sha256": formats.file_sha256(path)}
    members = formats._npz_members(path)
    assert isinstance(members["seeds"], np.memmap)  # what check_survivors reads


def test_duplicates_found_by_sorting_a_million_unsorted_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seeds = rng.permutation(np.arange(1_000_000, dtype=np.uint64) * np.uint64(2**20))
    assert contract.first_duplicate(seeds) is None
    seeds[123_456] = seeds[900_000]  # one seed twice
    dup = int(seeds[900_000])
    assert contract.first_duplicate(seeds) == (dup, 2, 1)
    assert contract.first_duplicate(np.sort(seeds)) == (dup, 2, 1)


def test_prng_check_cli_exit_codes_and_one_line(tmp_path: Path) -> None:
    exe = str(BIN / "prng-check")
    ok = subprocess.run(
        [
            exe,
            "score",
            "--survivors",
            str(DEMO / "survivors.json"),
            "--train-history",
            str(DEMO / "train_history.json"),
            "--holdout-history",
            str(DEMO / "holdout_history.json"),
            "--family",
            "java_lcg",
            "--mod",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["survivors"]["count"] == 2000
    bad_hist = tmp_path / "t.json"
    bad_hist.write_text("[1, 2, 3]")
    bad = subprocess.run(
        [
            exe,
            "score",
            "--survivors",
            str(DEMO / "survivors.json"),
            "--train-history",
            str(bad_hist),
            "--family",
            "java_lcg",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        f"error: train history {bad_hist}: 3 draws, scoring needs at least 100 "
        "(the 5 temporal windows of 100 draws)\n"
    )
    sieve = subprocess.run(
        [
            exe,
            "sieve",
            "--history",
            str(DEMO / "history.json"),
            "--family",
            "java_lcg",
            "--window",
            "32",
            "--threshold",
            "0.9",
            "--seed-start",
            "25337360706",
            "--seed-stop",
            "25339360706",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sieve.returncode == 0 and json.loads(sieve.stdout)["need"] == 29, sieve.stderr
    usage = subprocess.run([exe, "sieve", "--history", "x.json"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and usage.stderr.startswith("error: the following arguments are required")
    assert usage.stderr.count("\n") == 1


def test_worker_identity_code_hash_is_tree_hash_of_the_installed_package() -> None:
    ident = contract.worker_identity()
    out = subprocess.run(
        [sys.executable, str(ROOT / "roles" / "worker_deploy" / "files" / "tree_hash.py"), "--installed"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    deployed = json.loads(out.stdout)
    assert ident == {
        "version": deployed["version"],
        "code_sha256": deployed["tree_hash"],
        "features_version": features.FEATURES_VERSION,
    }


def test_features_version_is_bumped_with_the_feature_set() -> None:
    # Changed a feature's name or the set? Bump features.FEATURES_VERSION, then update this pin:
    # the run identity uses the version to refuse resuming a run scored with another set.
    names = "\n".join(features.TRAIN_FEATURES + features.HOLDOUT_FEATURES)
    pinned = {1: "fe75672bb284140d"}
    assert hashlib.sha256(names.encode()).hexdigest()[:16] == pinned[features.FEATURES_VERSION]
