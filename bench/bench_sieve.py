#!/usr/bin/env python3
"""Sieve throughput: draw-tests per second (seeds x skips x window / s) per backend, side by
side with the NumPy path, in one run. Also mt19937 seeds/s on a 10-draw exact window.

    .venv/bin/python bench/bench_sieve.py [--families java_lcg mt19937 minstd] [--backends numpy cpu gpu]
                                          [--scale 1.0] [--json-out bench.json]

Each case runs once untimed (compile / cache load), then timed with `time.perf_counter`
(wall) and `time.process_time` (CPU seconds of all threads). Prints one JSON line per case
and a Markdown table for docs/benchmarks.md. A backend that cannot run here (no GPU) is
reported as skipped with the reason, never estimated.

Before/after of the cpu backend (`--before REV --rounds N`): the same cases run in child
processes, alternately with backends/cpu.py and sieve.py of git revision REV in a copy of the
work tree's package (everything else unchanged) and with the work tree, N rounds; medians and the ratio.
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


def before_after(args: argparse.Namespace) -> int:
    """Alternate child runs of this script: cpu.py + sieve.py of --before REV, then the work tree."""
    import shutil
    import statistics
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    base = [sys.executable, str(Path(__file__).resolve()), "--backends", "cpu", "--families", *args.families,
            "--scale", str(args.scale), "--window", str(args.window), "--skip-max", str(args.skip_max)]
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench-sieve-") as tmp:
        pkg = Path(tmp) / "prng_workers"
        shutil.copytree(root / "workers" / "prng_workers", pkg, ignore=shutil.ignore_patterns("__pycache__"))
        for rel in ("backends/cpu.py", "sieve.py"):  # the kernels and the loop that calls them
            spec = f"{args.before}:workers/prng_workers/{rel}"
            old = subprocess.run(["git", "-C", str(root), "show", spec], check=True, capture_output=True)
            (pkg / rel).write_bytes(old.stdout)
        envs = {"before": dict(os.environ, PYTHONPATH=tmp, NUMBA_CACHE_DIR=str(Path(tmp) / "nc")),
                "after": dict(os.environ)}
        load0 = os.getloadavg()
        for r in range(args.rounds):
            for side in ("before", "after"):
                out = Path(tmp) / f"{side}-{r}.json"
                subprocess.run([*base, "--json-out", str(out)], env=envs[side], check=True,
                               stdout=subprocess.DEVNULL)
                for row in json.loads(out.read_text())["rows"]:
                    rows[side].append(row | {"round": r})
                    print(json.dumps({"side": side, **row, "round": r}), flush=True)
    print(f"\nloadavg before {load0}, after {os.getloadavg()}")
    print("\n| family | case | before draw-tests/CPU-s | after draw-tests/CPU-s | after/before (CPU-s) "
          "| after/before (wall) |\n|---|---|---|---|---|---|")
    for fam, case in dict.fromkeys((x["family"], x["case"]) for x in rows["after"]):
        sel = {side: [x for x in rows[side] if (x["family"], x["case"]) == (fam, case)] for side in rows}
        med = {side: {key: statistics.median(x[key] for x in sel[side])
                      for key in ("draw_tests_per_cpu_s", "draw_tests_per_s")} for side in rows}
        b, a = med["before"], med["after"]
        print(f"| {fam} | {case} | {b['draw_tests_per_cpu_s']:.3g} | {a['draw_tests_per_cpu_s']:.3g} | "
              f"{a['draw_tests_per_cpu_s'] / b['draw_tests_per_cpu_s']:.2f} | "
              f"{a['draw_tests_per_s'] / b['draw_tests_per_s']:.2f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["java_lcg", "mt19937", "minstd"],
                    help="any of prng_workers.families.FAMILY_NAMES")
    ap.add_argument("--backends", nargs="+", default=["numpy", "cpu", "gpu"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the seed counts")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--skip-max", type=int, default=20)
    ap.add_argument("--json-out")
    ap.add_argument("--cpu-variant", choices=("fast", "portable", "512", "512+ifma"), default="fast",
                    help="the cpu backend's explicit-SIMD kernel code (default: the fastest on this CPU)")
    ap.add_argument("--before", metavar="REV",
                    help="before/after: backends/cpu.py + sieve.py of REV vs the work tree")
    ap.add_argument("--rounds", type=int, default=2, help="before/after rounds (A, B, A, B, ...)")
    args = ap.parse_args()
    if args.before:
        return before_after(args)
    if args.cpu_variant != "fast":
        from prng_workers.backends import cpu

        variants = {"portable": cpu.VARIANT_PORTABLE, "512": cpu.WIDE, "512+ifma": cpu.WIDE | cpu.IFMA}
        want = variants[args.cpu_variant]
        if want not in cpu.variants():
            raise SystemExit(f"--cpu-variant {args.cpu_variant}: this CPU runs only {cpu.variants()}")
        cpu.FAST["affine"] = want  # what run_sieve's cpu backend uses
        cpu.FAST["mt19937"] = want & cpu.WIDE

    import numba

    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpu": cpu_model(), "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
           "numpy": np.__version__, "numba": numba.__version__, "python": platform.python_version(),
           "loadavg_start": os.getloadavg(), "gpu": gpu_backend.unavailable_reason() or "available",
           "cpu_variant": args.cpu_variant}
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
                    if backend == "gpu":  # device-to-host bytes: a counter + 12 B per survivor, per chunk
                        chunks = -(-n // gpu_backend.GpuSieve.chunk)
                        row |= {"d2h_bytes": 4 * chunks + 4 * gpu_backend.RECORD_WORDS * surv,
                                "d2h_bytes_per_seed_array": 8 * n}  # what per-seed best_cnt/best_skip was
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
