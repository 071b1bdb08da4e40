#!/usr/bin/env python3
"""Total RSS of 12 Step 3 workers on one host, chunk 1000, survivors given as JSON: each
worker parsing the JSON whole (before, issue 10) vs the JSON converted once to NPZ on the
controller and memory-mapped by every worker (now).

One run, same inputs, the two sides interleaved (A, B, A, B...): a survivors JSON of
--records records in Step 1's bidirectional format (about 400 bytes a record, so 145,000
records ~ the 58 MB of seed 003's incident), the demo train/holdout histories. For each
side, --workers real `prng-score` children (NumPy backend) start at once, each on its own
chunk [i*chunk, (i+1)*chunk), and each child's peak RSS comes from the kernel (`os.wait4`
rusage); the total is their sum (a shared page of the memory-mapped NPZ counts once per
worker that touched it, so the figure is an upper bound for the NPZ side). Load: `uptime`
before and after. Figures go into docs/benchmarks.md (## One copy of the survivors per host).

    .venv/bin/python bench/bench_survivors_rss.py [--records 145000] [--workers 12] [--chunk 1000] \
        [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_json(path: Path, n: int) -> None:
    import numpy as np

    from prng_workers.formats import write_survivors

    rng = np.random.default_rng(3)
    seeds = np.unique(rng.integers(1, 1 << 48, n + n // 10, dtype=np.uint64))[:n]
    fr = rng.integers(1, 33, n) / 32
    rr = rng.integers(1, 33, n) / 32
    cols = {
        "seeds": seeds,
        "forward_match_rate": fr,
        "reverse_match_rate": rr,
        "score": (fr + rr) / 2,
        "matches": (fr * 32).astype(np.int64),
        "reverse_matches": (rr * 32).astype(np.int64),
        "total": np.full(n, 32, dtype=np.int64),
        "best_skip": rng.integers(0, 21, n),
    }
    params = {
        "family": "java_lcg",
        "direction": "bidirectional",
        "window": 32,
        "offset": 0,
        "skip_min": 0,
        "skip_max": 20,
        "threshold": 0.03,
        "mod": 1000,
        "sessions": "both",
        "seed_start": 0,
        "seed_end": 1 << 48,
        "reverse_window": 32,
    }
    write_survivors(path, cols, params)


def run_side(survivors: Path, workers: int, chunk: int, tmp: Path) -> tuple[float, float, float]:
    """(total peak RSS MB, largest one MB, wall s) of `workers` concurrent prng-score runs,
    started by a small launcher process: a child's ru_maxrss includes the RSS of the process
    it was forked from (the kernel folds the pre-exec high-water mark in), so the launcher
    imports nothing big."""
    argv = [
        sys.executable,
        __file__,
        "--launch",
        str(survivors),
        "--workers",
        str(workers),
        "--chunk",
        str(chunk),
        "--tmp",
        str(tmp),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    total, biggest, wall = json.loads(out.strip().splitlines()[-1])
    return total, biggest, wall


def launch(survivors: Path, workers: int, chunk: int, tmp: Path) -> tuple[float, float, float]:
    bin_dir = Path(sys.executable).parent
    procs = []
    t0 = time.perf_counter()
    for i in range(workers):
        argv = [
            str(bin_dir / "prng-score"),
            "--survivors",
            str(survivors),
            "--start",
            str(i * chunk),
            "--stop",
            str((i + 1) * chunk),
            "--train-history",
            str(REPO / "demo" / "train_history.json"),
            "--holdout-history",
            str(REPO / "demo" / "holdout_history.json"),
            "--family",
            "java_lcg",
            "--backend",
            "numpy",
            "--out",
            str(tmp / f"out{i}.json"),
            "--job-id",
            f"c{i}",
        ]
        procs.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
        )
    rss = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"prng-score failed: {p.stderr.read().decode()[-2000:] if p.stderr else ''}")
        rss.append(usage.ru_maxrss / 1024)
    return sum(rss), max(rss), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=145_000)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--launch", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.launch:
        print(json.dumps(launch(Path(a.launch), a.workers, a.chunk, Path(a.tmp))))
        return 0
    from prng_workers.formats import survivors_to_npz

    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:  # inputs in RAM, as on a preloaded host
        tmp = Path(d)
        src = tmp / "bidirectional_survivors.json"
        make_json(src, a.records)
        t0 = time.perf_counter()
        npz = tmp / "bidirectional_survivors.npz"
        survivors_to_npz(src, npz)
        convert_s = time.perf_counter() - t0
        sizes = {"json_mb": src.stat().st_size / 2**20, "npz_mb": npz.stat().st_size / 2**20}
        rows = []
        for r in range(a.rounds):
            for side, path in (("json", src), ("npz", npz)):
                total, biggest, wall = run_side(path, a.workers, a.chunk, tmp)
                rows.append(
                    {
                        "round": r,
                        "side": side,
                        "total_rss_mb": round(total, 1),
                        "max_worker_rss_mb": round(biggest, 1),
                        "wall_s": round(wall, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        json.dumps(
            {
                "records": a.records,
                "workers": a.workers,
                "chunk": a.chunk,
                **{k: round(v, 1) for k, v in sizes.items()},
                "convert_s": round(convert_s, 2),
                "load_before": load_before,
                "load_after": load_after,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
