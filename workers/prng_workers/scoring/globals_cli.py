"""`prng-score-globals`: features of the draw history itself, computed once per run.

They are the same for every seed, so no worker recomputes them; `prng-score-aggregate`
adds them to every record as `features.global_<split>_<name>`. Per history (train,
holdout): `n_draws`; `entropy_<mod>` (Shannon entropy of the residues mod 8/125/1000, bits)
and `entropy_<mod>_norm` (divided by log2(mod)); frequency bias of the values mod m:
`freq_chi2_per_dof` (chi-square vs uniform / (m-1)), `freq_max_rel_dev`
(max |count - n/m| / (n/m)); gaps between repeats of the same value:
`gap_mean`, `gap_std`, `gap_max` (a uniform source has gap_mean ~ m), `repeat_rate`
(fraction of draws equal to the previous one).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from prng_workers.errors import CliParser, InputError, run_cli
from prng_workers.scoring.features import MODS

VERSION = 1


def history_globals(values: np.ndarray, m: int) -> dict[str, float]:
    v = np.asarray(values, dtype=np.int64) % m
    n = int(v.size)
    out: dict[str, float] = {"n_draws": float(n)}
    for mod in MODS:
        counts = np.bincount(v % mod, minlength=mod)
        prob = counts[counts > 0] / n
        ent = float(-(prob * np.log2(prob)).sum())
        out[f"entropy_{mod}"] = ent
        out[f"entropy_{mod}_norm"] = ent / float(np.log2(mod))
    counts = np.bincount(v, minlength=m).astype(np.float64)
    expected = n / m
    out["freq_chi2_per_dof"] = float(((counts - expected) ** 2 / expected).sum() / max(1, m - 1))
    out["freq_max_rel_dev"] = float(np.abs(counts - expected).max() / expected)
    # gaps: positions sorted by value; consecutive positions of the same value
    order = np.argsort(v, kind="stable")
    same = v[order][1:] == v[order][:-1]
    gaps = np.diff(order)[same]
    out["gap_mean"] = float(gaps.mean()) if gaps.size else 0.0
    out["gap_std"] = float(gaps.std()) if gaps.size else 0.0
    out["gap_max"] = float(gaps.max()) if gaps.size else 0.0
    out["repeat_rate"] = float(np.count_nonzero(v[1:] == v[:-1]) / n)
    return out


def compute_globals(train: np.ndarray, holdout: np.ndarray | None, m: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": VERSION, "kind": "score_globals", "m": m,
                           "train": history_globals(train, m)}
    if holdout is not None:
        doc["holdout"] = history_globals(holdout, m)
    return doc


def flat_features(doc: dict[str, Any]) -> dict[str, float]:
    """`global_<split>_<name>` features of a globals document."""
    return {f"global_{split}_{k}": float(v) for split in ("train", "holdout")
            for k, v in doc.get(split, {}).items()}


def load_globals(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"globals {path}: cannot read ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "score_globals" or doc.get("version") != VERSION:
        raise InputError(f"globals {path}: not a prng-score-globals v{VERSION} file")
    return doc


def run(argv: list[str] | None) -> dict[str, Any]:
    from prng_workers.atomic import atomic_write_json
    from prng_workers.scoring.cli import _load_history

    ap = CliParser(prog="prng-score-globals", description=__doc__)
    ap.add_argument("--train-history", required=True)
    ap.add_argument("--holdout-history", default=None)
    ap.add_argument("--mod", type=int, default=1000)
    ap.add_argument("--out", required=True, help="globals JSON file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.mod < 2:
        raise InputError(f"--mod must be >= 2, got {args.mod}")
    train = _load_history(args.train_history, "train history")
    holdout = _load_history(args.holdout_history, "holdout history") if args.holdout_history else None
    doc = compute_globals(train, holdout, args.mod)
    try:
        atomic_write_json(args.out, doc, indent=1)
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return {"out": args.out, "n_train": int(train.size),
            "n_holdout": None if holdout is None else int(holdout.size),
            "seconds": round(time.perf_counter() - t0, 4)}


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
