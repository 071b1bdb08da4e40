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
    rc = memory_model.main(["--chunk-sizes", "20,120", "--train-lengths", "300", "--backends", "numpy",
                            "--out", str(out)])
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


def test_bad_grid_is_input_error(tmp_path: Path, capsys) -> None:
    rc = memory_model.main(["--chunk-sizes", "a,b", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"version": 9}))
    with pytest.raises(InputError):
        memory_model.load_model(tmp_path / "bad.json")
