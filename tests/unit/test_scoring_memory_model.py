"""`prng-memory-model`: real child-process peak RSS, the fitted envelope, `predict_peak_mb`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prng_workers.errors import InputError
from prng_workers.scoring import memory_model


def test_fit_is_an_upper_envelope() -> None:
    pts = [(0.5, 60.0), (2.0, 75.0), (8.0, 70.0), (16.0, 120.0)]
    f = memory_model.fit(pts)
    model = {"version": 1, "models": {"numpy": f}}
    for x, y in pts:
        assert memory_model.predict_peak_mb(model, "numpy", 1, int(x * 2**20)) >= y - 1e-6
    assert f["bytes_per_seed_draw"] >= 0
    flat = memory_model.fit([(1.0, 90.0), (4.0, 50.0)])  # decreasing data -> K = 0, base = max
    assert flat["bytes_per_seed_draw"] == 0 and flat["base_mb"] == 90.0
    assert memory_model.fit([(1.0, 50.0)], margin_mb=5)["base_mb"] == 55.0


def test_predict_peak_mb_formula_and_errors() -> None:
    model = {"version": 1, "models": {"numpy": {"base_mb": 50.0, "bytes_per_seed_draw": 2.0}}}
    assert memory_model.predict_peak_mb(model, "numpy", 1000, 2**20) == pytest.approx(50 + 2000)
    with pytest.raises(InputError, match="no backend 'torch'"):
        memory_model.predict_peak_mb(model, "torch", 1, 1)


def test_measures_real_worker_runs_and_writes_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mm.json"
    rc = memory_model.main(
        [
            "--chunk-sizes",
            "20,120",
            "--train-lengths",
            "300",
            "--backends",
            "numpy",
            "--sieve-chunk-sizes",
            "1000",
            "--sieve-backends",
            "numpy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = memory_model.load_model(out)
    assert doc["version"] == 1 and set(doc["models"]) == {"numpy"}
    ms = doc["measurements"]
    assert [m["chunk"] for m in ms] == [20, 120]
    for m in ms:
        # measured by the kernel for the child, and the worker's own view agrees
        assert 20 < m["peak_rss_mb"] < 2000
        assert m["worker_reported_peak_mb"] == pytest.approx(m["peak_rss_mb"], rel=0.05)
        assert m["n_draws"] == m["n_train"] + m["n_holdout"] == 300 + 75
        pred = memory_model.predict_peak_mb(doc, "numpy", m["chunk"], m["n_draws"])
        assert pred >= m["peak_rss_mb"]
    assert "prng-memory-model" in doc["meta"]["command"]
    assert doc["sieve"]["backends"]["numpy"]["chunks"] == [1000]  # both parts by default


def test_sieve_part_measured_by_real_prng_sieve_runs_the_step3_model_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mm.json"
    step3 = {
        "version": 1,
        "formula": "f",
        "models": {"numpy": {"base_mb": 86.14, "bytes_per_seed_draw": 0.2373}},
        "measurements": [{"backend": "numpy", "chunk": 250}],
        "meta": {"host": "elsewhere"},
    }
    out.write_text(json.dumps(step3))
    rc = memory_model.main(
        [
            "--only",
            "sieve",
            "--sieve-chunk-sizes",
            "2000,30000",
            "--sieve-backends",
            "cpu,numpy,gpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = memory_model.load_model(out)
    assert {k: doc[k] for k in step3} == step3  # the Step 3 part: not re-measured, unchanged
    sieve = doc["sieve"]
    ms = sieve["measurements"]
    assert {(m["backend"], m["chunk"]) for m in ms if m["backend"] != "gpu"} == {
        (b, c) for b in ("cpu", "numpy") for c in (2000, 30000)
    }
    for m in ms:
        assert 20 < m["peak_rss_mb"] < 4000 and m["resolved"] == m["backend"]  # the kernel's rusage
    for backend in ("cpu", "numpy"):
        fig = sieve["backends"][backend]
        peak = max(m["peak_rss_mb"] for m in ms if m["backend"] == backend)
        assert fig["base_mb"] == fig["max_peak_mb"] == peak and fig["chunks"] == [2000, 30000]
        assert memory_model.sieve_peak_mb(doc, backend) == peak
    # gpu: measured where there is one, else skipped with the reason
    assert ("gpu" in sieve["backends"]) != sieve["skipped"].get("gpu", "").startswith("--backend gpu:")
    assert memory_model.sieve_peak_mb(doc, "auto") is None and memory_model.sieve_peak_mb(None, "cpu") is None
    assert sieve["meta"]["window"] == 64 and "--only sieve" in sieve["meta"]["command"]
    # and the other way round: --only score keeps the sieve section as it was
    rc = memory_model.main(
        [
            "--only",
            "score",
            "--chunk-sizes",
            "20",
            "--train-lengths",
            "300",
            "--backends",
            "numpy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    again = memory_model.load_model(out)
    assert again["sieve"] == sieve and again["models"]["numpy"]["points"] == 1


def test_bad_grid_is_input_error(tmp_path: Path, capsys) -> None:
    rc = memory_model.main(["--chunk-sizes", "a,b", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "x.json").exists()
    rc = memory_model.main(
        ["--only", "sieve", "--sieve-backends", "torch", "--out", str(tmp_path / "x.json")]
    )
    assert rc == 2 and "--sieve-backends: unknown backend 'torch'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"version": 9}))
    with pytest.raises(InputError):
        memory_model.load_model(tmp_path / "bad.json")
