"""The input contract of a pipeline step, checked once on the controller before any job (i31, i33).

`check_score_inputs` (Step 3) and `check_sieve_inputs` (Step 1) read every input file whole
and range-check every parameter. A problem raises InputError whose message is one line
naming the file or parameter, what was found and what is expected: found once here, a bad
input costs one message, not `max_attempts` failed attempts per chunk. `worker_identity()`
is what a run's identity records of the worker code (version, code hash, feature-set version).

By hand: `prng-check score --survivors S --train-history T [--holdout-history H] --family F
--mod M`, `prng-check sieve --history H --family F --window K ... --seed-start A --seed-stop B`,
`prng-check identity`: one JSON line and exit 0, or `error: <one line>` and exit 2.

Survivors can hold millions of seeds: their checks are array operations (sorting, not Python
loops), and NPZ columns are memory-mapped, not loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from prng_workers import __version__, formats
from prng_workers.errors import InputError, run_cli

INT32_MAX = (1 << 31) - 1  # the GPU sieve kernel takes window, offset and skips as int
BLOCK = 1 << 22  # rows per block when a check walks a memory-mapped column


# ---------------------------------------------------------------- parameters


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_param(name: str, value: Any, lo: int, hi: int, expected: str | None = None) -> int:
    """An integer parameter in [lo, hi]; the message says what was found and what is expected."""
    expected = expected or f"an integer in [{lo}, {hi}]"
    if not _is_int(value) or not lo <= int(value) <= hi:
        raise InputError(f"{name}: found {formats.show(_plain(value))}, expected {expected}")
    return int(value)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def check_family(family: Any) -> Any:
    """The family object of a known family name; the message lists the known ones."""
    from prng_workers.families import FAMILY_NAMES, get_family

    if not isinstance(family, str) or family not in FAMILY_NAMES:
        raise InputError(
            f"family: unknown family {formats.show(_plain(family))}, "
            f"expected one of {', '.join(FAMILY_NAMES)}"
        )
    return get_family(family)


def check_mod(mod: Any, fam: Any) -> int:
    """m: an integer >= 2 (m = 1 makes every draw match) and within the family's outputs."""
    return _int_param("mod", mod, 2, fam.max_mod, f"an integer in [2, {fam.max_mod}] for family {fam.name}")


def _space(bits: int) -> str:
    return f"2^{bits}"


# ---------------------------------------------------------------- survivors


def first_duplicate(seeds: np.ndarray) -> tuple[int, int, int] | None:
    """(smallest duplicated seed, its count, duplicate rows in all), or None if all differ.

    Sorted input (what the sieve writes) is proven unique block by block without a copy;
    anything else is sorted once."""
    n = int(seeds.shape[0])
    for lo in range(0, max(n - 1, 0), BLOCK):
        block = seeds[lo : min(n, lo + BLOCK + 1)]
        if not np.all(block[1:] > block[:-1]):
            break
    else:
        return None
    s = np.sort(seeds)
    same = s[1:] == s[:-1]
    if not same.any():
        return None
    dup = s[int(np.argmax(same))]
    lo, hi = np.searchsorted(s, dup, "left"), np.searchsorted(s, dup, "right")
    return int(dup), int(hi - lo), int(np.count_nonzero(same))


def _recorded(cols: dict[str, np.ndarray], params: dict[str, Any], key: str) -> np.ndarray | None:
    """Values of a job parameter the survivors recorded: their column, else the sidecar's value."""
    if key in cols:
        return np.asarray(cols[key])
    if key in params:
        return np.asarray([params[key]])
    return None


def check_recorded_family(
    cols: dict[str, np.ndarray], params: dict[str, Any], family: str, where: str
) -> None:
    """The survivors must record their family and it must be the one asked for (no silent mix-up)."""
    values = _recorded(cols, params, "family")
    if values is None:
        raise InputError(
            f"{where}: no 'family' recorded, expected the survivors' family ({family!r} asked for)"
        )
    if values.dtype.kind == "S":
        values = values.astype(str)
    if values.dtype.kind != "U" or not np.all(values == family):
        found = ", ".join(str(v) for v in np.unique(values.astype(str)).tolist()[:4])
        raise InputError(f"{where}: recorded family {found}, expected {family}")


def check_recorded_mod(cols: dict[str, np.ndarray], params: dict[str, Any], mod: int, where: str) -> None:
    """A recorded modulus (`m` or `mod`, optional) must equal the one asked for."""
    for key in ("m", "mod"):
        values = _recorded(cols, params, key)
        if values is None:
            continue
        if values.dtype.kind not in "iu" or not np.all(values == mod):
            found = ", ".join(formats.show(_plain(v)) for v in np.unique(values).tolist()[:4])
            raise InputError(f"{where}: recorded {key} {found}, expected {mod}")


def check_best_skip(cols: dict[str, np.ndarray], where: str) -> np.ndarray | None:
    """best_skip (optional; skip 0 without it): integers >= 0."""
    if "best_skip" not in cols:
        return None
    skip = np.asarray(cols["best_skip"])
    if skip.dtype.kind not in "iu":
        raise InputError(f"{where}: best_skip holds {skip.dtype} values, expected integers >= 0")
    if skip.dtype.kind == "i" and skip.size:
        neg = np.flatnonzero(skip < 0)
        if neg.size:
            i = int(neg[0])
            raise InputError(f"{where}: record {i} has best_skip {int(skip[i])}, expected an integer >= 0")
    return skip


def _json_survivors(p: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    data = formats._load_json(p, "survivors")
    if not isinstance(data, list):
        raise InputError(
            f"survivors {p}: found a JSON {formats.json_type(data)}, expected a JSON list of survivor records"
        )
    return formats.records_to_columns(data, f"survivors {p}"), {}


def _npz_survivors(p: Path, sha256: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    meta = formats.read_meta(p)
    if meta.get("npz_sha256") and meta["npz_sha256"] != sha256:
        raise InputError(
            f"survivors {p}: content sha256 {sha256[:12]}, sidecar expects "
            f"{str(meta['npz_sha256'])[:12]} (partial or stale file)"
        )
    members = formats._npz_members(p)  # memory-mapped, nothing loaded
    if "seeds" not in members:
        raise InputError(
            f"survivors {p}: no 'seeds' array (arrays: {', '.join(sorted(members))}), "
            "expected one uint64 'seeds' array"
        )
    count = meta.get("count")
    for name, arr in members.items():
        if arr.ndim != 1 or arr.shape[0] != count:
            raise InputError(
                f"survivors {p}: array {name!r} has shape {arr.shape}, sidecar says {count} rows"
            )
    if members["seeds"].dtype != np.uint64:
        raise InputError(f"survivors {p}: seeds are {members['seeds'].dtype}, expected uint64 (i27)")
    params = meta.get("params") or {}
    if not isinstance(params, dict):
        raise InputError(
            f"survivors {p}: sidecar params are a JSON {formats.json_type(params)}, expected an object"
        )
    return members, params


def check_survivors(path: str | os.PathLike[str], family: str, mod: int) -> dict[str, Any]:
    """A whole survivors file (JSON records or NPZ + sidecar), see check_score_inputs."""
    p = Path(path)
    where = f"survivors {p}"
    fmt = p.suffix.lower()[1:]
    if fmt not in ("json", "npz"):
        raise InputError(f"{where}: extension {p.suffix or '(none)'!r}, expected .json or .npz")
    if not p.exists():
        raise InputError(f"{where}: file not found")
    if not p.is_file():
        raise InputError(f"{where}: not a regular file, expected a .{fmt} file")
    sha256 = formats.file_sha256(p)
    cols, params = _json_survivors(p) if fmt == "json" else _npz_survivors(p, sha256)
    seeds = cols["seeds"]
    count = int(seeds.shape[0])
    if count == 0:
        raise InputError(f"{where}: no survivors (0 records), expected at least one")
    dup = first_duplicate(seeds)
    if dup is not None:
        seed, times, extra = dup
        rows = "row" if extra == 1 else "rows"
        raise InputError(
            f"{where}: seed {seed} appears {times} times ({extra} repeated {rows} in all), "
            "expected each seed once"
        )
    check_recorded_family(cols, params, family, where)
    check_recorded_mod(cols, params, mod, where)
    check_best_skip(cols, where)
    return {"path": str(p), "format": fmt, "count": count, "sha256": sha256}


# ---------------------------------------------------------------- histories


def check_draws(path: str | os.PathLike[str], what: str, mod: int, minimum: int, why: str) -> dict[str, Any]:
    """A train/holdout history: a JSON list of ints in [0, mod), at least `minimum` long."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: file not found")
    arr = formats.load_draws(p, what, mod)
    if arr.size < minimum:
        raise InputError(f"{what} {p}: {arr.size} draws, scoring needs at least {minimum} ({why})")
    return {"path": str(p), "draws": int(arr.size), "sha256": formats.file_sha256(p)}


def check_score_inputs(
    survivors: str, train_history: str, holdout_history: str | None, family: str, mod: int
) -> dict[str, Any]:
    """Validate a whole Step 3 input set (raises InputError, one line).

    Survivors: the seed field, seeds integers in [0, 2^64) (uint64 in an NPZ, i27), no
    duplicates, not empty, the recorded family equal to `family` and a recorded m/mod equal
    to `mod`, best_skip integers >= 0. Histories: JSON lists of ints in [0, mod), the train
    one at least features.MIN_TRAIN_DRAWS long. Returns what the run identity records."""
    from prng_workers.scoring import features

    fam = check_family(family)
    m = check_mod(mod, fam)
    train = check_draws(
        train_history,
        "train history",
        m,
        features.MIN_TRAIN_DRAWS,
        f"the {features.N_WINDOWS} temporal windows of {features.WINDOW} draws",
    )
    holdout = None
    if holdout_history is not None and str(holdout_history) != "":
        holdout = check_draws(
            holdout_history, "holdout history", m, features.MIN_HOLDOUT_DRAWS, "holdout features need a draw"
        )
    surv = check_survivors(survivors, family, m)
    return {
        "survivors": surv,
        "train_history": train,
        "holdout_history": holdout,
        "family": family,
        "mod": m,
        "n_draws": train["draws"] + (holdout["draws"] if holdout else 0),
    }


# ---------------------------------------------------------------- sieve


def _threshold(value: Any) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)) or not 0 < float(value) <= 1:
        raise InputError(f"threshold: found {formats.show(_plain(value))}, expected a number in (0, 1]")
    return float(value)


def _sessions(value: Any) -> tuple[str, ...]:
    try:
        return formats.parse_sessions(value)
    except (InputError, TypeError, AttributeError):
        raise InputError(
            f"sessions: found {formats.show(_plain(value))}, expected midday, evening or both"
        ) from None


def check_sieve_inputs(
    history: str,
    family: str,
    mod: int,
    window: int,
    offset: int,
    skip_min: int,
    skip_max: int,
    sessions: Any,
    threshold: float,
    seed_start: int,
    seed_stop: int,
    direction: str = "forward",
    reverse_window: int = 0,
) -> dict[str, Any]:
    """Validate a whole Step 1 input set (raises InputError, one line).

    The history must hold offset + window draws of the chosen sessions (bidirectional: and
    draws after them for the reverse check); the seed range [seed_start, seed_stop) must be
    non-empty and inside the family's seed space (seeds at or above 2^seed_bits repeat smaller
    ones); window, offset and skips fit the GPU kernel's int."""
    from prng_workers.sieve import DIRECTION_ALIASES, DIRECTIONS, make_job

    direction = DIRECTION_ALIASES.get(direction, direction)
    if direction not in DIRECTIONS:
        raise InputError(
            f"direction: found {formats.show(_plain(direction))}, expected one of {', '.join(DIRECTIONS)}"
        )

    fam = check_family(family)
    m = check_mod(mod, fam)
    window = _int_param("window", window, 1, INT32_MAX)
    offset = _int_param("offset", offset, 0, INT32_MAX)
    skip_min = _int_param("skip_min", skip_min, 0, INT32_MAX)
    skip_max = _int_param(
        "skip_max", skip_max, skip_min, INT32_MAX, f"an integer in [skip_min {skip_min}, {INT32_MAX}]"
    )
    thr = _threshold(threshold)
    sess = _sessions(sessions)
    space = 1 << fam.seed_bits
    seed_start = _int_param(
        "seed_start",
        seed_start,
        0,
        space - 1,
        f"an integer in [0, {_space(fam.seed_bits)}) (the seed space of {fam.name})",
    )
    seed_stop = _int_param(
        "seed_stop",
        seed_stop,
        seed_start + 1,
        space,
        f"an integer > seed_start {seed_start} and <= {_space(fam.seed_bits)} (the seed space of {fam.name})",
    )
    p = Path(history)
    if not p.exists():
        raise InputError(f"history {p}: file not found")
    hist = formats.load_history(p)
    n = sum(1 for rec in hist if rec["session"] in sess)
    if offset + window > n:
        raise InputError(
            f"history {p}: {n} draws for sessions {','.join(sess)}, window {window} "
            f"at offset {offset} needs at least {offset + window}"
        )
    # the worker's own checks, as a last guard (same code every job runs)
    job = make_job(
        family,
        hist,
        window=window,
        offset=offset,
        skip_min=skip_min,
        skip_max=skip_max,
        threshold=thr,
        m=m,
        sessions=",".join(sess),
        seed_start=seed_start,
        seed_end=seed_stop,
        direction=direction,
        reverse_window=_int_param("reverse_window", reverse_window, 0, INT32_MAX),
    )
    return {
        "history": {
            "path": str(p),
            "draws": len(hist),
            "draws_in_sessions": n,
            "sha256": formats.file_sha256(p),
        },
        "family": family,
        "mod": m,
        "window": window,
        "offset": offset,
        "skip_min": skip_min,
        "skip_max": skip_max,
        "sessions": job.sessions,
        "threshold": thr,
        "seed_start": seed_start,
        "seed_stop": seed_stop,
        "seeds": seed_stop - seed_start,
        "need": job.need,
        "direction": job.direction,
        **(
            {"reverse_window": job.reverse_window, "reverse_need": job.reverse_need}
            if job.reverse_window
            else {}
        ),
    }


# ---------------------------------------------------------------- worker identity


def tree_hash(pkg_dir: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 over every .py file of a package tree: roles/worker_deploy/files/tree_hash.py's
    algorithm exactly (relative path, NUL, content, NUL; sorted walk, no __pycache__)."""
    h = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(pkg_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, pkg_dir).replace(os.sep, "/")
            with open(path, "rb") as fh:
                h.update(rel.encode() + b"\0" + fh.read() + b"\0")
            count += 1
    return h.hexdigest(), count


def worker_identity() -> dict[str, Any]:
    """What the run identity records of the worker code: a change of any of these changes results."""
    import prng_workers
    from prng_workers.scoring.features import FEATURES_VERSION

    digest, _ = tree_hash(os.path.dirname(os.path.abspath(prng_workers.__file__)))
    return {"version": __version__, "code_sha256": digest, "features_version": FEATURES_VERSION}


# ---------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (not argparse's usage dump)
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    from prng_workers.sieve_cli import seed_int

    p = _Parser(prog="prng-check", description="Check a step's inputs once, before any job runs.")
    sub = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    s = sub.add_parser("score", help="Step 3 inputs")
    s.add_argument("--survivors", required=True, help="survivors: JSON list or NPZ (+ sidecar)")
    s.add_argument("--train-history", required=True, help="JSON list of ints (train draws)")
    s.add_argument("--holdout-history", default=None, help="JSON list of ints (holdout draws)")
    s.add_argument("--family", required=True, help="PRNG family the survivors were sieved with")
    s.add_argument("--mod", type=int, default=1000, help="modulus m (default 1000)")
    v = sub.add_parser("sieve", help="Step 1 inputs")
    v.add_argument("--history", required=True, help="draw history JSON (spec §7)")
    v.add_argument("--family", required=True)
    v.add_argument("--mod", type=int, default=1000)
    v.add_argument("--window", type=int, required=True)
    v.add_argument("--offset", type=int, default=0)
    v.add_argument("--skip-min", type=int, default=0)
    v.add_argument("--skip-max", type=int, default=0)
    v.add_argument("--sessions", default="both")
    v.add_argument("--threshold", type=float, default=0.01)
    v.add_argument("--seed-start", type=seed_int, required=True)
    v.add_argument("--seed-stop", "--seed-end", dest="seed_stop", type=seed_int, required=True)
    v.add_argument("--direction", default="forward", help="forward, bidirectional or reversed_window")
    v.add_argument("--reverse-window", type=int, default=0)
    sub.add_parser("identity", help="version, code hash and feature-set version of this worker package")
    return p


def run(argv: list[str]) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.what == "score":
        return check_score_inputs(
            args.survivors, args.train_history, args.holdout_history, args.family, args.mod
        )
    if args.what == "sieve":
        return check_sieve_inputs(
            args.history,
            args.family,
            args.mod,
            args.window,
            args.offset,
            args.skip_min,
            args.skip_max,
            args.sessions,
            args.threshold,
            args.seed_start,
            args.seed_stop,
            args.direction,
            args.reverse_window,
        )
    return worker_identity()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
