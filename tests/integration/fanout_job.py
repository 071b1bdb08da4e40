#!/usr/bin/env python3
"""A synthetic fan-out job for the tests: writes one JSON record per seed of its range
[start, stop) (atomically), reports the GPU binding it saw, and can misbehave on demand
(exit 137 when its range is too big, write a truncated file once, be slow on one host)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def _first(marker: str) -> bool:
    """True for exactly one of the jobs that race for the marker (O_EXCL creates it once)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--stop", type=int, required=True)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per seed")
    ap.add_argument(
        "--slow-host", default="", help="hostname on which the job runs --slow-factor times longer"
    )
    ap.add_argument("--slow-factor", type=float, default=1.0)
    ap.add_argument("--oom-above", type=int, default=0, help="exit 137 when the range holds more seeds")
    ap.add_argument(
        "--truncate-once", default="", help="marker file: the first run writes half a file, exit 0"
    )
    a = ap.parse_args()
    host = socket.gethostname()
    n = a.stop - a.start
    if a.oom_above and n > a.oom_above:
        return 137
    delay = a.sleep * n * (a.slow_factor if host == a.slow_host else 1.0)
    time.sleep(delay)
    text = json.dumps([{"seed": s, "score": s % 7} for s in range(a.start, a.stop)])
    if a.truncate_once and _first(a.truncate_once):
        with open(a.out, "w") as fh:  # deliberately not atomic: the i4 failure
            fh.write(text[: len(text) // 2])
        return 0
    tmp = a.out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, a.out)
    print(
        json.dumps(
            {
                "host": host,
                "count": n,
                "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "hip_visible_devices": os.environ.get("HIP_VISIBLE_DEVICES"),
                "rocr_visible_devices": os.environ.get("ROCR_VISIBLE_DEVICES"),
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
                "seconds": delay,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
