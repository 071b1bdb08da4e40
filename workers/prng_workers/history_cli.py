"""`prng-make-history`: a draw history with a planted seed (spec §6), optionally noisy.

History entry j (0-based, in the chosen sessions' order) for j >= offset is draw j - offset
of the planted stream: g(T^(offset + (j-offset+1)(skip+1))(init(seed))) mod m, so
`prng-sieve --offset O --skip-min S --skip-max S` finds the seed at rate 1.0 (less the noise).
Entries before `offset` are random filler. With --noise q, a fraction q of the planted
entries is replaced by a different random value (so the expected rate is exactly 1 - q).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from prng_workers.atomic import atomic_write_json
from prng_workers.errors import CliParser, InputError, run_cli
from prng_workers.families import FAMILY_NAMES, get_family
from prng_workers.formats import parse_sessions


def make_history(family: str, seed: int, count: int, *, skip: int = 0, offset: int = 0, m: int = 1000,
                 noise: float = 0.0, noise_seed: int = 0, sessions: str = "both",
                 start_date: str = "2020-01-01") -> tuple[list[dict[str, Any]], np.ndarray]:
    """Returns (history records, boolean mask of planted entries left intact)."""
    fam = get_family(family)
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    if not 0 <= offset < count:
        raise InputError(f"offset must be in [0, count), got {offset}")
    if not 0.0 <= noise < 1.0:
        raise InputError(f"noise must be in [0, 1), got {noise}")
    if skip < 0:
        raise InputError(f"skip must be >= 0, got {skip}")
    try:
        day0 = dt.date.fromisoformat(start_date)
    except ValueError:
        raise InputError(f"start date must be YYYY-MM-DD, got {start_date!r}") from None
    sess = parse_sessions(sessions)
    rng = np.random.default_rng(noise_seed)
    values = rng.integers(0, m, count, dtype=np.int64)  # filler before `offset`
    planted = fam.draws(np.array([seed], dtype=np.uint64), count - offset, m, skip, offset)[0]
    values[offset:] = planted
    intact = np.zeros(count, dtype=bool)
    intact[offset:] = True
    if noise > 0:
        hit = np.nonzero(rng.random(count - offset) < noise)[0] + offset
        if m > 1:  # a different value: true + 1..m-1
            values[hit] = (values[hit] + rng.integers(1, m, hit.size)) % m
            intact[hit] = False
    history = []
    for j, v in enumerate(values.tolist()):
        day, slot = divmod(j, len(sess))
        history.append({"date": (day0 + dt.timedelta(days=day)).isoformat(), "session": sess[slot],
                        "draw": int(v)})
    return history, intact


def run(argv: list[str] | None) -> dict[str, Any]:
    p = CliParser(prog="prng-make-history", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, help=f"one of {', '.join(FAMILY_NAMES)}")
    p.add_argument("--seed", type=lambda s: int(s, 0), required=True)
    p.add_argument("--count", type=int, required=True, help="number of history entries")
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--mod", type=int, default=1000)
    p.add_argument("--noise", type=float, default=0.0, help="fraction of planted draws replaced")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--sessions", default="both", help="midday, evening or both (alternating)")
    p.add_argument("--start-date", default="2020-01-01")
    p.add_argument("--out", required=True, help="history JSON")
    p.add_argument("--train-out", help="optional train_history.json (first --train-fraction of draws)")
    p.add_argument("--holdout-out", help="optional holdout_history.json (the rest)")
    p.add_argument("--train-fraction", type=float, default=0.8)
    args = p.parse_args(argv)
    if not 0.0 < args.train_fraction < 1.0:
        raise InputError(f"--train-fraction must be in (0, 1), got {args.train_fraction}")
    if args.seed < 0 or args.seed >= 1 << 64:
        raise InputError("seed must be in [0, 2^64)")
    history, intact = make_history(args.family, args.seed, args.count, skip=args.skip, offset=args.offset,
                                   m=args.mod, noise=args.noise, noise_seed=args.noise_seed,
                                   sessions=args.sessions, start_date=args.start_date)
    for path in (args.out, args.train_out, args.holdout_out):  # check all before writing any
        if path:
            parent = Path(path).parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise InputError(f"cannot write output {path}: folder missing or not writable")
    draws = [h["draw"] for h in history]
    cut = int(len(draws) * args.train_fraction)
    try:
        outputs = ((args.train_out, draws[:cut]), (args.holdout_out, draws[cut:]), (args.out, history))
        for path, obj in outputs:
            if path:
                atomic_write_json(path, obj)
    except OSError as exc:
        raise InputError(f"cannot write output: {exc}") from None
    return {"out": args.out, "count": len(history), "family": args.family, "seed": args.seed,
            "skip": args.skip, "offset": args.offset, "mod": args.mod,
            "planted_intact": int(intact.sum()), "planted": len(history) - args.offset,
            "train": cut if args.train_out else None,
            "holdout": len(draws) - cut if args.holdout_out else None}


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
