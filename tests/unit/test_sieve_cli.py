"""`prng-sieve` and `prng-sieve intersect`: summary line, atomic output, one-line errors
with exit 2 and nothing left behind, i2 (no silent GPU fallback), i28 (pass labels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prng_workers import sieve_cli
from prng_workers.formats import read_survivors, survivors_params, write_survivors
from prng_workers.history_cli import make_history

SEED, SKIP = 5_000_123, 2


@pytest.fixture
def hist(tmp_path: Path) -> Path:
    h, _ = make_history("java_lcg", SEED, 80, skip=SKIP, offset=4)
    p = tmp_path / "history.json"
    p.write_text(json.dumps(h))
    return p


def args(hist: Path, out: Path, **kw: object) -> list[str]:
    base = {"family": "java_lcg", "history": str(hist), "window": "30", "offset": "4", "skip-min": "0",
            "skip-max": "4", "threshold": "1.0", "seed-start": str(SEED - 500), "seed-end": str(SEED + 500),
            "backend": "cpu", "out": str(out)}
    base |= {k.replace("_", "-"): str(v) for k, v in kw.items()}
    return [x for k, v in base.items() for x in (f"--{k}", v)]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = sieve_cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("ext", ["npz", "json"])
def test_summary_line_and_output(tmp_path: Path, hist: Path, capsys: pytest.CaptureFixture[str], ext: str):
    out = tmp_path / f"s.{ext}"
    rc, stdout, err = run_main(args(hist, out), capsys)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["seeds_tested"] == 1000 and summary["survivors"] == 1
    assert summary["backend"] == "cpu" and summary["device"] == "cpu"
    for key in ("seconds", "seeds_per_s", "draw_tests_per_s"):
        assert summary[key] > 0
    cols = read_survivors(out)
    assert cols["seeds"].tolist() == [SEED] and cols["best_skip"].tolist() == [SKIP]
    params = survivors_params(out)
    assert params["family"] == "java_lcg" and params["direction"] == "forward" and params["window"] == 30
    assert sorted(os.listdir(tmp_path)) == sorted(["history.json", out.name] + ([f"{out.name}.meta.json"]
                                                                               if ext == "npz" else []))


def test_console_script_subprocess(tmp_path: Path, hist: Path):
    out = tmp_path / "s.npz"
    p = subprocess.run([sys.executable, "-m", "prng_workers.sieve_cli", *args(hist, out, backend="numpy")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "numpy"
    bad = subprocess.run([sys.executable, "-m", "prng_workers.sieve_cli", *args(hist, out, family="nope")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: unknown family")


def _bad_cases(tmp_path: Path, hist: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"date": "2020-01-01", "session": "midday", "draw": 1},')
    out = tmp_path / "out.npz"
    return {
        "malformed history": (args(broken, out), "not valid JSON"),
        "empty history": (args(empty, out), "empty"),
        "missing history": (args(tmp_path / "none.json", out), "not found"),
        "window longer than history": (args(hist, out, window=77), "longer than the history"),
        "unknown family": (args(hist, out, family="rand48"), "unknown family"),
        "empty seed range": (args(hist, out, seed_start=7, seed_end=7), "empty or inverted"),
        "inverted seed range": (args(hist, out, seed_start=9, seed_end=7), "empty or inverted"),
        "threshold zero": (args(hist, out, threshold=0), "threshold"),
        "threshold above one": (args(hist, out, threshold=1.01), "threshold"),
        "unwritable output": (args(hist, tmp_path / "no" / "dir" / "s.npz"), "does not exist"),
        "bad extension": (args(hist, tmp_path / "s.csv"), "extension"),
        "non-integer seed": (args(hist, out, seed_start="abc"), "seed-start"),
        "missing flag": (args(hist, out)[2:], "--family"),
    }


def test_each_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, hist: Path,
                                                             capsys: pytest.CaptureFixture[str]):
    before = set(os.listdir(tmp_path)) | {"empty.json", "broken.json"}
    for name, (argv, msg) in _bad_cases(tmp_path, hist).items():
        rc, stdout, err = run_main(argv, capsys)
        assert rc == 2, name
        assert stdout == "", name
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, (name, err)
        assert set(os.listdir(tmp_path)) == before, name


def test_unwritable_folder(tmp_path: Path, hist: Path, capsys: pytest.CaptureFixture[str]):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores mode bits; use a path under a file instead
            target = hist / "s.npz"
        else:
            target = ro / "s.npz"
        rc, _, err = run_main(args(hist, target), capsys)
        assert rc == 2 and err.startswith("error: ")
    finally:
        ro.chmod(0o700)
    assert os.listdir(ro) == []


def test_i2_backend_gpu_without_gpu(tmp_path: Path, hist: Path, capsys: pytest.CaptureFixture[str]):
    from prng_workers.backends import gpu

    if gpu.unavailable_reason() is None:
        pytest.skip("a GPU is present")
    rc, _, err = run_main(args(hist, tmp_path / "g.npz", backend="gpu"), capsys)
    assert rc == 2 and "no usable GPU" in err
    assert not (tmp_path / "g.npz").exists()
    rc, stdout, _ = run_main(args(hist, tmp_path / "a.npz", backend="auto"), capsys)
    assert rc == 0 and json.loads(stdout)["backend"] == "cpu"


def _pass(tmp_path: Path, name: str, seeds: list[int], rates: list[float], **params: object) -> Path:
    p = tmp_path / name
    base = {"family": "java_lcg", "direction": "forward", "window": 30, "seed_start": 0, "seed_end": 100}
    write_survivors(p, {"seeds": np.array(seeds, dtype=np.uint64), "match_rate": np.array(rates),
                        "best_skip": np.arange(len(seeds))}, base | params)
    return p


@pytest.mark.parametrize("ext", ["npz", "json"])
def test_intersect_bidirectional(tmp_path: Path, capsys: pytest.CaptureFixture[str], ext: str):
    f = _pass(tmp_path, f"f.{ext}", [1, 5, 2**48 + 9, 70], [0.5, 0.25, 1.0, 0.1])
    r = _pass(tmp_path, f"r.{ext}", [5, 2**48 + 9, 71], [0.75, 0.5, 0.2], direction="reverse")
    out = tmp_path / f"b.{ext}"
    argv = ["intersect", "--forward", str(f), "--reverse", str(r), "--out", str(out)]
    rc, stdout, err = run_main(argv, capsys)
    assert rc == 0, err
    assert json.loads(stdout)["bidirectional"] == 2
    cols = read_survivors(out)
    assert cols["seeds"].tolist() == [5, 2**48 + 9]
    assert cols["forward_match_rate"].tolist() == [0.25, 1.0]
    assert cols["reverse_match_rate"].tolist() == [0.75, 0.5]
    assert cols["score"].tolist() == [0.5, 0.75]
    params = survivors_params(out)
    assert params["forward_direction"] == "forward" and params["reverse_direction"] == "reverse"
    assert params["forward_family"] == params["reverse_family"] == "java_lcg"


def test_i28_reverse_pass_made_forward_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    f = _pass(tmp_path, "f.npz", [1, 2], [0.5, 0.5])
    r = _pass(tmp_path, "r.npz", [2, 3], [0.5, 0.5])  # labelled forward: the i28 mix-up
    rc, _, err = run_main(["intersect", "--forward", str(f), "--reverse", str(r), "--out",
                           str(tmp_path / "b.npz")], capsys)
    assert rc == 2 and "i28" in err and "expected reverse" in err
    assert not (tmp_path / "b.npz").exists()


def test_i28_family_mismatch_and_identical_passes_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    f = _pass(tmp_path, "f.npz", [1, 2], [0.5, 0.5])
    r = _pass(tmp_path, "r.npz", [2, 3], [0.5, 0.5], direction="reverse", family="java_random")
    rc, _, err = run_main(["intersect", "--forward", str(f), "--reverse", str(r), "--out",
                           str(tmp_path / "b.npz")], capsys)
    assert rc == 2 and "family mismatch" in err
    same = _pass(tmp_path, "same.npz", [1, 2], [0.5, 0.5], direction="reverse")
    rc, _, err = run_main(["intersect", "--forward", str(f), "--reverse", str(same), "--out",
                           str(tmp_path / "b.npz")], capsys)
    assert rc == 2 and "identical" in err
    rc, _, err = run_main(["intersect", "--forward", str(f), "--reverse", str(f), "--out",
                           str(tmp_path / "b.npz")], capsys)
    assert rc == 2 and "same file" in err
    other = _pass(tmp_path, "o.npz", [2, 3], [0.5, 0.5], direction="reverse", window=31)
    rc, _, err = run_main(["intersect", "--forward", str(f), "--reverse", str(other), "--out",
                           str(tmp_path / "b.npz")], capsys)
    assert rc == 2 and "window" in err
    assert not (tmp_path / "b.npz").exists()


def test_i28_end_to_end_forward_and_reverse_runs(tmp_path: Path, hist: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    f, r, b = tmp_path / "f.npz", tmp_path / "r.npz", tmp_path / "b.json"
    lo = dict(threshold=0.1, window=10)
    assert run_main(args(hist, f, **lo), capsys)[0] == 0
    assert run_main(args(hist, r, direction="reverse", **lo), capsys)[0] == 0
    # `reverse` is the compat mode's old name: recorded under the name that says what it does
    assert survivors_params(f)["direction"] == "forward"
    assert survivors_params(r)["direction"] == "reversed_window"
    argv = ["intersect", "--forward", str(f), "--reverse", str(r), "--out", str(b)]
    rc, stdout, err = run_main(argv, capsys)
    assert rc == 0, err
    both = set(read_survivors(f)["seeds"].tolist()) & set(read_survivors(r)["seeds"].tolist())
    assert set(read_survivors(b)["seeds"].tolist()) == both


def test_i27_48bit_planted_seed_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    seed = 2**47 + 987_654_321  # needs 48 bits: uint32 would truncate it
    h, _ = make_history("java_lcg", seed, 40, skip=1)
    hp = tmp_path / "h.json"
    hp.write_text(json.dumps(h))
    out = tmp_path / "s.npz"
    argv = args(hp, out, offset=0, window=30, seed_start=seed - 100, seed_end=seed + 100)
    rc, _, err = run_main(argv, capsys)
    assert rc == 0, err
    cols = read_survivors(out)
    assert cols["seeds"].dtype == np.uint64 and cols["seeds"].tolist() == [seed]
    with np.load(out) as z:
        assert z["seeds"].dtype == np.uint64 and int(z["seeds"][0]) == seed
