#!/usr/bin/env python3
"""Fan-out benchmark, side by side in one run (needs root: it starts a 3-host netns SSH
test cluster, see docs/testcluster.md):

  (a) prng.cluster.fanout on the test cluster (slots 2 + 3 + 1) for jobs of mixed length
      (5-25 s of sleep each by default): wall time, scheduling efficiency = busy slot-seconds /
      (slots x wall), dispatch overhead per job (one ansible-runner play for all hosts, one
      task and one SSH session per host; the `pool` and `dispatch` transports measured in
      docs/benchmarks.md before 2026-12 are gone: bench/bench_fanout_scale.py --baseline
      runs an older checkout side by side);
  (b) the same jobs by a plain ssh loop the way the old coordinator did it: jobs dealt
      round-robin to the slots up front, each slot runs its list over ssh (persistent
      ControlMaster connection) and pulls each output with scp;
  (c) the demo `ansible-playbook playbooks/step3.yml` wall time on the local inventory.

    sudo .venv/bin/python bench/bench_fanout.py [--jobs 36] [--seed 7] [--skip-demo] [--skip-ssh-loop]
        [--keep DIR]

Short jobs (issue 12: 200 jobs of 0.5-2 s): `--jobs 200 --min-seeds 2 --max-seeds 8`.

Prints one JSON object; copy the figures into docs/benchmarks.md with the date, the
machine and its load (`uptime`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import Cluster, HostSpec  # noqa: E402

JOB = REPO / "tests" / "integration" / "fanout_job.py"
SLEEP_PER_SEED = 0.25


def make_jobs(n: int, seed: int, low: int, high: int) -> list[dict[str, Any]]:
    """Mixed lengths: low..high seeds each at 0.25 s per seed."""
    rng = random.Random(seed)
    jobs, start = [], 0
    for i in range(n):
        size = rng.randint(low, high)
        jobs.append({"id": f"j{i:03d}", "range": [start, start + size]})
        start += size
    return jobs


def jobs_file(jobs: list[dict[str, Any]], path: Path) -> None:
    spec = [{"id": j["id"], "range": j["range"], "timeout": 120,
             "argv": ["{worker_bin}/python", str(JOB), "--out", "{out}/r.json", "--start", "{start}",
                      "--stop", "{stop}", "--sleep", str(SLEEP_PER_SEED)],
             "outputs": [{"path": "{out}/r.json", "kind": "json_list", "records_from_range": True}]}
            for j in jobs]
    path.write_text(json.dumps({"jobs": spec}))


def run_fanout(c: Cluster, jobs: Path, run_dir: Path, settings: dict[str, Any] | None = None) -> dict:
    t0 = time.time()
    proc = c.playbook("playbooks/run_jobs.yml", timeout=1200, extra_vars={
        "jobs_file": str(jobs), "run_dir": str(run_dir),
        "fanout_settings": {"progress_interval": 30, **(settings or {})}})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fan-out run failed:\n{proc.stdout[-3000:]}")
    m = json.loads((run_dir / "fanout_manifest.json").read_text())
    t = m["timings"]
    return {"playbook_wall_s": round(wall, 1), "fanout_wall_s": t["wall_s"],
            "slots": t["slots"], "busy_slot_s": t["busy_slot_s"],
            "scheduling_efficiency": t["scheduling_efficiency"], "dispatches": t["dispatches"],
            "dispatch_overhead_per_job_s": t["dispatch_overhead_per_job_s"],
            "agents_started": t.get("agents_started"),
            "agent_start_s_mean": t.get("agent_start_s_mean"),
            "jobs_per_host": {h: v["jobs_done"] for h, v in m["hosts"].items()},
            "complete": m["complete"]}


def run_ssh_loop(c: Cluster, jobs: list[dict[str, Any]], slots: dict[str, int], out: Path) -> dict[str, Any]:
    """The old coordinator's way: deal jobs round-robin to slots, ssh each, scp back."""
    assert c.tmpdir is not None
    key = str(c.tmpdir / "id_ed25519")
    ctl = str(c.tmpdir / "cp" / "bench-%C")
    base = ["-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}",
            "-o", "ControlPersist=120"]
    python = c.python
    lanes = [(h, s) for h, n in slots.items() for s in range(n)]
    dealt: dict[tuple[str, int], list[dict[str, Any]]] = {lane: [] for lane in lanes}
    for i, job in enumerate(jobs):
        dealt[lanes[i % len(lanes)]].append(job)
    busy: list[float] = []
    lock = threading.Lock()
    out.mkdir(parents=True, exist_ok=True)

    def lane(host: str, slot: int) -> None:
        addr = f"root@{c.hosts[host].address}"
        remote_dir = f"{c.hosts[host].home}/sshloop"
        for job in dealt[(host, slot)]:
            remote_out = f"{remote_dir}/{job['id']}.json"
            cmd = (f"mkdir -p {shlex.quote(remote_dir)} && CUDA_VISIBLE_DEVICES={slot} {shlex.quote(python)} "
                   f"{shlex.quote(str(JOB))} --out {shlex.quote(remote_out)} --start {job['range'][0]} "
                   f"--stop {job['range'][1]} --sleep {SLEEP_PER_SEED}")
            t0 = time.time()
            subprocess.run(["ssh", *base, addr, cmd], check=True, capture_output=True, timeout=300)
            with lock:
                busy.append(time.time() - t0)
            subprocess.run(["scp", *base, f"{addr}:{remote_out}", str(out / f"{job['id']}.json")],
                           check=True, capture_output=True, timeout=300)

    t0 = time.time()
    threads = [threading.Thread(target=lane, args=lane_key) for lane_key in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    work = sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in jobs)
    return {"wall_s": round(wall, 1), "slots": len(lanes), "job_seconds": round(work, 1),
            "scheduling_efficiency": round(work / (len(lanes) * wall), 4),
            "ssh_overhead_per_job_s": round((sum(busy) - work) / len(jobs), 3),
            "outputs": len(list(out.glob("*.json")))}


def run_demo(tmp: Path) -> dict[str, Any]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    t0 = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/step3.yml",
                           "-e", json.dumps({"step3_run_dir": str(tmp / "step3")})],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed:\n{proc.stdout[-3000:]}")
    m = json.loads((tmp / "step3" / "fanout_manifest.json").read_text())
    return {"playbook_wall_s": round(wall, 1), "fanout_wall_s": m["timings"]["wall_s"],
            "survivors": m["units"]["completed"], "jobs": m["jobs"]["completed"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=36)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-seeds", type=int, default=20, help="shortest job in seeds (x 0.25 s)")
    ap.add_argument("--max-seeds", type=int, default=100, help="longest job in seeds (x 0.25 s)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-ssh-loop", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="copy the fan-out run's manifest and journal here")
    ap.add_argument("--ab-settings", metavar="JSON",
                    help="also run the fan-out with these scheduler settings (side A), interleaved A, B "
                         "with the defaults (B) for --rounds rounds, e.g. '{\"fair_share_fraction\": 1.0}'")
    ap.add_argument("--rounds", type=int, default=1, help="with --ab-settings: A, B pairs")
    a = ap.parse_args()
    jobs = make_jobs(a.jobs, a.seed, a.min_seeds, a.max_seeds)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": os.uname().nodename,
        "cpus": os.cpu_count(), "load_before": os.getloadavg(), "jobs": len(jobs),
        "job_seconds": round(sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in jobs), 1)}
    hosts = [HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
             HostSpec("b", gpu_type="rocm", gpu_count=3, max_concurrent_jobs=3, groups=("rocm",),
                      vars={"start_stagger_seconds": 0}),
             HostSpec("c", gpu_type="cpu", gpu_count=0, max_concurrent_jobs=1)]
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmpdir, Cluster(hosts) as c:
        tmp = Path(tmpdir)
        jobs_file(jobs, tmp / "jobs.json")
        if a.ab_settings:
            ab: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for r in range(a.rounds):
                for side, settings in (("A", json.loads(a.ab_settings)), ("B", {})):
                    ab[side].append({"load_before": os.getloadavg(),
                                     **run_fanout(c, tmp / "jobs.json", tmp / f"run-{side}{r}", settings)})
                    print(json.dumps({"side": side, "round": r, **ab[side][-1]}), flush=True)
            result["ab"] = {"A_settings": json.loads(a.ab_settings), **ab}
        result["fanout"] = run_fanout(c, tmp / "jobs.json", tmp / "run")
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            for f in (tmp / "run").iterdir():
                if f.is_file():
                    shutil.copy(f, Path(a.keep) / f.name)
        if not a.skip_ssh_loop:
            result["ssh_loop"] = run_ssh_loop(c, jobs, {"a": 2, "b": 3, "c": 1}, tmp / "sshloop")
        if not a.skip_demo:
            result["demo_step3"] = run_demo(tmp)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
