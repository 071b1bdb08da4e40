"""prng.cluster.inventory_report: how playbooks/check_inventory.yml judges what it found
(the whole playbook runs on the SSH test cluster in tests/integration/test_check_inventory.py;
here the cases a test host cannot show: an interpreter shim, an old Python, discovery)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.filter.inventory_report import inventory_report  # noqa: E402

GOOD = {
    "vars": {"ok": True, "text": "valid"},
    "reach": {
        "reached": True,
        "ran": True,
        "executable": "/usr/bin/python3",
        "version": "3.12",
        "explicit": True,
    },
    "workers_ok": True,
    "health": {"usable": [0, 1], "gpu_count": 2, "excluded": {}, "warnings": []},
    "memory": {
        "available_mb": 30000,
        "limit_mb": 32000,
        "workers_fit": 50,
        "shm": {"present": True, "used_percent": 1.0, "size_mb": 16000},
    },
    "ramdisk": {"shm": {"fstype": "tmpfs"}},
    "ramdisk_root": "/dev/shm/prng",
}


def report(**hosts: dict) -> dict:
    return inventory_report(hosts)


def test_a_ready_host_has_no_problem() -> None:
    r = report(good=GOOD)
    assert r["ready"] == ["good"] and r["rows"][0]["problems"] == []
    assert r["lines"][1].split() == [
        "good",
        "yes",
        "ok",
        "ok",
        "/usr/bin/python3",
        "3.12",
        "ok",
        "2/2",
        "30000",
        "MiB",
        "1%",
        "of",
        "16000",
        "MiB",
    ]
    assert r["line"] == "check_inventory: 1 of 1 host(s) ready; not ready: none"


def test_interpreter_discovered_shim_and_old_python() -> None:
    discovered = dict(GOOD, reach=dict(GOOD["reach"], explicit=False))
    shim = dict(
        GOOD,
        reach={
            "reached": True,
            "ran": False,
            "error": "/home/u/.pyenv/shims/python3: pyenv: version not installed",
        },
    )
    old = dict(GOOD, reach=dict(GOOD["reach"], version="3.6"))
    r = report(discovered=discovered, shim=shim, old=old)
    assert r["ready"] == ["discovered"] and r["not_ready"] == ["old", "shim"]
    text = "\n".join(r["lines"])
    assert (
        "discovered [warning] python: ansible_python_interpreter not set: discovery picked /usr/bin/python3"
        in text
    )
    assert "    fix: set ansible_python_interpreter: /usr/bin/python3 for the host" in text
    assert "shim [NOT READY] python: modules do not run: /home/u/.pyenv/shims/python3: pyenv" in text
    assert "old [NOT READY] python: Python 3.6 at /usr/bin/python3 is too old" in text
    assert r["line"] == "check_inventory: 1 of 3 host(s) ready; not ready: old (python), shim (python)"


def test_no_usable_gpu_no_memory_and_a_disk_root() -> None:
    bad = dict(
        GOOD,
        health={
            "usable": [],
            "gpu_count": 2,
            "excluded": {"0": "lost", "1": "Exclusive_Process"},
            "warnings": [],
        },
        memory=dict(
            GOOD["memory"],
            workers_fit=0,
            available_mb=300,
            worker_mb=431.3,
            margin_pct=20,
            limit_source="cgroup_v2",
        ),
        ramdisk={"shm": {"fstype": "ext4"}},
    )
    r = report(bad=bad)
    checks = [(p["check"], p["ready"]) for p in r["rows"][0]["problems"]]
    assert checks == [("gpus", False), ("memory", False), ("shm", True)]
    assert "no usable GPU of 2: GPU 0: lost" in r["lines"][2]
    assert r["line"] == "check_inventory: 0 of 1 host(s) ready; not ready: bad (gpus, memory)"
