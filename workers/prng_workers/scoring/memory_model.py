"""`prng-memory-model`: measure the real peak RSS of `prng-score` and fit the memory model.

Each grid point runs the real worker as a child process on synthetic inputs (random
survivors NPZ, random histories) and takes its peak RSS from the kernel (`os.wait4`
rusage `ru_maxrss` of that child: measured, not estimated). Per backend it fits

    predicted_peak_mb = base_mb + bytes_per_seed_draw * chunk * n_draws / 2**20

(n_draws = train + holdout draws per seed) by least squares, then raises `base_mb` so
that every measurement lies on or under the line (an upper envelope: the planner must not
under-estimate), plus `--margin-mb`. Writes `data/memory_model.json`:

    {"version": 1, "models": {"numpy": {"base_mb": B, "bytes_per_seed_draw": K, ...},
     "torch": {...}}, "measurements": [...], "meta": {...}}

The worker sizes its sub-batches from `--memory-budget-mb` (default 64); the model holds
for that default. `predict_peak_mb(model, backend, chunk, n_draws)` is the one function
the planner needs for Step 3.

Step 1's worker, `prng-sieve`, is measured the same way (`--sieve-backends`, default cpu,numpy;
gpu when asked, skipped with the reason when the host has none) over `--sieve-chunk-sizes`
seeds on a random history. Its kernels hold bounded blocks whatever the chunk (cpu:
survivors only; numpy: blocks of 2**20 seeds), so its figure is flat: per backend
`base_mb` = the largest peak measured + `--margin-mb`, in a `sieve` section:

    "sieve": {"backends": {"cpu": {"base_mb": B, "max_peak_mb": P, "chunks": [...]}, ...},
              "skipped": {...}, "measurements": [...], "meta": {...}}

`--only sieve` (or `--only score`) measures one part and keeps the other from the existing
`--out` file. `sieve_peak_mb(model, backend)` is the planner's Step 1 figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from prng_workers.errors import CliParser, InputError, run_cli

MODEL_VERSION = 1
DEFAULT_CHUNKS = (250, 1000, 4000)
DEFAULT_TRAIN_LENGTHS = (2000, 14450)
DEFAULT_SIEVE_CHUNKS = (100_000, 1_000_000, 4_000_000)
SIEVE_BACKENDS = ("auto", "numpy", "cpu", "gpu")  # prng-sieve --backend
PARTS = ("score", "sieve")


def default_model_path() -> Path:
    """`data/memory_model.json` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[3] / "data" / "memory_model.json"


def load_model(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    p = Path(path) if path is not None else default_model_path()
    try:
        model = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"memory model {p}: cannot read ({exc})") from None
    if not isinstance(model, dict) or model.get("version") != MODEL_VERSION or "models" not in model:
        raise InputError(f"memory model {p}: not a version {MODEL_VERSION} memory model")
    return model


def predict_peak_mb(model: dict[str, Any], backend: str, chunk: int, n_draws: int) -> float:
    """Predicted peak RSS (MB) of one worker: base_mb + K * chunk * n_draws / 2**20."""
    try:
        m = model["models"][backend]
    except KeyError:
        raise InputError(
            f"memory model has no backend {backend!r} (has {', '.join(model.get('models', {}))})"
        ) from None
    return float(m["base_mb"]) + float(m["bytes_per_seed_draw"]) * chunk * n_draws / 2**20


def sieve_peak_mb(model: dict[str, Any] | None, backend: str) -> float | None:
    """Predicted peak RSS (MB) of one `prng-sieve` worker on `backend` (its own names: cpu,
    numpy, gpu, auto), whatever the chunk; None when the model has no figure for it."""
    entry = ((model or {}).get("sieve") or {}).get("backends", {}).get(backend)
    return float(entry["base_mb"]) if isinstance(entry, dict) and entry.get("base_mb") else None


def fit(points: list[tuple[float, float]], margin_mb: float = 0.0) -> dict[str, float]:
    """Least-squares line through (x = chunk*n_draws/2**20, peak_mb), then an upper envelope."""
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    if x.size >= 2 and np.ptp(x) > 0:
        k, b = np.polyfit(x, y, 1)
    else:
        k, b = 0.0, float(y.mean())
    k = round(max(0.0, float(k)), 4)  # memory never shrinks with more work
    resid = y - (b + k * x)
    # envelope: the smallest base with every point on or under the line (rounded up)
    base = math.ceil((float((y - k * x).max()) + margin_mb) * 100) / 100
    return {
        "base_mb": base,
        "bytes_per_seed_draw": k,
        "lsq_base_mb": round(float(b), 2),
        "max_residual_mb": round(float(np.abs(resid).max()), 2),
        "points": int(x.size),
    }


def _make_inputs(
    work: Path, max_chunk: int, train_len: int, holdout_len: int, family: str, seed: int
) -> tuple[Path, Path, Path]:
    from prng_workers.formats import write_survivors

    rng = np.random.default_rng(seed)
    surv = work / f"surv_{max_chunk}.npz"
    if not surv.exists():
        seeds = np.sort(rng.choice(2**40, max_chunk, replace=False)).astype(np.uint64)
        write_survivors(
            surv,
            {
                "seeds": seeds,
                "best_skip": rng.integers(0, 4, max_chunk),
                "forward_match_rate": rng.random(max_chunk),
                "reverse_match_rate": rng.random(max_chunk),
            },
            params={"family": family},
        )
    train = work / f"train_{train_len}.json"
    holdout = work / f"holdout_{holdout_len}.json"
    train.write_text(json.dumps(rng.integers(0, 1000, train_len).tolist()))
    holdout.write_text(json.dumps(rng.integers(0, 1000, holdout_len).tolist()))
    return surv, train, holdout


def measure_once(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one worker child; its peak RSS comes from the kernel's rusage of that child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: {stderr.strip()[-300:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "summary": summary,
    }


def worker_argv(
    surv: Path,
    train: Path,
    holdout: Path,
    chunk: int,
    family: str,
    backend: str,
    device: str | None,
    out: Path,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "prng_workers.scoring.cli",
        "--survivors",
        str(surv),
        "--start",
        "0",
        "--stop",
        str(chunk),
        "--train-history",
        str(train),
        "--holdout-history",
        str(holdout),
        "--family",
        family,
        "--backend",
        backend,
        "--out",
        str(out),
        "--job-id",
        f"memmodel-{backend}-{chunk}",
    ]
    if device:
        argv += ["--device", device]
    return argv


def _make_history(work: Path, n_draws: int, seed: int) -> Path:
    """A random draw history (spec §7 records) of `n_draws` draws, both sessions."""
    import datetime

    rng = np.random.default_rng(seed)
    day0 = datetime.date(2000, 1, 1)
    recs = [
        {
            "date": (day0 + datetime.timedelta(days=i // 2)).isoformat(),
            "session": ("midday", "evening")[i % 2],
            "draw": int(d),
        }
        for i, d in enumerate(rng.integers(0, 1000, n_draws))
    ]
    path = work / f"history_{n_draws}.json"
    path.write_text(json.dumps(recs))
    return path


def sieve_argv(history: Path, chunk: int, args: argparse.Namespace, backend: str, out: Path) -> list[str]:
    """The real `prng-sieve` (its module, in this interpreter) over seeds [0, chunk)."""
    return [
        sys.executable,
        "-m",
        "prng_workers.sieve_cli",
        "--family",
        args.family,
        "--history",
        str(history),
        "--window",
        str(args.sieve_window),
        "--skip-max",
        str(args.sieve_skip_max),
        "--threshold",
        str(args.sieve_threshold),
        "--seed-start",
        "0",
        "--seed-end",
        str(chunk),
        "--backend",
        backend,
        "--out",
        str(out),
    ]


def measure_sieve(args: argparse.Namespace, work: Path, backends: list[str], chunks: list[int]) -> dict:
    """The `sieve` section: peak RSS of real `prng-sieve` children per backend and chunk."""
    history = _make_history(work, args.sieve_window * (args.sieve_skip_max + 1) + 64, 11)
    measurements: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for backend in backends:
        for chunk in chunks:
            for rep in range(args.repeats):
                try:
                    r = measure_once(sieve_argv(history, chunk, args, backend, work / "sieve.npz"))
                except RuntimeError as exc:
                    # asked but not on this host (no GPU, no Numba): said, not fatal
                    if f"--backend {backend}:" not in str(exc):
                        raise
                    skipped[backend] = str(exc).split("error: ", 1)[-1]
                    break
                s = r["summary"]
                measurements.append(
                    {
                        "backend": backend,
                        "resolved": s["backend"],
                        "device": s["device"],
                        "chunk": chunk,
                        "peak_rss_mb": r["peak_rss_mb"],
                        "wall_s": r["wall_s"],
                        "seconds": round(s["seconds"], 3),
                        "seeds_per_s": round(s["seeds_per_s"], 1),
                        "survivors": s["survivors"],
                        "repeat": rep,
                    }
                )
                print(json.dumps(measurements[-1]), file=sys.stderr)
            if backend in skipped:
                break
    figures = {}
    for backend in backends:
        ms = [m for m in measurements if m["backend"] == backend]
        if not ms:
            continue
        peak = max(m["peak_rss_mb"] for m in ms)
        figures[backend] = {
            # rounded up to 0.01 MB; round() first: 142.8 * 100 is 14280.000000000002
            "base_mb": math.ceil(round((peak + args.margin_mb) * 100, 6)) / 100,
            "max_peak_mb": peak,
            "chunks": sorted({m["chunk"] for m in ms}),
            "resolved": ms[0]["resolved"],
            "device": ms[0]["device"],
        }
    return {
        "formula": "predicted_peak_mb = base_mb: the largest peak measured + margin_mb, whatever the chunk",
        "backends": figures,
        "skipped": skipped,
        "measurements": measurements,
        "meta": _meta(args)
        | {
            "numba": _dist_version("numba"),
            "window": args.sieve_window,
            "skip_max": args.sieve_skip_max,
            "threshold": args.sieve_threshold,
            "history_draws": args.sieve_window * (args.sieve_skip_max + 1) + 64,
        },
    }


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "family": args.family,
        "margin_mb": args.margin_mb,
        "command": "prng-memory-model " + " ".join(args.argv),
    }


def _dist_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it into this process."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise InputError(f"expected positive integers, got {text!r}")
    return vals


def measure_score(
    args: argparse.Namespace, work: Path, chunks: list[int], lengths: list[int], backends: list[str]
) -> dict[str, Any]:
    """The Step 3 model: real `prng-score` children over the grid, fitted per backend."""
    measurements: list[dict[str, Any]] = []
    for n_train in lengths:
        n_hold = max(1, round(n_train * args.holdout_ratio))
        surv, train, holdout = _make_inputs(work, max(chunks), n_train, n_hold, args.family, 7)
        for backend in backends:
            for chunk in chunks:
                for rep in range(args.repeats):
                    out = work / f"out.{args.out_format}"
                    argv = worker_argv(
                        surv,
                        train,
                        holdout,
                        chunk,
                        args.family,
                        backend,
                        args.device if backend == "torch" else None,
                        out,
                    )
                    r = measure_once(argv)
                    s = r["summary"]
                    measurements.append(
                        {
                            "backend": backend,
                            "device": s["device"],
                            "chunk": chunk,
                            "n_train": n_train,
                            "n_holdout": n_hold,
                            "n_draws": n_train + n_hold,
                            "peak_rss_mb": r["peak_rss_mb"],
                            "worker_reported_peak_mb": s["peak_rss_mb"],
                            "seconds": s["seconds"],
                            "seeds_per_s": s["seeds_per_s"],
                            "batch_seeds": s["batch_seeds"],
                            "repeat": rep,
                            "out_format": args.out_format,
                        }
                    )
                    print(json.dumps(measurements[-1]), file=sys.stderr)
    models = {}
    for backend in backends:
        pts = [
            (m["chunk"] * m["n_draws"] / 2**20, m["peak_rss_mb"])
            for m in measurements
            if m["backend"] == backend
        ]
        models[backend] = fit(pts, args.margin_mb) | {
            "device": next(m["device"] for m in measurements if m["backend"] == backend)
        }
    return {
        "version": MODEL_VERSION,
        "formula": "predicted_peak_mb = base_mb + bytes_per_seed_draw * chunk * n_draws / 2**20",
        "n_draws": "train + holdout draws per seed",
        "models": models,
        "measurements": measurements,
        "meta": _meta(args)
        | {
            "torch": _dist_version("torch"),
            "out_format": args.out_format,
            "memory_budget_mb": "worker default",
        },
    }


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    for b in names:
        if b not in allowed:
            raise InputError(f"{flag}: unknown backend {b!r} ({', '.join(allowed)})")
    if not names:
        raise InputError(f"{flag}: no backend given ({', '.join(allowed)})")
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prng_workers.atomic import atomic_write_json

    parts = [args.only] if args.only else list(PARTS)
    chunks = _ints(args.chunk_sizes)
    lengths = _ints(args.train_lengths)
    backends = _names(args.backends, ("numpy", "torch"), "--backends")
    sieve_chunks = _ints(args.sieve_chunk_sizes)
    sieve_backends = _names(args.sieve_backends, SIEVE_BACKENDS, "--sieve-backends")
    if args.sieve_window < 1 or args.sieve_skip_max < 0 or not 0 < args.sieve_threshold <= 1:
        raise InputError(
            f"--sieve-window {args.sieve_window} / --sieve-skip-max {args.sieve_skip_max} / "
            f"--sieve-threshold {args.sieve_threshold}: expected >= 1, >= 0 and in (0, 1]"
        )
    # one part measured: the other is kept from the existing model file
    old = load_model(args.out) if len(parts) == 1 and Path(args.out).exists() else {}
    with tempfile.TemporaryDirectory(prefix="prng-memmodel-") as tmp:
        work = Path(tmp)
        if "score" in parts:
            doc = measure_score(args, work, chunks, lengths, backends)
        else:
            doc = {k: v for k, v in old.items() if k != "sieve"} or {
                "version": MODEL_VERSION,
                "models": {},
                "measurements": [],
                "meta": {"note": "Step 3 model not measured (--only sieve)"},
            }
        if "sieve" in parts:
            doc["sieve"] = measure_sieve(args, work, sieve_backends, sieve_chunks)
        elif "sieve" in old:
            doc["sieve"] = old["sieve"]
    try:
        atomic_write_json(args.out, doc, indent=1)
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    sieve = doc.get("sieve") or {}
    return {
        "out": str(args.out),
        "measured": parts,
        "models": doc["models"],
        "sieve": {b: f["base_mb"] for b, f in (sieve.get("backends") or {}).items()},
        "sieve_skipped": sieve.get("skipped") or {},
        "runs": (len(doc["measurements"]) if "score" in parts else 0)
        + (len(sieve["measurements"]) if "sieve" in parts else 0),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = CliParser(prog="prng-memory-model", description=__doc__)
    ap.add_argument("--chunk-sizes", default=",".join(map(str, DEFAULT_CHUNKS)))
    ap.add_argument("--train-lengths", default=",".join(map(str, DEFAULT_TRAIN_LENGTHS)))
    ap.add_argument(
        "--holdout-ratio", type=float, default=0.25, help="holdout draws per train draw (80/20 split: 0.25)"
    )
    ap.add_argument("--backends", default="numpy,torch")
    ap.add_argument("--device", default=None, help="torch device for the torch runs (default cpu)")
    ap.add_argument("--family", default="java_lcg")
    ap.add_argument(
        "--out-format",
        choices=["json", "npz"],
        default="json",
        help="worker output format during the runs (json holds more in memory)",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--margin-mb", type=float, default=0.0, help="added to the envelope's base_mb")
    ap.add_argument(
        "--sieve-chunk-sizes",
        default=",".join(map(str, DEFAULT_SIEVE_CHUNKS)),
        help="seeds per prng-sieve run",
    )
    ap.add_argument(
        "--sieve-backends",
        default="cpu,numpy",
        help="prng-sieve backends (auto, numpy, cpu, gpu); one the host lacks is skipped, said",
    )
    ap.add_argument("--sieve-window", type=int, default=64)
    ap.add_argument("--sieve-skip-max", type=int, default=0)
    ap.add_argument("--sieve-threshold", type=float, default=0.05)
    ap.add_argument(
        "--only",
        choices=PARTS,
        default=None,
        help="measure only this part; the other is kept from the existing --out file",
    )
    ap.add_argument("--out", default=str(default_model_path()))
    return ap


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)

    def command() -> dict:
        args = build_parser().parse_args(raw)
        args.argv = raw
        return run(args)

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
