#!/usr/bin/env python3
"""Ramdisk preload benchmark on the network-namespace test cluster (run as root).

Measures, for ~500 MB of step inputs sent to 3 test hosts over real SSH:
  1. a first (cold) preload,
  2. re-runs when nothing changed (target < 3 s),
  3. a re-run when every file changed,
next to a plain copy of the same files (scp, and rsync, to the 3 hosts in parallel), and
the fixed cost of an ansible-playbook run against the same hosts (one ping task).
All times are wall clock of the whole command an operator would type.

    .venv/bin/python bench/bench_ramdisk.py [--mb 500] [--repeat 3] [--json out.json]

Prints a Markdown section for docs/benchmarks.md. Cleans up hosts and files afterwards.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import Cluster, missing_requirements  # noqa: E402


def make_sources(folder: Path, total_mb: int) -> list[Path]:
    """Step-3-like inputs: two big survivor files, one medium, one small history."""
    shares = {
        "forward_survivors.bin": 0.4,
        "reverse_survivors.bin": 0.4,
        "bidirectional_survivors.bin": 0.198,
    }
    paths = []
    for name, share in shares.items():
        paths.append(folder / name)
        write_random(paths[-1], int(total_mb * share * 2**20))
    paths.append(folder / "train_history.json")
    paths[-1].write_text(json.dumps(list(range(int(total_mb * 0.002 * 2**20) // 8))))
    return paths


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 * 2**20)
            fh.write(os.urandom(n))
            left -= n


def timed(
    fn: Callable[[], subprocess.CompletedProcess[str] | list[subprocess.CompletedProcess[str]]],
) -> float:
    t0 = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t0
    for r in res if isinstance(res, list) else [res]:
        if r.returncode != 0:
            raise SystemExit(
                f"error: benchmark command failed: {r.args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            )
    return dt


def ssh_base(c: Cluster) -> list[str]:
    assert c.tmpdir is not None
    return [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-i",
        str(c.tmpdir / "id_ed25519"),
    ]


def parallel(cmds: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(lambda a: subprocess.run(a, capture_output=True, text=True), cmds))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=500, help="total size of the step's files (MB)")
    ap.add_argument("--repeat", type=int, default=3, help="re-runs of each unchanged case")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    problem = missing_requirements()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    shm_mb = int(args.mb * 2.3) + 64  # old + new copy side by side while everything changes
    work = Path(tempfile.mkdtemp(prefix="bench-ramdisk-"))
    cache = work / "hash-cache"
    figures: dict[str, object] = {"load_before": load()}
    try:
        srcs = make_sources(work, args.mb)
        total = sum(p.stat().st_size for p in srcs)
        with Cluster(3, shm_mb=shm_mb) as c:
            extra = {"ramdisk_step": "step3", "ramdisk_files": [str(p) for p in srcs]}
            env = {"PRNG_HASH_CACHE": str(cache)}

            def preload() -> subprocess.CompletedProcess[str]:
                return c.playbook("playbooks/ramdisk_preload.yml", extra_vars=extra, **env)

            noop = work / "noop_ping.yml"
            noop.write_text(
                '[{"name": "Ping", "hosts": "gpu_nodes", "gather_facts": false,'
                ' "tasks": [{"name": "Ping", "ansible.builtin.ping": {}}]}]'
            )
            figures["noop_playbook_s"] = [timed(lambda: c.playbook(noop, **env)) for _ in range(args.repeat)]
            figures["cold_s"] = timed(preload)
            figures["unchanged_s"] = [timed(preload) for _ in range(args.repeat)]
            for p in srcs:  # every file changes (same sizes)
                if p.suffix == ".json":
                    p.write_text(p.read_text().replace("[0,", "[1,", 1))
                else:
                    write_random(p, p.stat().st_size)
            figures["all_changed_s"] = timed(preload)
            for name, h in c.hosts.items():
                manifest = json.loads((h.shm / "prng" / "step3" / ".manifest.json").read_text())
                assert sorted(f["name"] for f in manifest["files"]) == sorted(p.name for p in srcs), name

            # Where the time goes: the action plugin's per-phase timing, ad hoc, every file changed.
            for p in srcs:
                if p.suffix != ".json":
                    write_random(p, p.stat().st_size)
            adhoc = c.ansible(
                "all",
                "-m",
                "prng.cluster.ramdisk",
                "-o",
                "-a",
                "state=preload step=step3 files=" + ",".join(map(str, srcs)),
                **env,
            )
            figures["phases"] = {
                line.split(" | ")[0]: json.loads(line.split(" => ", 1)[1]).get("timing")
                for line in adhoc.stdout.splitlines()
                if " => " in line
            }

            # Plain copies of the same files, to the three hosts in parallel.
            base = ssh_base(c)
            dests = [h.address for h in c.hosts.values()]
            for h in c.hosts:
                c.exec(h, ["mkdir", "-p", "/dev/shm/plain"], check=True)
            scp = [["scp", "-q", *base, *map(str, srcs), f"root@{a}:/dev/shm/plain/"] for a in dests]
            figures["scp_s"] = timed(lambda: parallel(scp))
            for h in c.hosts:
                c.exec(h, ["rm", "-rf", "/dev/shm/plain"], check=True)
                c.exec(h, ["mkdir", "-p", "/dev/shm/plain"], check=True)
            rsh = " ".join(["ssh", *base])
            rsync = [["rsync", "-a", "-e", rsh, *map(str, srcs), f"root@{a}:/dev/shm/plain/"] for a in dests]
            figures["rsync_cold_s"] = timed(lambda: parallel(rsync))
            figures["rsync_unchanged_s"] = [timed(lambda: parallel(rsync)) for _ in range(args.repeat)]
            for h in c.hosts:
                c.exec(h, ["rm", "-rf", "/dev/shm/plain"], check=True)
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        figures.update(
            total_bytes=total,
            hosts=3,
            shm_mb=shm_mb,
            load_after=load(),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            machine=f"{os.cpu_count()} CPUs, {ram_gib:.0f} GiB RAM, Python {platform.python_version()}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    med = statistics.median
    rep = args.repeat
    noop, unchanged = figures["noop_playbook_s"], figures["unchanged_s"]
    rsync_unchanged = figures["rsync_unchanged_s"]
    assert isinstance(noop, list) and isinstance(unchanged, list) and isinstance(rsync_unchanged, list)
    rows = [
        (f"ansible-playbook fixed cost (1 ping task, 3 hosts), median of {rep}", f"{med(noop):.2f}"),
        ("preload, first load (cold controller hash cache)", f"{figures['cold_s']:.2f}"),
        (
            f"**preload re-run, nothing changed**, median of {rep} (min {min(unchanged):.2f})",
            f"**{med(unchanged):.2f}**",
        ),
        ("preload re-run, every file changed", f"{figures['all_changed_s']:.2f}"),
        ("plain scp of the same files, 3 hosts in parallel", f"{figures['scp_s']:.2f}"),
        ("rsync -a, first copy, 3 hosts in parallel", f"{figures['rsync_cold_s']:.2f}"),
        (f"rsync -a re-run, nothing changed, median of {rep}", f"{med(rsync_unchanged):.2f}"),
    ]
    print(f"Date: {figures['date']}; machine: {figures['machine']}")
    print(f"Load average (1/5/15 min) before: {figures['load_before']}, after: {figures['load_after']}")
    print(f"{total / 1e6:.0f} MB in 4 files to 3 test hosts (netns + sshd, /dev/shm {shm_mb} MiB each)\n")
    print("| case | wall s |\n|---|---|")
    for case, value in rows:
        print(f"| {case} | {value} |")
    phases = figures["phases"]
    assert isinstance(phases, dict)
    print("\nPer host, ad hoc preload with the 3 big files changed (action plugin timing, s):\n")
    print(
        "| host | hash on controller | prepare (host check + preflight) | transfer | commit (verify hashes) |"
    )
    print("|---|---|---|---|---|")
    for host, t in sorted(phases.items()):
        cells = [str((t or {}).get(k)) for k in ("hash_s", "prepare_s", "transfer_s", "commit_s")]
        print(f"| {host} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
