"""Operator CLI for the network-namespace test cluster (see docs/testcluster.md).

    scripts/testcluster up 3 --shm-mb 256 [--name demo] [--gpus 2,1,4] [--slots 2,1,4]
                                         [--inventory out.yml]
    scripts/testcluster status
    scripts/testcluster down [NAME | --all]

`up` leaves the hosts running after it exits and prints the inventory path last;
`down` removes hosts, links, namespaces, sshd processes and the temp dir.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .harness import REPO_ROOT, Cluster, ClusterError, HostSpec, missing_requirements, reap_stale


def _ints(text: str | None, n: int, default: int) -> list[int]:
    if not text:
        return [default] * n
    vals = [int(v) for v in text.split(",")]
    if len(vals) != n:
        raise ClusterError(f"expected {n} comma-separated values, got {text!r}")
    return vals


def _find(name: str) -> Path:
    for path in Cluster.detached():
        if Cluster.load(path).label == name or path.stem == name:
            return path
    raise ClusterError(f"no running test cluster named {name!r} (see: testcluster status)")


def cmd_up(args: argparse.Namespace) -> int:
    if args.hosts < 1 or args.hosts > 50:
        raise ClusterError("host count must be 1..50")
    if args.shm_mb < 1:
        raise ClusterError("--shm-mb must be positive")
    if args.name and any(Cluster.load(p).label == args.name for p in Cluster.detached()):
        raise ClusterError(f"a test cluster named {args.name!r} is already running")
    gpus = _ints(args.gpus, args.hosts, 0)
    slots = _ints(args.slots, args.hosts, 1)
    specs = [
        HostSpec(f"{args.prefix}{i + 1}", shm_mb=args.shm_mb, gpu_count=gpus[i], max_concurrent_jobs=slots[i])
        for i in range(args.hosts)
    ]
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = args.python or (str(venv_python) if venv_python.exists() else sys.executable)
    cluster = Cluster(specs, detach=True, label=args.name or "", python=python).start()
    inventory = cluster.inventory
    assert inventory is not None
    if args.inventory:
        shutil.copy(inventory, args.inventory)
        inventory = Path(args.inventory).resolve()
    for h in cluster.hosts.values():
        print(
            f"{h.name:10} {h.address:15} netns={h.netns} shm={h.spec.shm_mb}M gpus={h.spec.gpu_count}"
            f" slots={h.spec.max_concurrent_jobs}"
        )
    print(f"inventory: {inventory}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    paths = Cluster.detached()
    if not paths:
        print("no test clusters running (started with testcluster up)")
    for path in paths:
        c = Cluster.load(path)
        alive = all(Path(f"/proc/{h.holder_pid}").exists() for h in c.hosts.values())
        print(
            f"{c.label or path.stem}: {len(c.hosts)} hosts, inventory {c.inventory}"
            f"{'' if alive else ' (hosts gone: run down)'}"
        )
        for h in c.hosts.values():
            print(f"  {h.name:10} {h.address:15} netns={h.netns} shm={h.spec.shm_mb}M")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    paths = Cluster.detached() if args.all else [_find(args.name)] if args.name else Cluster.detached()[:1]
    if not paths and not args.all:
        raise ClusterError("no test cluster running")
    for path in paths:
        c = Cluster.load(path)
        c.stop()
        print(f"removed {c.label or path.stem}")
    for netns in reap_stale():
        print(f"reaped stale {netns}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testcluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N hosts and write an inventory")
    up.add_argument("hosts", type=int)
    up.add_argument("--shm-mb", type=int, default=64, help="size of each host's /dev/shm (MiB)")
    up.add_argument("--name", default="", help="label used by status/down")
    up.add_argument("--prefix", default="node", help="host name prefix (node1, node2, ...)")
    up.add_argument("--gpus", help="per-host gpu_count, comma-separated")
    up.add_argument("--slots", help="per-host max_concurrent_jobs, comma-separated")
    up.add_argument("--inventory", help="also copy the inventory here")
    up.add_argument(
        "--python", help="ansible_python_interpreter on the hosts (default: the checkout's .venv)"
    )
    sub.add_parser("status", help="list running test clusters")
    down = sub.add_parser("down", help="tear a test cluster down")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    problem = missing_requirements()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.cmd](args)
    except (ClusterError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
