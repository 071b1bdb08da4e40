"""`prng-score-globals` and `prng-score-aggregate` on real chunk outputs of `prng-score`."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from prng_workers import formats
from prng_workers.scoring import aggregate, cli, globals_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("agg")
    rng = np.random.default_rng(11)
    (d / "train.json").write_text(json.dumps(rng.integers(0, 1000, 800).tolist()))
    (d / "holdout.json").write_text(json.dumps(rng.integers(0, 1000, 200).tolist()))
    seeds = np.sort(rng.choice(2**48, 50, replace=False)).astype(np.uint64)
    formats.write_survivors(d / "surv.npz", {"seeds": seeds, "best_skip": rng.integers(0, 3, 50),
                                             "score": rng.random(50)}, params={"family": "java_lcg"})
    chunks = []
    for i, (lo, hi) in enumerate([(0, 20), (20, 35), (35, 50)]):
        out = d / f"chunk{i}.{'npz' if i == 1 else 'json'}"
        rc = cli.main(["--survivors", str(d / "surv.npz"), "--start", str(lo), "--stop", str(hi),
                       "--train-history", str(d / "train.json"),
                       "--holdout-history", str(d / "holdout.json"), "--family", "java_lcg",
                       "--out", str(out), "--job-id", f"j{i}", "--backend", "numpy"])
        assert rc == 0
        chunks.append(out)
    rc = globals_cli.main(["--train-history", str(d / "train.json"),
                           "--holdout-history", str(d / "holdout.json"), "--out", str(d / "globals.json")])
    assert rc == 0
    return {"dir": d, "surv": d / "surv.npz", "chunks": chunks, "globals": d / "globals.json"}  # type: ignore[dict-item]


def test_history_globals_known_values() -> None:
    g = globals_cli.history_globals(np.array([1, 2, 1, 2, 2]), 10)
    assert g["n_draws"] == 5
    p = np.array([2, 3]) / 5
    assert g["entropy_8"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert g["entropy_8_norm"] == pytest.approx(g["entropy_8"] / 3)
    assert g["gap_mean"] == pytest.approx((2 + 2 + 1) / 3) and g["gap_max"] == 2
    assert g["repeat_rate"] == pytest.approx(1 / 5)
    # counts 2 and 3 of 5 over m=10 (expected 0.5): chi2 = (8*0.25 + 1.5^2 + 2.5^2)/0.5 / 9
    assert g["freq_chi2_per_dof"] == pytest.approx((8 * 0.25 + 2.25 + 6.25) / 0.5 / 9)
    assert g["freq_max_rel_dev"] == pytest.approx(2.5 / 0.5)
    u = globals_cli.history_globals(np.arange(8000) % 1000, 1000)
    assert u["entropy_1000_norm"] == pytest.approx(1.0) and u["gap_mean"] == pytest.approx(1000)


def _agg(run_dir, capsys, out: Path, *extra: str, chunks: list[Path] | None = None) -> tuple[int, str, str]:
    argv = [*(str(c) for c in (chunks if chunks is not None else run_dir["chunks"])),
            "--survivors", str(run_dir["surv"]), "--globals", str(run_dir["globals"]),
            "--out", str(out), *extra]
    rc = aggregate.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("fmt", ["json", "npz"])
def test_aggregate_sorted_complete_with_globals_and_manifest(run_dir, capsys, fmt) -> None:
    out = run_dir["dir"] / f"survivors_with_scores.{fmt}"
    summ = run_dir["dir"] / "summaries.log"
    host = socket.gethostname()
    summ.write_text(json.dumps({"host": host, "seconds": 1.5}) + "\nnot json\n"
                    + json.dumps({"host": host, "seconds": 0.5}) + "\n")
    rc, stdout, err = _agg(run_dir, capsys, out, "--summaries", str(summ))
    assert rc == 0, err
    assert json.loads(stdout)["count"] == 50
    if fmt == "json":
        recs = json.loads(out.read_text())
        scores = [r["score"] for r in recs]
        seeds = [r["seed"] for r in recs]
        assert all("global_train_entropy_1000" in r["features"] for r in recs)
        assert {r["metadata"]["job_id"] for r in recs} == {"j0", "j1", "j2"}
    else:
        assert formats.count_survivors(out) == 50
        cols = formats.read_survivors(out)
        scores, seeds = cols["score"].tolist(), cols["seeds"].tolist()
        assert "feature.global_holdout_gap_mean" in cols
    assert scores == sorted(scores, reverse=True)
    want = formats.read_survivors(run_dir["surv"])["seeds"].tolist()
    assert sorted(seeds) == sorted(want)
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["complete"] is True and man["jobs"]["completed"] == 3 and man["jobs"]["failed"] == 0
    assert man["seeds"]["missing"] == 0 and man["seeds"]["duplicated"] == 0
    assert list(man["per_host"]) == [host]
    assert man["per_host"][host]["seeds"] == 50 and man["per_host"][host]["jobs"] == 3
    assert man["timings"]["worker_seconds_total"] == 2.0
    assert man["globals"]["train"]["n_draws"] == 800


def test_aggregate_missing_chunk_is_error_then_partial(run_dir, capsys) -> None:
    out = run_dir["dir"] / "missing.json"
    rc, _, err = _agg(run_dir, capsys, out, chunks=run_dir["chunks"][:2])
    assert rc == 2 and "15 missing, 0 duplicated, 0 unexpected of 50" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc, stdout, err = _agg(run_dir, capsys, out, "--partial", "--expected-jobs", "3",
                           chunks=run_dir["chunks"][:2])
    assert rc == 0, err
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["complete"] is False and man["seeds"]["missing"] == 15
    assert man["jobs"]["expected"] == 3 and man["jobs"]["not_reported"] == 1
    assert len(json.loads(out.read_text())) == 35


def test_aggregate_duplicate_chunk_is_error(run_dir, capsys) -> None:
    out = run_dir["dir"] / "dup.json"
    rc, _, err = _agg(run_dir, capsys, out, "--partial", chunks=[*run_dir["chunks"], run_dir["chunks"][0]])
    assert rc == 2 and "20 duplicated" in err and not out.exists()


def test_i4_truncated_chunk_counts_as_failed_not_done(run_dir, capsys) -> None:
    d = run_dir["dir"]
    bad = d / "trunc.npz"
    good = run_dir["chunks"][1]
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    Path(f"{bad}.meta.json").write_text(Path(f"{good}.meta.json").read_text())
    chunks = [run_dir["chunks"][0], bad, run_dir["chunks"][2]]
    out = d / "trunc_out.json"
    rc, _, err = _agg(run_dir, capsys, out, chunks=chunks)
    assert rc == 2 and "15 missing" in err and "1 of 3 chunk outputs invalid" in err
    rc, _, err = _agg(run_dir, capsys, out, "--partial", chunks=chunks)
    assert rc == 0
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["jobs"]["failed"] == 1 and man["jobs"]["completed"] == 2
    assert any(j["status"] == "failed" and j["path"] == str(bad) for j in man["jobs"]["list"])


def test_globals_cli_bad_input(tmp_path, capsys) -> None:
    (tmp_path / "e.json").write_text("[]")
    rc = globals_cli.main(["--train-history", str(tmp_path / "e.json"), "--out", str(tmp_path / "g.json")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "g.json").exists()
    assert math.isclose(globals_cli.history_globals(np.array([5]), 10)["gap_mean"], 0.0)
