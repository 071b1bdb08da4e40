"""`prng-sieve`: the seed sieve worker (pipeline Step 1) and `prng-sieve intersect`.

    prng-sieve --family java_lcg --history h.json --window 512 --skip-max 20 --threshold 0.01 \\
               --seed-start 0 --seed-end 1000000 --out survivors.npz
    prng-sieve --direction bidirectional ... --out bidirectional_survivors.npz
    prng-sieve intersect --forward fwd.npz --reverse rev.npz --out both.npz   # compat mode

On success: one JSON summary line on stdout, exit 0. Bad input: `error: <one line>` on
stderr, exit 2, no output file. Unexpected failure: exit 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from prng_workers.errors import InputError, run_cli
from prng_workers.families import FAMILY_NAMES

INTERSECT_KEYS = (
    "window",
    "offset",
    "skip_min",
    "skip_max",
    "threshold",
    "mod",
    "sessions",
    "seed_start",
    "seed_end",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (not argparse's usage dump)
        raise InputError(message)


def seed_int(text: str) -> int:
    """Integer seed bound: decimal, 0x hex, or an exact float form such as 1e9."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not math.isfinite(value) or value != int(value) or abs(value) > 2**53:
        raise argparse.ArgumentTypeError(f"not an exact integer: {text!r}")
    return int(value)


def check_output(path: str) -> Path:
    """Fail before any work when the output cannot be written (one line, exit 2)."""
    out = Path(path)
    if out.suffix.lower() not in (".json", ".npz"):
        raise InputError(f"--out {path}: extension must be .json or .npz")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {path}: folder {parent} is not writable")
    if out.is_dir():
        raise InputError(f"--out {path} is a directory")
    return out


def sieve_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="prng-sieve",
        description="Constant-skip seed sieve (forward, bidirectional, or "
        "the reversed_window compat mode). "
        "Subcommand: `prng-sieve intersect --forward F --reverse R --out O`.",
    )
    p.add_argument("--family", required=True, help=f"PRNG family: {', '.join(FAMILY_NAMES)}")
    p.add_argument("--history", required=True, help="draw history JSON (spec §7)")
    p.add_argument("--window", type=int, required=True, help="k: number of compared draws")
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        help="window start in the session-filtered history = generator calls skipped first",
    )
    p.add_argument("--skip-min", type=int, default=0)
    p.add_argument("--skip-max", type=int, default=0)
    p.add_argument(
        "--threshold", type=float, default=0.01, help="survive if the best match rate >= this, in (0, 1]"
    )
    p.add_argument("--mod", type=int, default=1000, help="m: draws are compared mod m")
    p.add_argument("--sessions", default="both", help="midday, evening or both")
    p.add_argument("--seed-start", type=seed_int, required=True, help="first seed (inclusive)")
    p.add_argument("--seed-end", type=seed_int, required=True, help="end seed (exclusive)")
    p.add_argument(
        "--direction",
        choices=("forward", "bidirectional", "reversed_window", "reverse"),
        default="forward",
        help="bidirectional = forward, then each survivor checked backwards from the newest "
        "draws (docs/sieve.md); reversed_window (old name reverse) = the forward generator "
        "against the window newest-first (compat mode of the replaced system)",
    )
    p.add_argument(
        "--reverse-window",
        type=int,
        default=0,
        help="bidirectional: newest draws the reverse check compares (0 = as many as the window, "
        "or all the draws after it if fewer)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "numpy", "cpu", "gpu"),
        default="auto",
        help="auto picks gpu > cpu (Numba) > numpy and reports which it used",
    )
    p.add_argument("--out", required=True, help="survivors file, .json or .npz")
    return p


def intersect_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="prng-sieve intersect",
        description="Compat: seeds in both a forward and a reversed_window result "
        "(true bidirectional survivors: prng-sieve --direction bidirectional).",
    )
    p.add_argument("--forward", required=True, help="survivors of the forward pass")
    p.add_argument("--reverse", required=True, help="survivors of the reversed_window (compat) pass")
    p.add_argument("--out", required=True, help="output, .json or .npz")
    return p


def run_sieve_cmd(argv: list[str]) -> dict[str, Any]:
    args = sieve_parser().parse_args(argv)
    from prng_workers.formats import load_history, write_survivors
    from prng_workers.sieve import make_job, run_sieve

    out = check_output(args.out)
    history = load_history(args.history)
    job = make_job(
        args.family,
        history,
        window=args.window,
        offset=args.offset,
        skip_min=args.skip_min,
        skip_max=args.skip_max,
        threshold=args.threshold,
        m=args.mod,
        sessions=args.sessions,
        seed_start=args.seed_start,
        seed_end=args.seed_end,
        direction=args.direction,
        reverse_window=args.reverse_window,
    )
    result = run_sieve(job, args.backend)
    # no backend in the file's params: backends give identical survivors, and chunks of one pass
    # run on different hosts/backends must merge (the summary line reports the backend)
    write_survivors(out, result.columns, job.params())
    secs = max(result.seconds, 1e-9)
    return {
        "seeds_tested": result.seeds_tested,
        "survivors": result.survivors,
        "seconds": round(result.seconds, 6),
        "seeds_per_s": result.seeds_tested / secs,
        "draw_tests_per_s": result.seeds_tested * job.n_skips * job.window / secs,
        "backend": result.backend,
        "device": result.device,
        "visible_devices": result.visible_devices,
        "family": job.family,
        "direction": job.direction,
        "need": job.need,
        "out": str(out),
        **result.extra,
    }


def run_intersect_cmd(argv: list[str]) -> dict[str, Any]:
    args = intersect_parser().parse_args(argv)
    from prng_workers.formats import file_sha256, read_survivors, survivors_params, write_survivors

    out = check_output(args.out)
    if Path(args.forward).resolve() == Path(args.reverse).resolve():
        raise InputError("--forward and --reverse are the same file (i28)")
    fp, rp = survivors_params(args.forward), survivors_params(args.reverse)
    # i28: each pass records its family and direction; a mislabelled or mismatched pass is refused
    for label, params, want in (
        ("--forward", fp, ("forward",)),
        ("--reverse", rp, ("reversed_window", "reverse")),
    ):
        if "family" not in params or "direction" not in params:
            raise InputError(f"{label} file does not record its family and direction; cannot verify the pass")
        if params["direction"] not in want:
            raise InputError(
                f"{label} file was made by a {params['direction']} pass, expected {want[0]} (i28)"
            )
    if fp["family"] != rp["family"]:
        raise InputError(f"family mismatch: forward pass {fp['family']}, reverse pass {rp['family']} (i28)")
    for key in INTERSECT_KEYS:
        if key in fp and key in rp and fp[key] != rp[key]:
            raise InputError(f"forward and reverse passes differ in {key}: {fp[key]} vs {rp[key]}")
    f, r = read_survivors(args.forward), read_survivors(args.reverse)
    same = all(np.array_equal(f.get(k), r.get(k)) for k in ("seeds", "match_rate", "best_skip"))
    if f["seeds"].size and same:
        # the i28 symptom: a "reverse" pass that actually re-ran the forward one
        raise InputError(
            "forward and reverse survivors are identical: the reverse pass looks like a "
            "re-run of the forward one (i28)"
        )
    seeds, fi, ri = np.intersect1d(f["seeds"], r["seeds"], assume_unique=True, return_indices=True)
    fr, rr = f["match_rate"][fi].astype(np.float64), r["match_rate"][ri].astype(np.float64)
    cols = {"seeds": seeds, "forward_match_rate": fr, "reverse_match_rate": rr, "score": (fr + rr) / 2}
    if "best_skip" in f:
        cols["best_skip"] = f["best_skip"][fi].astype(np.int64)
        cols["forward_best_skip"] = cols["best_skip"]
    if "best_skip" in r:
        cols["reverse_best_skip"] = r["best_skip"][ri].astype(np.int64)
    params = {k: fp[k] for k in INTERSECT_KEYS if k in fp}
    params |= {
        "family": fp["family"],
        "direction": "bidirectional",
        "forward_family": fp["family"],
        "forward_direction": fp["direction"],
        "reverse_family": rp["family"],
        "reverse_direction": rp["direction"],
        "forward_sha256": file_sha256(args.forward),
        "reverse_sha256": file_sha256(args.reverse),
    }
    n = write_survivors(out, cols, params)
    return {
        "forward": int(f["seeds"].shape[0]),
        "reverse": int(r["seeds"].shape[0]),
        "bidirectional": n,
        "family": fp["family"],
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["intersect"]:
        return run_cli(lambda: run_intersect_cmd(argv[1:]))
    return run_cli(lambda: run_sieve_cmd(argv))


if __name__ == "__main__":
    sys.exit(main())
