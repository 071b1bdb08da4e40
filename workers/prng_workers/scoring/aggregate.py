"""`prng-score-aggregate`: merge scored chunks into `survivors_with_scores` + a run manifest.

Every chunk output is validated whole (JSON parses into scored records; NPZ matches its
sidecar's sha256 and count, i3/i4). Every seed of the input survivors must appear exactly
once: missing, duplicated and unexpected seeds are counted and reported on one line
(exit 2, nothing written). `--partial` writes what finished when seeds are missing (failed
jobs, i15) with `"complete": false` in the manifest; duplicates and unexpected seeds are
always an error. Output sorted by score descending (ties: seed ascending), with the global
history features (`prng-score-globals`) added to every record. Both files are atomic; the
manifest is written last.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from prng_workers.errors import CliParser, InputError, run_cli
from prng_workers.formats import file_sha256, write_survivors
from prng_workers.scoring import output

MANIFEST_VERSION = 1


def read_chunk(path: Path) -> dict[str, np.ndarray]:
    """Columns of one scored chunk (JSON records or NPZ + sidecar), validated whole."""
    from prng_workers import formats

    if not path.exists():
        raise InputError(f"chunk {path}: missing")
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"chunk {path}: not valid JSON ({exc})") from None
        return output.records_to_columns(records, f"chunk {path}")
    if path.suffix == ".npz":
        formats.count_survivors(path)  # sha256 vs sidecar: a truncated file never counts
        cols = formats.read_survivors(path)
        for key in output.TOP:
            if key not in cols:
                raise InputError(f"chunk {path}: no {key!r} column (not a prng-score output)")
        return cols
    raise InputError(f"chunk {path}: extension must be .json or .npz")


def _chunk_paths(args: argparse.Namespace) -> list[Path]:
    paths = [Path(p) for p in args.chunks]
    if args.chunk_list:
        try:
            text = Path(args.chunk_list).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"chunk list {args.chunk_list}: {exc.strerror or exc}") from None
        paths += [Path(line.strip()) for line in text.splitlines() if line.strip()]
    if not paths:
        raise InputError("no chunk outputs given (positional paths or --chunk-list)")
    return paths


def _load_summaries(paths: list[str]) -> list[dict[str, Any]]:
    """Worker summary lines (one JSON object per line) kept by the dispatcher, for timings."""
    out = []
    for p in paths:
        try:
            lines = Path(p).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"summary {p}: {exc.strerror or exc}") from None
        for line in lines:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InputError(f"summary {p}: a line is not JSON") from None
    return out


def seed_accounting(expected: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Missing / duplicated / unexpected seeds of the merged output vs the input survivors."""
    uniq, counts = np.unique(got, return_counts=True)
    exp_uniq, exp_counts = np.unique(expected, return_counts=True)
    missing = np.setdiff1d(exp_uniq, uniq, assume_unique=True)
    unexpected = np.setdiff1d(uniq, exp_uniq, assume_unique=True)
    dups = uniq[counts > 1]
    return {"expected": int(expected.size), "scored": int(got.size), "missing": int(missing.size),
            "duplicated": int(dups.size), "unexpected": int(unexpected.size),
            "input_duplicates": int((exp_counts > 1).sum()),
            "examples": {"missing": [int(s) for s in missing[:5]],
                         "duplicated": [int(s) for s in dups[:5]],
                         "unexpected": [int(s) for s in unexpected[:5]]}}


def merge(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = list(chunks[0])
    for i, c in enumerate(chunks[1:], start=1):
        if set(c) != set(keys):
            diff = sorted(set(c) ^ set(keys))[:5]
            raise InputError(f"chunk outputs differ in their fields (chunk {i}: {', '.join(diff)})")
    return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prng_workers import formats
    from prng_workers.atomic import atomic_write_bytes, atomic_write_json
    from prng_workers.scoring.globals_cli import flat_features, load_globals

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix not in (".json", ".npz"):
        raise InputError(f"--out must end in .json or .npz, got {args.out!r}")
    manifest_path = Path(args.manifest) if args.manifest else Path(f"{out}.manifest.json")
    expected = formats.read_survivors(args.survivors)["seeds"]
    if expected.size == 0:
        raise InputError(f"{args.survivors}: no input survivors")
    globals_doc = load_globals(args.globals) if args.globals else None
    paths = _chunk_paths(args)
    done: list[dict[str, np.ndarray]] = []
    jobs: list[dict[str, Any]] = []
    for path in paths:
        try:
            cols = read_chunk(path)
        except InputError as exc:
            jobs.append({"path": str(path), "status": "failed", "error": str(exc)})
            continue
        if not cols or cols["seeds"].size == 0:
            jobs.append({"path": str(path), "status": "failed", "error": "no records"})
            continue
        hosts = sorted({str(h) for h in cols.get("metadata.host", np.array([""])).tolist()})
        jobs.append({"path": str(path), "status": "completed", "count": int(cols["seeds"].size),
                     "hosts": hosts})
        done.append(cols)
    if not done:
        raise InputError(f"none of the {len(paths)} chunk outputs is valid: {jobs[0]['error']}")
    merged = merge(done)
    acct = seed_accounting(expected, merged["seeds"])
    failed = [j for j in jobs if j["status"] == "failed"]
    if acct["duplicated"] or acct["unexpected"] or acct["input_duplicates"] or (
            acct["missing"] and not args.partial):
        raise InputError(
            f"seed accounting failed: {acct['missing']} missing, {acct['duplicated']} duplicated, "
            f"{acct['unexpected']} unexpected of {acct['expected']} input seeds "
            f"({len(failed)} of {len(paths)} chunk outputs invalid"
            f"{': ' + failed[0]['error'] if failed else ''}); nothing written")
    if globals_doc is not None:
        n = merged["seeds"].size
        for name, value in flat_features(globals_doc).items():
            merged[output.FEATURE + name] = np.full(n, value, dtype=np.float64)
    order = np.lexsort((merged["seeds"], -merged["score"]))  # score desc, then seed asc
    merged = {k: v[order] for k, v in merged.items()}
    if out.suffix == ".json":
        records = output.columns_to_records(merged)
        atomic_write_bytes(out, json.dumps(records).encode() + b"\n")
    else:
        write_survivors(out, merged, {"kind": "survivors_with_scores"}, sort_by_seed=False)
    digest = file_sha256(out)

    per_host: dict[str, dict[str, Any]] = defaultdict(lambda: {"jobs": 0, "seeds": 0, "seconds": 0.0})
    hosts_col = merged.get("metadata.host")
    if hosts_col is not None:
        names, counts = np.unique(hosts_col.astype(str), return_counts=True)
        for h, c in zip(names.tolist(), counts.tolist(), strict=True):
            per_host[h]["seeds"] = int(c)
    for job in jobs:
        for h in job.get("hosts", []):
            per_host[h]["jobs"] += 1
    summaries = _load_summaries(args.summaries)
    for s in summaries:
        if isinstance(s.get("host"), str) and isinstance(s.get("seconds"), (int, float)):
            per_host[s["host"]]["seconds"] = round(per_host[s["host"]]["seconds"] + s["seconds"], 4)
    expected_jobs = args.expected_jobs if args.expected_jobs is not None else len(paths)
    manifest = {
        "version": MANIFEST_VERSION, "kind": "score_manifest", "complete": acct["missing"] == 0,
        "out": str(out), "out_sha256": digest, "format": out.suffix[1:],
        "survivors": str(args.survivors),
        "jobs": {"expected": expected_jobs, "completed": len(done), "failed": len(failed),
                 "not_reported": max(0, expected_jobs - len(paths)), "list": jobs},
        "seeds": acct, "per_host": dict(per_host),
        "timings": {"worker_seconds_total": round(sum(float(s.get("seconds", 0)) for s in summaries), 4),
                    "worker_summaries": len(summaries),
                    "aggregate_seconds": round(time.perf_counter() - t0, 4)},
        "globals": globals_doc, "aggregated_on": socket.gethostname(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(manifest_path, manifest, indent=1)
    return {"out": str(out), "manifest": str(manifest_path), "count": int(merged["seeds"].size),
            "complete": manifest["complete"], "missing": acct["missing"],
            "jobs_completed": len(done), "jobs_failed": len(failed),
            "seconds": manifest["timings"]["aggregate_seconds"]}


def build_parser() -> argparse.ArgumentParser:
    ap = CliParser(prog="prng-score-aggregate", description=__doc__)
    ap.add_argument("chunks", nargs="*", help="scored chunk outputs (.json / .npz)")
    ap.add_argument("--chunk-list", help="file with one chunk output path per line")
    ap.add_argument("--survivors", required=True, help="the input survivors (expected seeds)")
    ap.add_argument("--globals", help="prng-score-globals output to add to every record")
    ap.add_argument("--summaries", nargs="*", default=[],
                    help="files of worker summary lines (per-host timings in the manifest)")
    ap.add_argument("--expected-jobs", type=int, default=None,
                    help="jobs planned (default: number of chunk paths given)")
    ap.add_argument("--out", required=True, help="survivors_with_scores.json or .npz")
    ap.add_argument("--manifest", help="manifest path (default: <out>.manifest.json)")
    ap.add_argument("--partial", action="store_true",
                    help="write what finished when seeds are missing (manifest complete=false)")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
