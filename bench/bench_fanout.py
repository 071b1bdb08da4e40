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
  (c) the demo `ansible-playbook playbooks/step3.yml` wall time on the local inventory;
  (d) with `--parallel`: the same jobs (same job script, argv and outputs) by GNU parallel,
      `parallel --sshlogin 2/a,3/b,1/c --return ... --joblog ...` with the inventory's SSH key
      and options (ControlMaster on), interleaved with the fan-out for `--rounds` rounds
      (project, parallel, then parallel, project, ...); every output brought back is counted
      and read, and a side that loses one is reported, not timed. Efficiency is given two
      ways for both sides: busy slot-seconds / (slots x wall) (the fan-out: worker run time
      on the hosts; GNU parallel: its joblog's JobRuntime, which includes the ssh and the
      rsync of `--return`) and job-seconds (the sleeps) / (slots x wall). Skipped, with a
      line saying so, where `parallel` is not installed.

    sudo .venv/bin/python bench/bench_fanout.py [--jobs 36] [--seed 7] [--skip-demo] [--skip-ssh-loop]
        [--keep DIR] [--parallel --rounds N]

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_ramdisk import ssh_base  # noqa: E402
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


def fake_job(job_id: str, seeds: list[int], sleep: float) -> dict[str, Any]:
    """A jobs-file entry for the fake worker (tests/integration/fanout_job.py): `sleep` s per
    seed of `seeds` ([start, stop)), one JSON record per seed as its output."""
    argv = ["{worker_bin}/python", str(JOB), "--out", "{out}/r.json"]
    argv += ["--start", "{start}", "--stop", "{stop}", "--sleep", str(sleep)]
    return {
        "id": job_id,
        "range": seeds,
        "timeout": 120,
        "argv": argv,
        "outputs": [{"path": "{out}/r.json", "kind": "json_list", "records_from_range": True}],
    }


def jobs_file(jobs: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps({"jobs": [fake_job(j["id"], j["range"], SLEEP_PER_SEED) for j in jobs]}))


def run_fanout(c: Cluster, jobs: Path, run_dir: Path, settings: dict[str, Any] | None = None) -> dict:
    t0 = time.time()
    proc = c.playbook(
        "playbooks/run_jobs.yml",
        timeout=1200,
        extra_vars={
            "jobs_file": str(jobs),
            "run_dir": str(run_dir),
            "fanout_settings": {"progress_interval": 30, **(settings or {})},
        },
    )
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fan-out run failed:\n{proc.stdout[-3000:]}")
    m = json.loads((run_dir / "fanout_manifest.json").read_text())
    t = m["timings"]
    spec = json.loads(jobs.read_text())["jobs"]
    work = sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in spec)
    return {
        "playbook_wall_s": round(wall, 1),
        "fanout_wall_s": t["wall_s"],
        **count_outputs(spec, lambda job_id: run_dir / "outputs" / job_id / "r.json"),
        "work_efficiency": round(work / (t["slots"] * t["wall_s"]), 4),
        "slots": t["slots"],
        "busy_slot_s": t["busy_slot_s"],
        "scheduling_efficiency": t["scheduling_efficiency"],
        "dispatches": t["dispatches"],
        "dispatch_overhead_per_job_s": t["dispatch_overhead_per_job_s"],
        "agents_started": t.get("agents_started"),
        "agent_start_s_mean": t.get("agent_start_s_mean"),
        "jobs_per_host": {h: v["jobs_done"] for h, v in m["hosts"].items()},
        "complete": m["complete"],
    }


def persistent_ssh(c: Cluster, name: str) -> list[str]:
    """ssh options of the cluster inventory (key, no host-key checks) with a persistent master,
    as an operator would set them; its own socket (the fan-out's Ansible masters are not shared)."""
    assert c.tmpdir is not None
    socket = c.tmpdir / "cp" / f"{name}-%C"
    master = ["-o", "ControlMaster=auto", "-o", f"ControlPath={socket}", "-o", "ControlPersist=120"]
    return [*ssh_base(c), *master]


def run_ssh_loop(c: Cluster, jobs: list[dict[str, Any]], slots: dict[str, int], out: Path) -> dict[str, Any]:
    """The old coordinator's way: deal jobs round-robin to slots, ssh each, scp back."""
    base = persistent_ssh(c, "bench")
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
            cmd = (
                f"mkdir -p {shlex.quote(remote_dir)} && CUDA_VISIBLE_DEVICES={slot} {shlex.quote(python)} "
                f"{shlex.quote(str(JOB))} --out {shlex.quote(remote_out)} --start {job['range'][0]} "
                f"--stop {job['range'][1]} --sleep {SLEEP_PER_SEED}"
            )
            t0 = time.time()
            subprocess.run(["ssh", *base, addr, cmd], check=True, capture_output=True, timeout=300)
            with lock:
                busy.append(time.time() - t0)
            subprocess.run(
                ["scp", *base, f"{addr}:{remote_out}", str(out / f"{job['id']}.json")],
                check=True,
                capture_output=True,
                timeout=300,
            )

    t0 = time.time()
    threads = [threading.Thread(target=lane, args=lane_key) for lane_key in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    work = sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in jobs)
    return {
        "wall_s": round(wall, 1),
        "slots": len(lanes),
        "job_seconds": round(work, 1),
        "scheduling_efficiency": round(work / (len(lanes) * wall), 4),
        "ssh_overhead_per_job_s": round((sum(busy) - work) / len(jobs), 3),
        "outputs": len(list(out.glob("*.json"))),
    }


def count_outputs(jobs: list[dict[str, Any]], path_of: Any) -> dict[str, int]:
    """Each job's output back on the controller, read and checked: one record per seed of its range."""
    back = valid = 0
    for job in jobs:
        path = path_of(job["id"])
        if not path.is_file():
            continue
        back += 1
        try:
            valid += len(json.loads(path.read_text())) == job["range"][1] - job["range"][0]
        except ValueError:
            pass
    return {"outputs_returned": back, "outputs_valid": valid}


def run_gnu_parallel(
    c: Cluster, jobs: list[dict[str, Any]], slots: dict[str, int], out: Path, exe: str
) -> dict[str, Any]:
    """The same jobs by GNU parallel, the way an operator fans out over SSH hosts:
    `--sshlogin N/host` per host, each output brought back with `--return`, `--joblog`."""
    ssh = ["ssh", "-o", "ConnectTimeout=5", *persistent_ssh(c, "gnup")]
    out.mkdir(parents=True)
    # The hosts share this machine's file system: the jobs write into a folder of their own
    # that is not `out`, so an output counts only once rsync (`--return`) has brought it back.
    remote_dir = out.parent / f"{out.name}-remote"
    args = out.parent / f"{out.name}.args"
    args.write_text("".join(f"{j['id']}\t{j['range'][0]}\t{j['range'][1]}\n" for j in jobs))
    joblog = out.parent / f"{out.name}.joblog"
    # GNU parallel takes the command as a shell template run by the remote shell: it is
    # built from fixed parts only, the paths quoted with shlex.quote, and parallel quotes
    # each replacement string ({1} = job id, {2}/{3} = range) itself.
    python = shlex.quote(f"{c.worker_venv}/bin/python")
    template = (
        f"{python} {shlex.quote(str(JOB))} --out {{1}}.json --start {{2}} --stop {{3}} "
        f"--sleep {SLEEP_PER_SEED}"
    )
    argv = [
        exe,
        "--will-cite",
        "--sshlogin",
        ",".join(f"{n}/root@{c.hosts[h].address}" for h, n in slots.items()),
        "--ssh",
        shlex.join(ssh),  # parallel takes the ssh command as one string
        "--workdir",
        str(remote_dir),
        "--return",
        "{1}.json",
        "--joblog",
        str(joblog),
        "--colsep",
        "\t",
        "-a",
        str(args),
        template,
    ]
    t0 = time.time()
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=1200)
    wall = time.time() - t0
    # joblog: Seq Host Starttime JobRuntime Send Receive Exitval Signal Command
    log = joblog.read_text() if joblog.exists() else ""  # none when parallel refused to start
    rows = [line.split("\t") for line in log.splitlines()[1:] if line]
    busy = sum(float(r[3]) for r in rows)
    work = sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in jobs)
    n_slots = sum(slots.values())
    res: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "slots": n_slots,
        "jobs_logged": len(rows),
        "jobs_failed": sum(r[6] != "0" or r[7] != "0" for r in rows),
        "exit": proc.returncode,
        **count_outputs(jobs, lambda job_id: out / f"{job_id}.json"),
        "busy_slot_s": round(busy, 1),
        "scheduling_efficiency": round(busy / (n_slots * wall), 4),
        "work_efficiency": round(work / (n_slots * wall), 4),
        "jobs_span_s": round(max(float(r[2]) + float(r[3]) for r in rows) - min(float(r[2]) for r in rows), 1)
        if rows
        else None,
        "overhead_per_job_s": round((busy - work) / len(jobs), 3),
        "jobs_per_host": {h: sum(r[1].endswith(c.hosts[h].address) for r in rows) for h in slots},
    }
    # A side that loses outputs is reported, not timed.
    res["complete"] = proc.returncode == 0 and res["outputs_valid"] == len(jobs)
    if not res["complete"]:
        res["stderr_tail"] = proc.stderr[-2000:]
    return res


def run_demo(tmp: Path) -> dict[str, Any]:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
    )
    t0 = time.time()
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "playbooks/step3.yml",
            "-e",
            json.dumps({"step3_run_dir": str(tmp / "step3")}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed:\n{proc.stdout[-3000:]}")
    m = json.loads((tmp / "step3" / "fanout_manifest.json").read_text())
    return {
        "playbook_wall_s": round(wall, 1),
        "fanout_wall_s": m["timings"]["wall_s"],
        "survivors": m["units"]["completed"],
        "jobs": m["jobs"]["completed"],
    }


def pair_with_parallel(c: Cluster, jobs: list[dict[str, Any]], tmp: Path, rounds: int) -> dict[str, Any]:
    """Project and GNU parallel on the same jobs, A, B then B, A (the order flipped each round);
    one JSON line per run, then medians and the ratio of the walls."""
    slots = {"a": 2, "b": 3, "c": 1}
    exe = shutil.which("parallel")
    if exe is None:
        print("GNU parallel not found on PATH (Debian package `parallel`): its side is skipped", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"project": [], "parallel": []}
    for r in range(rounds):
        sides = ["project", "parallel"] if r % 2 == 0 else ["parallel", "project"]
        for side in sides:
            if side == "parallel" and exe is None:
                continue
            before = os.getloadavg()
            if side == "project":
                # A run folder of its own: the same folder again would resume, not rerun.
                res = run_fanout(c, tmp / "jobs.json", tmp / f"run-{r}")
            else:
                res = run_gnu_parallel(c, jobs, slots, tmp / f"parallel-{r}", exe)
            runs[side].append({"load_before": before, **res, "load_after": os.getloadavg()})
            print(json.dumps({"side": side, "round": r, **runs[side][-1]}), flush=True)
    summary: dict[str, Any] = {}
    for side, key in (("project", "fanout_wall_s"), ("project", "playbook_wall_s"), ("parallel", "wall_s")):
        timed = [x for x in runs[side] if x["complete"]]
        summary[f"{side}_{key}_median"] = statistics.median(x[key] for x in timed) if timed else None
        for eff in ("scheduling_efficiency", "work_efficiency"):
            summary[f"{side}_{eff}_median"] = statistics.median(x[eff] for x in timed) if timed else None
        summary[f"{side}_incomplete_runs"] = len(runs[side]) - len(timed)
    par = summary["parallel_wall_s_median"]
    for key in ("fanout_wall_s", "playbook_wall_s"):
        ours = summary[f"project_{key}_median"]
        summary[f"ratio_{key}_to_parallel"] = round(ours / par, 3) if ours and par else None
    print(json.dumps({"summary": summary}), flush=True)
    return {**runs, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=36)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-seeds", type=int, default=20, help="shortest job in seeds (x 0.25 s)")
    ap.add_argument("--max-seeds", type=int, default=100, help="longest job in seeds (x 0.25 s)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-ssh-loop", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="copy the fan-out run's manifest and journal here")
    ap.add_argument(
        "--ab-settings",
        metavar="JSON",
        help="also run the fan-out with these scheduler settings (side A), interleaved A, B "
        "with the defaults (B) for --rounds rounds, e.g. '{\"fair_share_fraction\": 1.0}'",
    )
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="pair the fan-out with GNU parallel (--sshlogin, --return) on the same jobs, "
        "interleaved for --rounds rounds, the order flipped each round",
    )
    ap.add_argument("--rounds", type=int, default=1, help="with --ab-settings or --parallel: A, B pairs")
    a = ap.parse_args()
    jobs = make_jobs(a.jobs, a.seed, a.min_seeds, a.max_seeds)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": os.uname().nodename,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "jobs": len(jobs),
        "job_seconds": round(sum((j["range"][1] - j["range"][0]) * SLEEP_PER_SEED for j in jobs), 1),
    }
    hosts = [
        HostSpec("a", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2),
        HostSpec(
            "b",
            gpu_type="rocm",
            gpu_count=3,
            max_concurrent_jobs=3,
            groups=("rocm",),
            vars={"start_stagger_seconds": 0},
        ),
        HostSpec("c", gpu_type="cpu", gpu_count=0, max_concurrent_jobs=1),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmpdir, Cluster(hosts) as c:
        tmp = Path(tmpdir)
        jobs_file(jobs, tmp / "jobs.json")
        if a.ab_settings:
            ab: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for r in range(a.rounds):
                for side, settings in (("A", json.loads(a.ab_settings)), ("B", {})):
                    ab[side].append(
                        {
                            "load_before": os.getloadavg(),
                            **run_fanout(c, tmp / "jobs.json", tmp / f"run-{side}{r}", settings),
                        }
                    )
                    print(json.dumps({"side": side, "round": r, **ab[side][-1]}), flush=True)
            result["ab"] = {"A_settings": json.loads(a.ab_settings), **ab}
        kept = tmp / "run"
        if a.parallel:
            result["pairs"] = pair_with_parallel(c, jobs, tmp, a.rounds)
            result["fanout"] = result["pairs"]["project"][-1]
            kept = tmp / f"run-{max(a.rounds - 1, 0)}"
        else:
            result["fanout"] = run_fanout(c, tmp / "jobs.json", kept)
        if a.keep and kept.is_dir():
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            for f in kept.iterdir():
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
