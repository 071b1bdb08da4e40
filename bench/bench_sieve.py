#!/usr/bin/env python3
"""Sieve throughput: draw-tests per second (seeds x skips x window / s) per backend, side by
side with the NumPy path, in one run. Also mt19937 seeds/s on a 10-draw exact window.

    .venv/bin/python bench/bench_sieve.py [--families java_lcg mt19937 minstd] [--backends numpy cpu gpu]
                                          [--scale 1.0] [--json-out bench.json]

Each case runs once untimed (compile / cache load), then timed with `time.perf_counter`
(wall) and `time.process_time` (CPU seconds of all threads). Prints one JSON line per case
and a Markdown table for docs/benchmarks.md. A backend that cannot run here (no GPU) is
reported as skipped with the reason, never estimated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time

import numpy as np

from prng_workers.backends import gpu as gpu_backend
from prng_workers.sieve import SieveJob, run_sieve

# seeds per timed run at scale 1 (sized for a few seconds each on 2 CPU cores)
SEEDS = {"numpy": 2_000, "cpu": 400_000, "gpu": 1 << 28}
EXACT_SEEDS = {"numpy": 20_000, "cpu": 40_000_000, "gpu": 1 << 30}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(job: SieveJob, backend: str) -> tuple[float, float, int]:
    warm = SieveJob(job.family, job.residues, job.m, job.offset, job.skip_min, job.skip_max, job.threshold,
                    job.seed_start, job.seed_start + 64, job.direction)
    run_sieve(warm, backend)  # compile / load the kernels outside the timing
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_sieve(job, backend)
    return time.perf_counter() - w0, time.process_time() - c0, res.survivors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["java_lcg", "mt19937", "minstd"])
    ap.add_argument("--backends", nargs="+", default=["numpy", "cpu", "gpu"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the seed counts")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--skip-max", type=int, default=20)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import numba

    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpu": cpu_model(), "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
           "numpy": np.__version__, "numba": numba.__version__, "python": platform.python_version(),
           "loadavg_start": os.getloadavg(), "gpu": gpu_backend.unavailable_reason() or "available"}
    print(json.dumps({"env": env}), flush=True)
    rng = np.random.default_rng(1)
    r = rng.integers(0, 1000, args.window)
    r10 = rng.integers(0, 1000, 10)
    rows = []
    gpu_reason = gpu_backend.unavailable_reason()
    for family in args.families:
        label0 = f"k={args.window} skips 0..{args.skip_max} tau=0.01"
        cases = [(label0, r, args.skip_max, 0.01, SEEDS)]
        if family == "mt19937":
            cases.append(("exact 10-draw window", r10, 0, 1.0, EXACT_SEEDS))
        for label, res_, smax, tau, sizes in cases:
            for backend in args.backends:
                row = {"family": family, "case": label, "backend": backend}
                if backend == "gpu" and gpu_reason is not None:
                    row["skipped"] = f"no GPU: {gpu_reason}"
                else:
                    n = max(64, int(sizes[backend] * args.scale))
                    job = SieveJob(family, res_, 1000, 0, 0, smax, tau, 10**9, 10**9 + n)
                    wall, cpu_s, surv = timed(job, backend)
                    tests = n * (smax + 1) * len(res_)
                    row |= {"seeds": n, "skips": smax + 1, "window": len(res_), "survivors": surv,
                            "wall_s": round(wall, 4), "cpu_s": round(cpu_s, 4), "seeds_per_s": n / wall,
                            "draw_tests_per_s": tests / wall,
                            "draw_tests_per_cpu_s": tests / max(cpu_s, 1e-9)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    env["loadavg_end"] = os.getloadavg()
    print(json.dumps({"env_end": {"loadavg_end": env["loadavg_end"]}}), flush=True)
    # Markdown table with the speed-up over NumPy for the same case
    base = {(x["family"], x["case"]): x for x in rows if x["backend"] == "numpy" and "skipped" not in x}
    print("\n| family | case | backend | seeds | wall s | draw-tests/s | seeds/s | x NumPy "
          "| draw-tests/CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        if "skipped" in x:
            print(f"| {x['family']} | {x['case']} | {x['backend']} | - | - | skipped: {x['skipped']} | | | |")
            continue
        b = base.get((x["family"], x["case"]))
        speed = f"{x['draw_tests_per_s'] / b['draw_tests_per_s']:.1f}" if b else "-"
        print(f"| {x['family']} | {x['case']} | {x['backend']} | {x['seeds']:,} | {x['wall_s']:.2f} | "
              f"{x['draw_tests_per_s']:.3g} | {x['seeds_per_s']:.3g} | {speed} | "
              f"{x['draw_tests_per_cpu_s']:.3g} |")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
