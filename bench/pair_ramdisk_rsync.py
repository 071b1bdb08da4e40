#!/usr/bin/env python3
"""Ramdisk preload against `rsync -a`, side by side on the network-namespace test cluster
(run as root; needs rsync): 3 hosts over real SSH, ~500 MB of step inputs, three cases,
each side in turn in every round (A, B, A, B; the order flips each round):

  first    nothing on the hosts yet (project: cold controller hash cache)
  rerun    nothing changed
  changed  one ~200 MB file rewritten (same size, new bytes)

Project = `ansible-playbook playbooks/ramdisk_preload.yml` (the whole command, Ansible's
start-up included); rsync = `rsync -a` of the same files to the 3 hosts in parallel, over
the same ssh (same key and options). With `--before REV` the project code of that git
revision runs as a third side (its own step folder, its own hash cache). Also timed: a
playbook that only pings the hosts (Ansible's own start-up). Records `uptime` per round.

    .venv/bin/python bench/pair_ramdisk_rsync.py [--mb 500] [--rounds 2] [--before 32dfaf5]
        [--json-out pair.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_ramdisk import make_sources, parallel, ssh_base, write_random  # noqa: E402
from tests.cluster import Cluster, missing_requirements  # noqa: E402

CASES = ("first", "rerun", "changed")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def before_tree(rev: str, tmp: Path) -> Path:
    """A copy of the repository at git revision ``rev`` (read with git archive)."""
    dest = tmp / "before"
    dest.mkdir()
    archive = tmp / "before.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", rev], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=500, help="total size of the step's files (MB)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", help="also run the project code of this git revision")
    ap.add_argument("--json-out", help="write the raw figures here")
    args = ap.parse_args()
    problem = missing_requirements() or (None if shutil.which("rsync") else "rsync is not installed")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sides = ["project", "rsync"] + (["before"] if args.before else [])
    # Per host: each side's copy, plus the changed file staged next to the old one, under
    # the preload's 80 % limit.
    shm_mb = int(args.mb * (len(sides) + 0.5) / 0.78) + 64
    work = Path(tempfile.mkdtemp(prefix="pair-ramdisk-"))
    rows: list[dict] = []
    figures: dict = {"sides": sides, "load_before": load(), "shm_mb": shm_mb, "rounds": rows}
    try:
        srcs = make_sources(work, args.mb)
        big = srcs[0]  # forward_survivors.bin, ~40 % of the total
        trees = {"project": REPO}
        if args.before:
            trees["before"] = before_tree(args.before, work)
        with Cluster(3, shm_mb=shm_mb) as c:
            base = ssh_base(c)
            rsh = " ".join(["ssh", *base])
            dests = [h.address for h in c.hosts.values()]
            bin_dir = Path(c.python).parent

            def project(side: str, case: str, rnd: int) -> float:
                tree = trees[side]
                cache = work / f"cache-{side}-{rnd}"
                extra = {
                    "ramdisk_step": "step3" if side == "project" else "step3before",
                    "ramdisk_files": [str(p) for p in srcs],
                    "ramdisk_orchestrated": True,  # the sides' step folders stay side by side
                }
                argv = [str(bin_dir / "ansible-playbook"), "-i", str(c.inventory)]
                argv += ["playbooks/ramdisk_preload.yml", "-e", json.dumps(extra)]
                env = c.env(ANSIBLE_CONFIG=str(tree / "ansible.cfg"), PRNG_HASH_CACHE=str(cache))
                t0 = time.perf_counter()
                res = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                if res.returncode != 0:
                    raise SystemExit(
                        f"error: {side} {case} failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"
                    )
                return dt

            def rsync(case: str, rnd: int) -> float:
                cmds = [
                    ["rsync", "-a", "-e", rsh, *map(str, srcs), f"root@{a}:/dev/shm/plain/"] for a in dests
                ]
                t0 = time.perf_counter()
                for r in parallel(cmds):
                    if r.returncode != 0:
                        raise SystemExit(f"error: rsync {case} failed: {r.stderr[-2000:]}")
                return time.perf_counter() - t0

            def run(side: str, case: str, rnd: int) -> float:
                return rsync(case, rnd) if side == "rsync" else project(side, case, rnd)

            noop = work / "noop_ping.yml"
            noop.write_text(
                '[{"name": "Ping", "hosts": "gpu_nodes", "gather_facts": false,'
                ' "tasks": [{"name": "Ping", "ansible.builtin.ping": {}}]}]'
            )
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else sides[::-1]
                for h in c.hosts:  # a first copy for every side
                    c.exec(h, ["rm", "-rf", "/dev/shm/prng", "/dev/shm/plain"], check=True)
                    c.exec(h, ["mkdir", "-p", "/dev/shm/plain"], check=True)
                write_random(big, big.stat().st_size)  # new bytes: cold caches everywhere
                row: dict = {"round": rnd, "order": order, "load": load()}
                t0 = time.perf_counter()
                c.playbook(noop)
                row["ansible_ping_s"] = round(time.perf_counter() - t0, 3)
                for case in CASES:
                    if case == "changed":
                        write_random(big, big.stat().st_size)
                    row[case] = {side: round(run(side, case, rnd), 3) for side in order}
                    print(json.dumps({"round": rnd, "case": case, **row[case]}), flush=True)
                row["load_after"] = load()
                rows.append(row)
        figures.update(
            total_bytes=sum(p.stat().st_size for p in srcs),
            changed_bytes=big.stat().st_size,
            load_after=load(),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1))
    med = statistics.median
    print(
        f"\n{figures['date']}; {figures['total_bytes'] / 1e6:.0f} MB in 4 files to 3 hosts; "
        f"changed file {figures['changed_bytes'] / 1e6:.0f} MB; /dev/shm {shm_mb} MiB per host"
    )
    print(
        "loads (1/5/15 min) per round: "
        + "; ".join(r["load"] for r in rows)
        + f"; after {figures['load_after']}"
    )
    print(f"ansible ping playbook: {med(r['ansible_ping_s'] for r in rows):.2f} s median\n")
    head = "| case | project s | rsync -a s | project / rsync |" + (
        " before s | before / rsync |" if args.before else ""
    )
    print(head)
    print("|---|---|---|---|" + ("---|---|" if args.before else ""))
    for case in CASES:
        p = med(r[case]["project"] for r in rows)
        q = med(r[case]["rsync"] for r in rows)
        line = f"| {case} | {p:.2f} | {q:.2f} | {p / q:.2f} |"
        if args.before:
            b = med(r[case]["before"] for r in rows)
            line += f" {b:.2f} | {b / q:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
