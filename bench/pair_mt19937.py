#!/usr/bin/env python3
"""mt19937 exact seed search, the project against php_mt_seed, interleaved in one run.

The question both sides answer: which 32-bit seeds give this first output. A secret seed's
first std::mt19937 output V is computed here; php_mt_seed gets V >> 1 (PHP 7.1+'s mt_rand()
is the first output shifted right by one) and searches all 2^32 seeds; the project runs the
Step 1 sieve (`run_sieve`, cpu backend: mt19937, window = [V], m = 2^32, skip 0, threshold
1.0) over all 2^32 seeds. Both as child processes with the same thread count (OMP_NUM_THREADS /
NUMBA_NUM_THREADS), in the order A, B, A, B, ...; wall time from here, CPU seconds of the child
from the kernel (os.wait4). seeds/s = 2^32 / wall (php_mt_seed also makes a sub-second pass for
PHP 3.0.7-5.2.0 and tempers twice per seed for the two modern PHP variants; both are part of
its wall time, as they are of an operator's). Optionally the project code of another git
revision (`--before REV`) on a fraction of the seeds, for the before/after ratio.

Build the peer outside the repository first (never copy its code in):
    cp -r ../shared/peers/php_mt_seed /tmp/peers/ && make -C /tmp/peers/php_mt_seed

    .venv/bin/python bench/pair_mt19937.py [--php /tmp/peers/php_mt_seed/php_mt_seed] [--rounds 2]
        [--threads 2] [--before e33ccd3 --before-fraction 0.125] [--json-out pair.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = 1 << 32


def first_output(seed: int) -> int:
    from prng_workers.families import get_family

    return int(get_family("mt19937").draws([seed], 1, SPACE)[0, 0])


def project_side(value: int, start: int, end: int) -> dict:
    """Runs in the child: the sieve over [start, end), survivors and the in-process seconds."""
    import numpy as np

    from prng_workers.sieve import SieveJob, run_sieve

    t0 = time.perf_counter()
    job = SieveJob("mt19937", np.array([value]), SPACE, 0, 0, 0, 1.0, start, end)
    res = run_sieve(job, "cpu")
    return {"survivors": [int(s) for s in res.columns["seeds"]], "sieve_s": time.perf_counter() - t0}


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, child CPU s, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]}: exit status {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime, out


def before_tree(rev: str, tmp: Path) -> Path:
    """A copy of the worker package at git revision `rev` (the code measured as 'before')."""
    dest = tmp / "before"
    dest.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "workers/prng_workers"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest / "workers"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--php", default="/tmp/peers/php_mt_seed/php_mt_seed", help="the built php_mt_seed")
    ap.add_argument("--seed", type=int, default=1_234_567_890, help="the secret seed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=2, help="A,B pairs")
    ap.add_argument("--before", help="also run the project code of this git revision")
    ap.add_argument(
        "--before-fraction",
        type=float,
        default=0.125,
        help="part of the 2^32 seeds the --before code searches (its rate is per seed)",
    )
    ap.add_argument("--json-out")
    ap.add_argument("--side", choices=("project",), help=argparse.SUPPRESS)  # internal: child mode
    ap.add_argument("--value", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--range", type=int, nargs=2, default=(0, SPACE), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side == "project":
        print(json.dumps(project_side(args.value, *args.range)))
        return 0

    php = Path(args.php)
    if not os.access(php, os.X_OK):
        raise SystemExit(f"--php {php}: not an executable; build it first (see this script's help)")
    value = first_output(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads))
    me = [sys.executable, str(Path(__file__).resolve()), "--side", "project", "--value", str(value)]
    load0 = os.getloadavg()
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    sides: dict[str, list[dict]] = {"php_mt_seed": [], "project": []}
    with tempfile.TemporaryDirectory(prefix="pair-mt-") as tmp:
        before_env = None
        if args.before:
            sides["project_before"] = []
            pkg = before_tree(args.before, Path(tmp))
            before_env = dict(env, PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"))
            before_end = int(SPACE * args.before_fraction)
            # warm the old code's compile cache outside the timing
            run_child([*me, "--range", "0", "4096"], before_env)
        run_child([*me, "--range", "0", "4096"], env)  # compile / load the kernel once, untimed
        for r in range(args.rounds):
            wall, cpu, out = run_child([str(php), str(value >> 1)], env)
            found = [int(s) for s in re.findall(r"seed = 0x[0-9a-f]+ = (\d+) \(PHP 7\.1\.0\+\)", out)]
            sides["php_mt_seed"].append(
                {"round": r, "wall_s": wall, "cpu_s": cpu, "seeds": SPACE, "found_7.1+": found}
            )
            print(json.dumps({"side": "php_mt_seed", **sides["php_mt_seed"][-1]}), flush=True)
            wall, cpu, out = run_child(me, env)
            res = json.loads(out)
            sides["project"].append({"round": r, "wall_s": wall, "cpu_s": cpu, "seeds": SPACE, **res})
            print(json.dumps({"side": "project", **sides["project"][-1]}), flush=True)
            if before_env is not None:
                wall, cpu, out = run_child([*me, "--range", "0", str(before_end)], before_env)
                res = json.loads(out)
                sides["project_before"].append(
                    {"round": r, "wall_s": wall, "cpu_s": cpu, "seeds": before_end, **res}
                )
                print(json.dumps({"side": "project_before", **sides["project_before"][-1]}), flush=True)
    load1 = os.getloadavg()
    summary = {}
    for name, runs in sides.items():
        rate = [x["seeds"] / x["wall_s"] for x in runs]
        per_cpu = [x["seeds"] / x["cpu_s"] for x in runs]
        summary[name] = {
            "median_seeds_per_s": statistics.median(rate),
            "median_seeds_per_cpu_s": statistics.median(per_cpu),
            "runs": len(runs),
        }
    php_s, proj = summary["php_mt_seed"], summary["project"]
    ok_php = all(args.seed in x["found_7.1+"] for x in sides["php_mt_seed"])
    ok_proj = all(x["survivors"] == [args.seed] or args.seed in x["survivors"] for x in sides["project"])
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python bench/pair_mt19937.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "secret_seed": args.seed,
        "first_output": value,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "uptime_before": uptime0,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "both_found_the_seed": ok_php and ok_proj,
        "summary": summary,
        "ratio_wall": proj["median_seeds_per_s"] / php_s["median_seeds_per_s"],
        "ratio_per_cpu_s": proj["median_seeds_per_cpu_s"] / php_s["median_seeds_per_cpu_s"],
    }
    if "project_before" in summary:
        b = summary["project_before"]
        report["before_ratio_wall"] = b["median_seeds_per_s"] / php_s["median_seeds_per_s"]
        report["before_ratio_per_cpu_s"] = b["median_seeds_per_cpu_s"] / php_s["median_seeds_per_cpu_s"]
    print(json.dumps(report, indent=1))
    print("\n| side | seeds/s (median) | seeds per CPU-second | x php_mt_seed (wall / CPU) |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['median_seeds_per_s'] / 1e6:.1f} M | {s['median_seeds_per_cpu_s'] / 1e6:.1f} M | "
            f"{s['median_seeds_per_s'] / php_s['median_seeds_per_s']:.2f} / "
            f"{s['median_seeds_per_cpu_s'] / php_s['median_seeds_per_cpu_s']:.2f} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"report": report, "runs": sides}, indent=1))
    return 0 if report["both_found_the_seed"] else 1


if __name__ == "__main__":
    sys.exit(main())
