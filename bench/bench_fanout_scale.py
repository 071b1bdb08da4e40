#!/usr/bin/env python3
"""Fan-out at scale: what the controller costs per host and per slot (issue 14).

For each shape (hosts x slots per host) a netns SSH test cluster is started (needs root,
see docs/testcluster.md) and `playbooks/run_jobs.yml` runs sleep jobs of 1-2 s, so the
controller is what is measured. Sampled every 0.5 s while it runs:
  - controller peak PSS and summed RSS (MB): every process of the playbook's tree plus the
    SSH ControlPersist masters it left running, read from /proc/<pid>/smaps_rollup;
  - controller processes (peak), SSH connections (peak ESTABLISHED TCP to port 22 of the
    test hosts) and ssh client processes (peak);
and from the run: controller CPU-seconds (the playbook's whole tree, getrusage of the
waited children, plus the masters' own), slot start-up (the fan-out's start -> the moment
the last slot started its first job, clocks shared with the hosts), scheduling efficiency
(manifest). --baseline DIR runs the same jobs with the collection checked out in DIR (for
example `git archive e33ccd3 | tar -x -C DIR`, with DIR/.venv linked to this .venv) right
before each run of this tree, for a ratio measured under the same load.

    sudo .venv/bin/python bench/bench_fanout_scale.py [--shapes 3x2,3x8,3x20,12x5,12x10]
        [--rounds 4] [--baseline /tmp/oldtree --baseline-shapes 3x2,3x8]

Prints one JSON object (per run and the fitted laws); copy the figures into
docs/benchmarks.md with the date, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_fanout import fake_job  # noqa: E402
from tests.cluster import Cluster, HostSpec  # noqa: E402


def make_jobs(path: Path, n: int, seed: int, low: float, high: float) -> float:
    """n jobs of one seed each, sleeping low-high s (random); returns the job-seconds."""
    rng = random.Random(seed)
    jobs, total = [], 0.0
    for i in range(n):
        sleep = round(rng.uniform(low, high), 2)
        total += sleep
        jobs.append(fake_job(f"j{i:05d}", [i, i + 1], sleep))
    path.write_text(json.dumps({"jobs": jobs}))
    return total


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        out[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def _kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _ssh_connections(addresses: set[str]) -> int:
    """ESTABLISHED TCP connections from here to port 22 of the test hosts."""
    wanted = set()
    for addr in addresses:
        a = [int(x) for x in addr.split(".")]
        wanted.add(f"{a[3]:02X}{a[2]:02X}{a[1]:02X}{a[0]:02X}:0016")
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "01" and parts[2] in wanted:
            count += 1
    return count


class Sampler(threading.Thread):
    def __init__(self, root: int, cp_dir: str, addresses: set[str]) -> None:
        super().__init__(daemon=True)
        self.root, self.cp_dir, self.addresses = root, cp_dir, addresses
        self.stop = threading.Event()
        self.peak = {"pss_mb": 0.0, "rss_mb": 0.0, "processes": 0, "ssh_connections": 0, "ssh_clients": 0}
        self.masters: set[int] = set()

    def tree(self) -> list[int]:
        procs = _procs()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _cmd) in procs.items():
            children.setdefault(ppid, []).append(pid)
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        masters = [p for p, (_pp, cmd) in procs.items() if self.cp_dir in cmd and "[mux]" in cmd]
        self.masters.update(masters)
        self.clients = sum(1 for p in out if procs.get(p, (0, ""))[1].startswith("ssh "))
        return sorted(set(out) | set(masters))

    def run(self) -> None:
        while not self.stop.is_set():
            pids = self.tree()
            snap = {
                "pss_mb": sum(_kb(p, "Pss") for p in pids) / 1024,
                "rss_mb": sum(_kb(p, "Rss") for p in pids) / 1024,
                "processes": len(pids),
                "ssh_connections": _ssh_connections(self.addresses),
                "ssh_clients": self.clients,
            }
            for key, value in snap.items():
                self.peak[key] = max(self.peak[key], value)
            self.stop.wait(0.5)


def run_once(c: Cluster, tree: Path, jobs: Path, run_dir: Path, label: str) -> dict[str, Any]:
    assert c.tmpdir is not None and c.inventory is not None
    ev = {"jobs_file": str(jobs), "run_dir": str(run_dir), "fanout_settings": {"progress_interval": 60}}
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    log = run_dir.with_suffix(".log")
    proc = c.playbook_popen(
        "playbooks/run_jobs.yml", log, ev, cwd=tree, ANSIBLE_CONFIG=str(tree / "ansible.cfg")
    )
    sampler = Sampler(proc.pid, f"{c.tmpdir}/cp/", {h.address for h in c.hosts.values()})
    sampler.start()
    proc.wait(1800)
    out = log.read_text()
    wall = time.time() - t0
    sampler.stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu += sum(_cpu_s(p) for p in sampler.masters)  # detached: never waited by the tree
    if proc.returncode != 0:
        raise SystemExit(f"{label}: run failed:\n{out[-3000:]}")
    m = json.loads((run_dir / "fanout_manifest.json").read_text())
    session = m["timings"]["session_started"]
    exact, estimate = slot_starts(run_dir, m)
    n_slots = m["timings"]["slots"]
    for proc_ in list(sampler.masters):  # leave no ControlPersist master behind for the next run
        subprocess.run(["kill", str(proc_)], capture_output=True)
    return {
        "label": label,
        "hosts": len(c.hosts),
        "slots": m["timings"]["slots"],
        "jobs": m["jobs"]["completed"],
        "complete": m["complete"],
        "playbook_wall_s": round(wall, 1),
        "fanout_wall_s": m["timings"]["wall_s"],
        "efficiency": m["timings"]["scheduling_efficiency"],
        # fan-out start -> the last slot's first job start (the hosts' clock is ours)
        "slot_startup_s": round(max(exact.values()) - session, 2) if len(exact) == n_slots else None,
        # the same from the journal (first 'done' minus its run time): older trees too
        "slot_startup_s_journal": round(max(estimate.values()) - session, 2)
        if len(estimate) == n_slots
        else None,
        "controller_cpu_s": round(cpu, 1),
        "peak_pss_mb": round(sampler.peak["pss_mb"], 1),
        "peak_rss_mb": round(sampler.peak["rss_mb"], 1),
        "peak_processes": sampler.peak["processes"],
        "peak_ssh_connections": sampler.peak["ssh_connections"],
        "peak_ssh_clients": sampler.peak["ssh_clients"],
        "load_before": [round(x, 2) for x in load],
    }


def slot_starts(run_dir: Path, m: dict[str, Any]) -> tuple[dict[Any, float], dict[Any, float]]:
    """When each slot started its first job: from the manifest (job start times, this
    tree) and estimated from the journal's 'done' records (any tree)."""
    exact: dict[Any, float] = {}
    for o in m["outputs"]:
        if o.get("started"):
            key = (o["host"], o["slot"])
            exact[key] = min(exact.get(key, o["started"]), o["started"])
    estimate: dict[Any, float] = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("ev") == "done":
            key = (rec["host"], rec["result"]["slot"])
            start = rec["t"] - float(rec.get("duration_s") or 0.0)
            estimate[key] = min(estimate.get(key, start), start)
    return exact, estimate


def fit(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """key ~ a + b * hosts + c * slots, least squares over the runs of this tree."""
    import numpy as np

    a = np.array([[1.0, r["hosts"], r["slots"]] for r in runs])
    y = np.array([r[key] for r in runs])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return {
        "base": round(float(coef[0]), 1),
        "per_host": round(float(coef[1]), 2),
        "per_slot": round(float(coef[2]), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shapes", default="3x2,3x8,3x20,12x5,12x10", help="hosts x slots per host, comma separated"
    )
    ap.add_argument("--rounds", type=int, default=4, help="jobs per slot")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sleep", default="1,2", help="shortest,longest job in seconds")
    ap.add_argument("--baseline", type=Path, help="a checkout of another version to run side by side")
    ap.add_argument("--baseline-shapes", default="3x2,3x8")
    a = ap.parse_args()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": os.uname().nodename,
        "cpus": os.cpu_count(),
        "runs": [],
    }
    baseline = set(a.baseline_shapes.split(",")) if a.baseline else set()
    for shape in a.shapes.split(","):
        n_hosts, per_host = (int(x) for x in shape.split("x"))
        specs = [
            HostSpec(f"h{i:02d}", gpu_type="cuda", gpu_count=per_host, max_concurrent_jobs=per_host)
            for i in range(n_hosts)
        ]
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir, Cluster(specs) as c:
            tmp = Path(tmpdir)
            low, high = (float(x) for x in a.sleep.split(","))
            job_s = make_jobs(tmp / "jobs.json", n_hosts * per_host * a.rounds, a.seed, low, high)
            sides = ([("baseline", a.baseline)] if shape in baseline else []) + [("this", REPO)]
            for label, tree in sides:
                run = run_once(c, tree, tmp / "jobs.json", tmp / f"run-{label}", label)
                run.update(shape=shape, job_seconds=round(job_s, 1))
                print(json.dumps(run), file=sys.stderr)
                result["runs"].append(run)
    mine = [r for r in result["runs"] if r["label"] == "this"]
    if len(mine) >= 3:
        result["laws"] = {
            k: fit(mine, k) for k in ("peak_pss_mb", "peak_rss_mb", "peak_processes", "controller_cpu_s")
        }
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
