#!/usr/bin/env python3
"""Step 3 scoring benchmark: batched NumPy vs torch vs the per-seed reference, side by side.

One run, same inputs: a random train history of --train draws (default 14,450, the real
size), holdout --holdout draws, a survivors NPZ of --chunk seeds (java_lcg, best_skip
0..3). The NumPy and torch figures are end-to-end `prng-score` runs in a child process
(load, draws, features, atomic write; torch import included), and that child's peak RSS
comes from the kernel (`os.wait4`). The per-seed reference (plain Python, one seed at a
time) runs in this process on --ref-seeds seeds only and is extrapolated per seed; the
output says so. Figures go into docs/benchmarks.md (## Step 3 scoring).

    .venv/bin/python bench/bench_scoring.py [--chunk 1000] [--train 14450] [--ref-seeds 5]

Before/after on the CPU (`--before REV --no-torch --repeats N`): the NumPy worker also runs with
scoring/features.py of git revision REV in a copy of the work tree's package (everything else
unchanged), alternating before, after, before, after; medians and their ratio are reported.
With `--before-package` the whole worker package of REV is the "before" side (families' draws,
JSON output and features together).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prng_workers.families import get_family
from prng_workers.formats import write_survivors
from prng_workers.scoring.memory_model import measure_once, worker_argv
from prng_workers.scoring.reference import reference_score_seed


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _before_tree(rev: str, dest: Path, whole: bool = False) -> Path:
    """The work tree's worker package with scoring/features.py taken from git revision `rev`
    (`whole`: the whole worker package of `rev`)."""
    root = Path(__file__).resolve().parent.parent
    pkg = dest / "prng_workers"
    if whole:
        dest.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(root), "archive", rev, "workers/prng_workers"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest), "--strip-components=1"], input=tar, check=True)
        return dest
    shutil.copytree(root / "workers" / "prng_workers", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    spec = f"{rev}:workers/prng_workers/scoring/features.py"
    old = subprocess.run(["git", "-C", str(root), "show", spec], check=True, capture_output=True).stdout
    (pkg / "scoring" / "features.py").write_bytes(old)
    return dest


def _before_after(args: argparse.Namespace, d: Path) -> dict:
    """NumPy worker runs, before (features.py of --before) and after (the work tree), interleaved."""
    before = _before_tree(args.before, d / "before", args.before_package)
    before_env = dict(os.environ, PYTHONPATH=str(before))
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(max(1, args.repeats)):
        for side, env in (("before", before_env), ("after", None)):
            argv = worker_argv(d / "surv.npz", d / "train.json", d / "holdout.json", args.chunk, args.family,
                               "numpy", None, d / f"out-{side}.{args.out_format}")
            r = measure_once(argv, env)
            runs[side].append({"seeds_per_s": r["summary"]["seeds_per_s"], "seconds": r["summary"]["seconds"],
                               "process_wall_s": r["wall_s"], "process_cpu_s": r["cpu_s"],
                               "peak_rss_mb": r["peak_rss_mb"],
                               "device": r["summary"]["device"], "batch_seeds": r["summary"]["batch_seeds"],
                               "seeds_per_s_incl_startup": round(args.chunk / r["wall_s"], 2)})
            print(json.dumps({"side": side, **runs[side][-1]}), flush=True)
    med = {k: statistics.median(x["seeds_per_s"] for x in v) for k, v in runs.items()}
    # the whole child's CPU time (interpreter start and imports included): steadier under load
    cpu = {k: statistics.median(x["process_cpu_s"] for x in v) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
    return {"rev": args.before, "runs": runs, "median_seeds_per_s": med, "max_peak_rss_mb": rss,
            "ratio_after_over_before": med["after"] / med["before"],
            "median_process_cpu_s": cpu, "ratio_process_cpu_before_over_after": cpu["before"] / cpu["after"],
            "after_best": max(runs["after"], key=lambda x: x["seeds_per_s"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--train", type=int, default=14450)
    ap.add_argument("--holdout", type=int, default=3612)
    ap.add_argument("--family", default="java_lcg")
    ap.add_argument("--ref-seeds", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy worker (large GPU chunks)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    ap.add_argument("--repeats", type=int, default=1, help="worker runs per backend (best is reported)")
    ap.add_argument("--out-format", choices=("json", "npz"), default="json", help="the worker's output file")
    ap.add_argument("--before", metavar="REV",
                    help="also run the NumPy worker with scoring/features.py of this revision, interleaved")
    ap.add_argument("--before-package", action="store_true",
                    help="with --before: the whole worker package of that revision (draws, output too)")
    args = ap.parse_args()

    rng = np.random.default_rng(2026)
    load = os.getloadavg()
    results: dict[str, object] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores", "loadavg_before": [round(v, 2) for v in load],
        "chunk": args.chunk, "n_train": args.train, "n_holdout": args.holdout, "family": args.family,
        "command": "python bench/bench_scoring.py " + " ".join(sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        d = Path(tmp)
        train = rng.integers(0, 1000, args.train)
        holdout = rng.integers(0, 1000, args.holdout)
        (d / "train.json").write_text(json.dumps(train.tolist()))
        (d / "holdout.json").write_text(json.dumps(holdout.tolist()))
        seeds = np.sort(rng.choice(2**40, args.chunk, replace=False)).astype(np.uint64)
        skips = rng.integers(0, 4, args.chunk)
        write_survivors(d / "surv.npz", {"seeds": seeds, "best_skip": skips}, params={"family": args.family})

        if args.before and not args.no_numpy:
            results["numpy_before_after"] = _before_after(args, d)
        backends = ([] if args.no_numpy or args.before else ["numpy"]) + ([] if args.no_torch else ["torch"])
        for backend in backends:
            best = None
            for _ in range(args.repeats):
                argv = worker_argv(d / "surv.npz", d / "train.json", d / "holdout.json", args.chunk,
                                   args.family, backend, args.device if backend == "torch" else None,
                                   d / f"out.{args.out_format}")
                r = measure_once(argv)
                if best is None or r["summary"]["seeds_per_s"] > best["summary"]["seeds_per_s"]:
                    best = r
            assert best is not None
            results[backend] = {"seeds_per_s": best["summary"]["seeds_per_s"],
                                "seconds": best["summary"]["seconds"], "process_wall_s": best["wall_s"],
                                "seeds_per_s_incl_startup": round(args.chunk / best["wall_s"], 2),
                                "peak_rss_mb": best["peak_rss_mb"], "device": best["summary"]["device"],
                                "batch_seeds": best["summary"]["batch_seeds"]}

        fam = get_family(args.family)
        t0 = time.perf_counter()
        for i in range(args.ref_seeds):
            reference_score_seed(fam, int(seeds[i]), int(skips[i]), train.tolist(), holdout.tolist(), 1000)
        per_seed = (time.perf_counter() - t0) / args.ref_seeds
        results["reference"] = {"seeds_per_s": round(1.0 / per_seed, 3),
                                "seconds_per_seed": round(per_seed, 4), "measured_seeds": args.ref_seeds,
                                "extrapolated_chunk_seconds": round(per_seed * args.chunk, 1)}
    if "numpy_before_after" in results:
        results["numpy"] = results["numpy_before_after"]["after_best"]  # type: ignore[index]
    if "numpy" in results:
        np_rate = results["numpy"]["seeds_per_s"]  # type: ignore[index]
        results["numpy_vs_reference"] = round(np_rate / results["reference"]["seeds_per_s"], 1)  # type: ignore[index]
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    results["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(results, indent=1))
    print()
    print("| path | seeds/s | peak RSS (MB) | note |\n|---|---|---|---|")
    ref = results["reference"]  # type: ignore[assignment]
    for backend in ("numpy", "torch"):
        if backend in results:
            r = results[backend]  # type: ignore[assignment]
            print(f"| batched {backend} ({r['device']}) | {r['seeds_per_s']:.1f} | {r['peak_rss_mb']:.1f} | "
                  f"worker run(), chunk {args.chunk}, sub-batch {r['batch_seeds']}; whole process incl. "
                  f"interpreter start: {r['seeds_per_s_incl_startup']:.1f} seeds/s |")
    print(f"| per-seed reference | {ref['seeds_per_s']:.2f} | - | measured on {ref['measured_seeds']} seeds, "
          f"extrapolated: {ref['extrapolated_chunk_seconds']} s per chunk |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
