"""`prng-score` end to end on real files: outputs, metadata copy-through, bad input, i2, i7."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prng_workers import formats
from prng_workers.families import get_family
from prng_workers.scoring import cli

SEED, SKIP, N, NH, M = 123456789, 2, 1500, 400, 1000


@pytest.fixture()
def data(tmp_path: Path) -> dict[str, Path]:
    fam = get_family("java_lcg")
    stream = fam.draws(np.array([SEED], dtype=np.uint64), N + NH, M, skip=SKIP)[0]
    (tmp_path / "train.json").write_text(json.dumps(stream[:N].tolist()))
    (tmp_path / "holdout.json").write_text(json.dumps(stream[N:].tolist()))
    rng = np.random.default_rng(3)
    seeds = np.sort(np.concatenate([[SEED], rng.integers(2**40, 2**48, 59)])).astype(np.uint64)
    cols = {
        "seeds": seeds, "family": np.full(60, "java_lcg"), "best_skip": np.full(60, SKIP),
        "forward_match_rate": rng.random(60) + 0.5, "reverse_match_rate": rng.random(60) + 0.5,
        "score": rng.random(60) + 0.5, "matches": rng.integers(1, 9, 60),
        "direction": np.full(60, "bidirectional"),
    }
    formats.write_survivors(tmp_path / "surv.json", cols)
    npz_cols = {k: v for k, v in cols.items() if k != "family"}
    formats.write_survivors(tmp_path / "surv.npz", npz_cols, params={"family": "java_lcg", "window": 512})
    return {"dir": tmp_path, "json": tmp_path / "surv.json", "npz": tmp_path / "surv.npz",
            "train": tmp_path / "train.json", "holdout": tmp_path / "holdout.json"}


def _args(data: dict[str, Path], out: Path, *extra: str, survivors: str = "json") -> list[str]:
    return ["--survivors", str(data[survivors]), "--train-history", str(data["train"]),
            "--holdout-history", str(data["holdout"]), "--family", "java_lcg", "--mod", str(M),
            "--out", str(out), "--job-id", "job-7", *extra]


def _run_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_json_chunk_end_to_end_copies_every_field(data, capsys) -> None:
    out = data["dir"] / "scored.json"
    summary = _run_ok(capsys, _args(data, out, "--backend", "numpy", "--batch-seeds", "7"))
    assert summary["count"] == 60 and summary["backend"] == "numpy" and summary["device"] == "cpu"
    assert summary["peak_rss_mb"] > 0 and summary["seeds_per_s"] > 0 and "visible_devices" in summary
    records = json.loads(out.read_text())
    src = json.loads(data["json"].read_text())
    assert [r["seed"] for r in records] == [r["seed"] for r in src]
    for rec, inp in zip(records, src, strict=True):
        assert set(rec) >= {"seed", "score", "features", "holdout_hits", "holdout_quality", "metadata"}
        meta = rec["metadata"]
        assert meta["job_id"] == "job-7" and meta["m"] == M and meta["family"] == "java_lcg"
        assert meta["host"] and meta["gpu"] == "none"
        for key, value in inp.items():  # every input field reaches the output, unchanged
            if key != "seed":
                assert meta[key] == value, key
        for key in ("forward_match_rate", "reverse_match_rate", "score", "matches", "best_skip"):
            assert rec["features"][f"meta_{key}"] == pytest.approx(float(inp[key]))
            assert rec["features"][f"meta_{key}"] != 0.0
        assert 0.0 <= rec["holdout_quality"] <= 1.0
    planted = next(r for r in records if r["seed"] == SEED)
    assert planted["holdout_hits"] == 1.0 and planted["score"] == 100.0
    others = [r["holdout_hits"] for r in records if r["seed"] != SEED]
    assert np.mean(others) < 5.0 / M


def test_npz_slice_to_npz_output_with_sidecar_params(data, capsys) -> None:
    out = data["dir"] / "scored.npz"
    summary = _run_ok(capsys, _args(data, out, "--start", "10", "--stop", "35", survivors="npz"))
    assert summary["count"] == 25
    assert formats.count_survivors(out) == 25  # whole-file validation (i3/i4)
    cols = formats.read_survivors(out)
    src = formats.read_survivors(data["npz"], 10, 35)
    np.testing.assert_array_equal(cols["seeds"], src["seeds"])
    assert cols["seeds"].dtype == np.uint64
    np.testing.assert_array_equal(cols["metadata.forward_match_rate"], src["forward_match_rate"])
    assert set(cols["metadata.window"].tolist()) == {512}  # NPZ sidecar params copied too
    assert set(cols["metadata.family"].tolist()) == {"java_lcg"}
    assert set(cols["metadata.job_id"].tolist()) == {"job-7"}


def test_numpy_and_torch_cli_outputs_agree(data, capsys) -> None:
    pytest.importorskip("torch")
    a, b = data["dir"] / "np.json", data["dir"] / "t.json"
    _run_ok(capsys, _args(data, a, "--backend", "numpy"))
    summary = _run_ok(capsys, _args(data, b, "--backend", "torch", "--device", "cpu"))
    assert summary["backend"] == "torch" and summary["device"] == "cpu"
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for x, y in zip(ra, rb, strict=True):
        assert x["seed"] == y["seed"]
        for k, v in x["features"].items():
            assert y["features"][k] == pytest.approx(v, rel=1e-9, abs=1e-9), k
        assert y["holdout_quality"] == pytest.approx(x["holdout_quality"], rel=1e-9)


def _bad(data, capsys, argv: list[str], out: Path, needle: str) -> None:
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temp file left behind


def test_bad_inputs_one_line_exit_2_nothing_written(data, capsys) -> None:
    d = data["dir"]
    out = d / "bad.json"
    records = json.loads(data["json"].read_text())
    del records[5]["forward_match_rate"]
    (d / "missing.json").write_text(json.dumps(records))
    _bad(data, capsys, _args(data, out) + ["--survivors", str(d / "missing.json")], out, "record 5")
    (d / "empty.json").write_text("[]")
    _bad(data, capsys, _args(data, out) + ["--train-history", str(d / "empty.json")], out, "non-empty")
    (d / "floats.json").write_text("[1.5, 2, 3]")
    _bad(data, capsys, _args(data, out) + ["--holdout-history", str(d / "floats.json")], out, "integers")
    (d / "big.json").write_text("[1, 2, 1000]")
    _bad(data, capsys, _args(data, out) + ["--holdout-history", str(d / "big.json")], out, "--mod")
    _bad(data, capsys, _args(data, out, "--start", "50", "--stop", "61"), out, "out of range")
    _bad(data, capsys, _args(data, out, "--start", "10", "--stop", "10"), out, "out of range")
    _bad(data, capsys, _args(data, out, "--start", "70", survivors="npz"), out, "out of range")
    _bad(data, capsys, _args(data, out) + ["--family", "mt19937"], out, "family")
    _bad(data, capsys, _args(data, out, survivors="npz") + ["--family", "minstd"], out, "family")
    _bad(data, capsys, _args(data, out) + ["--family", "nope"], out, "unknown family")
    _bad(data, capsys, _args(data, out, "--backend", "numpy", "--device", "cuda"), out, "CPU only")
    nofam = [{k: v for k, v in r.items() if k != "family"} for r in json.loads(data["json"].read_text())]
    (d / "nofam.json").write_text(json.dumps(nofam))
    _bad(data, capsys, _args(data, out) + ["--survivors", str(d / "nofam.json")], out, "'family'")
    bad_out = d / "x.csv"
    _bad(data, capsys, _args(data, bad_out), bad_out, ".json or .npz")


def _no_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is present: the no-GPU failure cannot be shown here")
@pytest.mark.parametrize("how", ["device", "bound", "bound-torch"])
def test_i2_gpu_requested_without_gpu_fails_loudly(data, capsys, monkeypatch, how) -> None:
    pytest.importorskip("torch")
    out = data["dir"] / "gpu.json"
    if how == "device":
        argv = _args(data, out, "--backend", "torch", "--device", "cuda:0")
    else:  # slot bound to GPU 0 by the planner: auto / torch must use it or fail
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        argv = _args(data, out, "--backend", "auto" if how == "bound" else "torch")
    _bad(data, capsys, argv, out, "GPU")


def test_i7_numpy_worker_never_imports_torch(data, tmp_path) -> None:
    out = tmp_path / "lazy.json"
    code = ("import sys; from prng_workers.scoring import cli; rc = cli.main(sys.argv[1:]); "
            "sys.stderr.write('TORCH_LOADED=%s\\n' % ('torch' in sys.modules)); sys.exit(rc)")
    env_argv = _args(data, out, "--backend", "auto")
    proc = subprocess.run([sys.executable, "-c", code, *env_argv], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_LOADED=False" in proc.stderr
    assert json.loads(proc.stdout)["backend"] == "numpy"


@pytest.mark.gpu
def test_torch_on_gpu_matches_numpy(data, capsys) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA/ROCm GPU visible to torch")
    a, b = data["dir"] / "np.json", data["dir"] / "gpu.json"
    _run_ok(capsys, _args(data, a, "--backend", "numpy"))
    summary = _run_ok(capsys, _args(data, b, "--backend", "torch", "--device", "cuda"))
    assert summary["device"].startswith("cuda") and summary["device_name"] != "cpu"
    for x, y in zip(json.loads(a.read_text()), json.loads(b.read_text()), strict=True):
        for k, v in x["features"].items():
            assert y["features"][k] == pytest.approx(v, rel=1e-9, abs=1e-9), k
        assert y["metadata"]["gpu"].startswith("cuda")
