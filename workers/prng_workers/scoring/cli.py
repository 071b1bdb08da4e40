"""`prng-score`: score one chunk of survivors against the train and holdout histories.

Prints one JSON summary line on success (count, seconds, seeds_per_s, backend, device,
visible_devices, peak_rss_mb, ...). Bad input -> `error: ...` on stderr, exit 2, nothing
written. A GPU asked for (`--device cuda[:N]`, or `--backend auto` in a process bound to
a GPU) that is not there is an error too (i2): never a silent CPU fallback.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from prng_workers.errors import CliParser, InputError, run_cli
from prng_workers.scoring import engine, output

OUT_SUFFIXES = (".json", ".npz")


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (kernel's ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="prng-score", description=__doc__)
    p.add_argument("--survivors", required=True, help="survivors chunk: JSON list or NPZ (+ sidecar)")
    p.add_argument("--start", type=int, default=None, help="first survivor index of the slice")
    p.add_argument("--stop", type=int, default=None, help="end (exclusive) of the slice")
    p.add_argument("--train-history", required=True, help="JSON list of ints (train draws)")
    p.add_argument("--holdout-history", required=True, help="JSON list of ints (holdout draws)")
    p.add_argument("--family", required=True, help="PRNG family; must match the survivors' family")
    p.add_argument("--mod", type=int, default=1000, help="modulus m of the draws (default 1000)")
    p.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto",
                   help="auto: torch on the bound GPU if CUDA/HIP_VISIBLE_DEVICES names one, else numpy")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="output file: .json (records) or .npz (+ .meta.json)")
    p.add_argument("--job-id", default="", help="job id recorded in every record's metadata")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU intra-op threads (default 1: one worker per slot; 0 = torch default)")
    p.add_argument("--batch-seeds", type=int, default=None,
                   help="seeds per sub-batch (default: from --memory-budget-mb)")
    p.add_argument("--memory-budget-mb", type=float, default=engine.DEFAULT_BUDGET_MB,
                   help="working memory of one sub-batch, sizes it (default %(default)s)")
    return p


def _load_history(path: str, what: str) -> np.ndarray:
    from prng_workers.formats import load_int_list

    values = load_int_list(path)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{what} {path}: must be a non-empty JSON list of ints")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{what} {path}: must hold only integers")
    if int(arr.min()) < 0:
        raise InputError(f"{what} {path}: draws must be >= 0")
    return arr.astype(np.int64)


def _check_family(cols: dict[str, np.ndarray], family: str, path: str) -> None:
    from prng_workers.contract import check_recorded_family

    check_recorded_family(cols, {}, family, f"survivors {path}")  # the controller's check, same words


def _check_mod(cols: dict[str, np.ndarray], m: int, path: str) -> None:
    from prng_workers.contract import check_recorded_mod

    check_recorded_mod(cols, {}, m, f"survivors {path}")


def _skips(cols: dict[str, np.ndarray], count: int, path: str) -> np.ndarray:
    from prng_workers.contract import check_best_skip

    skip = check_best_skip(cols, f"survivors {path}")
    if skip is None:
        return np.zeros(count, dtype=np.int64)  # spec: skip 0 unless the record gives best_skip
    return skip.astype(np.int64)


def _offset(cols: dict[str, np.ndarray], n_train: int, path: str) -> int:
    """The sieve's `offset` the survivors were found at (0 without it). Step 1 reads the
    history from index `offset` on, after `offset` generator calls (docs/sieve.md); Step 3
    does the same: train draws [offset:] against draws offset + (i+1)(skip+1), so a seed
    found at offset o > 0 and skip s > 0 scores on the draws it was found on."""
    if "offset" not in cols:
        return 0
    off = np.asarray(cols["offset"])
    if off.dtype.kind not in "iu" or (off.size and int(off.min()) < 0):
        raise InputError(f"survivors {path}: offset holds {off[:1].tolist()}, expected an integer >= 0")
    values = np.unique(off)
    if values.size > 1:
        raise InputError(
            f"survivors {path}: records have offsets {values[:3].tolist()}, "
            "expected one offset for the whole file (one Step 1 run)"
        )
    o = int(values[0]) if values.size else 0
    if o >= n_train:
        raise InputError(
            f"survivors {path}: offset {o} leaves no train draw (train history has "
            f"{n_train}), expected the train history to start where Step 1's history starts"
        )
    return o


def load_survivors(path: str, start: int | None, stop: int | None) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a survivors file, with the NPZ sidecar's job parameters added
    as columns (in JSON they are fields of every record already). An empty or out-of-range
    slice is an InputError, never a silently shorter chunk."""
    from prng_workers import formats

    npz = Path(path).suffix.lower() == ".npz"
    if npz:
        if not Path(path).exists():
            raise InputError(f"survivors {path}: file not found")
        total = int(formats.read_meta(path).get("count", 0))
    else:
        full = formats.read_survivors(path)
        total = int(full["seeds"].shape[0])
    lo = 0 if start is None else start
    hi = total if stop is None else stop
    if lo < 0 or hi < 0 or not lo < hi <= total:
        raise InputError(f"survivors {path}: slice [{start}, {stop}) is out of range or empty "
                         f"for {total} survivors")
    if not npz:
        return {k: v[lo:hi] for k, v in full.items()}
    cols = formats.read_survivors(path, lo, hi)
    count = hi - lo
    for key, value in formats.survivors_params(path).items():
        if key in cols or key in output.SEED_KEYS:
            continue
        if not isinstance(value, (bool, int, float, str)):
            value = json.dumps(value)  # lists/objects kept verbatim as JSON text
        cols[key] = np.full(count, value)
    return cols


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prng_workers.families import get_family

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix not in OUT_SUFFIXES:
        raise InputError(f"--out must end in .json or .npz, got {args.out!r}")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    if args.mod < 2:
        raise InputError(f"--mod must be >= 2, got {args.mod}")
    family = get_family(args.family)
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    backend = engine.make_backend(args.backend, args.device, args.threads)  # fails early on a missing GPU
    train = _load_history(args.train_history, "train history")
    holdout = _load_history(args.holdout_history, "holdout history")
    for name, arr in (("train", train), ("holdout", holdout)):
        if int(arr.max()) >= args.mod:
            raise InputError(f"{name} history has draws >= --mod {args.mod}")
    cols = load_survivors(args.survivors, args.start, args.stop)
    _, seeds = output.seed_column(cols)
    _check_family(cols, args.family, args.survivors)
    _check_mod(cols, args.mod, args.survivors)
    skips = _skips(cols, int(seeds.size), args.survivors)
    offset = _offset(cols, int(train.size), args.survivors)
    train = train[offset:]  # the draws before the sieve's offset are not the seed's stream
    n_draws = int(train.size + holdout.size)
    bsz = engine.batch_size(backend, n_draws, args.memory_budget_mb, args.batch_seeds)
    scores = engine.score_chunk(family, seeds, skips, train, holdout, args.mod, backend, bsz, offset)
    vis = engine.visible_devices()
    host = socket.gethostname()
    gpu = "none" if backend.device == "cpu" else f"{backend.device} {backend.device_name} (visible {vis})"
    run_meta = {"family": args.family, "m": args.mod, "host": host, "gpu": gpu, "job_id": args.job_id}
    cols_out = output.build_columns(seeds, scores.train, scores.holdout,
                                    {k: np.asarray(v) for k, v in cols.items()}, run_meta)
    write_scored(out, cols_out, {"family": args.family, "m": args.mod, "job_id": args.job_id,
                                 "host": host, "kind": "survivors_with_scores_chunk"})
    seconds = time.perf_counter() - t0
    return {
        "count": int(seeds.size), "seconds": round(seconds, 4),
        "seeds_per_s": round(seeds.size / seconds, 2) if seconds > 0 else None,
        "backend": backend.name, "device": backend.device, "device_name": backend.device_name,
        "visible_devices": vis, "peak_rss_mb": round(peak_rss_mb(), 1), "batch_seeds": bsz,
        "n_train": int(train.size), "n_holdout": int(holdout.size), "offset": offset, "family": args.family,
        "m": args.mod, "job_id": args.job_id, "host": host, "out": str(out),
    }


def write_scored(path: Path, cols: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write scored columns as JSON records or NPZ + sidecar, atomically."""
    from prng_workers.atomic import atomic_write_bytes

    if path.suffix == ".json":
        records = output.columns_to_records(cols)
        try:
            atomic_write_bytes(path, json.dumps(records).encode() + b"\n")
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError) as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    else:
        from prng_workers.formats import write_survivors

        write_survivors(path, cols, params=meta)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
