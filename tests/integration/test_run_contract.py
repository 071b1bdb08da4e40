"""The run contract end to end: `playbooks/step3.yml` as an operator runs it. A run is
right or fails loudly (i29-i34, i37): bad input is refused before anything starts, a
resume must be the same run, a corrupt finished chunk is redone, a host that failed its
preflight gets no jobs, and inventory values win over the collection's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import HostSpec

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO = REPO / "demo"


def playbook(
    playbook: str, extra: dict[str, Any], *args: str, inventory: Path | None = None, timeout: float = 600
) -> tuple[int, str, str]:
    """Run a playbook (local inventory unless given); return rc, the first failure's
    message (one line) and the whole output."""
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
    )
    env.pop("ANSIBLE_CONFIG", None)
    argv = [str(BIN / "ansible-playbook"), playbook, "-e", json.dumps(extra), *args]
    if inventory is not None:
        argv[1:1] = ["-i", str(inventory)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, failure_message(proc.stdout), proc.stdout + proc.stderr


def failure_message(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(("fatal: [", "failed: [")) and "=> {" in line:
            return str(json.loads(line.split("=> ", 1)[1]).get("msg", ""))
    return ""


def step3_local(run_dir: Path, *args: str, **extra: Any) -> tuple[int, str, str]:
    return playbook(
        "playbooks/step3.yml", {"step3_run_dir": str(run_dir), "step3_chunk_size": 500, **extra}, *args
    )


def journal_bytes(run_dir: Path) -> bytes:
    return (run_dir / "journal.jsonl").read_bytes()


def test_i30_resume_with_a_changed_parameter_is_refused_and_names_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "step3"
    rc, msg, out = step3_local(run_dir)
    assert rc == 0, out[-3000:]
    before = journal_bytes(run_dir), (run_dir / "globals.json").read_bytes()
    rc, msg, out = step3_local(run_dir, mod=997)
    assert rc != 0 and "\n" not in msg, out[-3000:]
    assert "started with other settings: mod 1000 -> 997" in msg and "fresh_run=true" in msg
    rc2, msg2, _ = step3_local(run_dir, step3_chunk_size=250)
    assert rc2 != 0 and "chunk_size 500 -> 250" in msg2
    assert (journal_bytes(run_dir), (run_dir / "globals.json").read_bytes()) == before  # nothing touched
    # fresh_run=true starts over with the new parameter and keeps the old run aside.
    rc, msg, out = step3_local(run_dir, step3_chunk_size=250, fresh_run=True)
    assert rc == 0, out[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["identity"]["params"]["chunk_size"] == 250
    assert any(p.name.startswith("step3.prev-") for p in tmp_path.iterdir())


def test_i31_bad_input_is_found_before_any_job_starts(tmp_path: Path) -> None:
    bad = tmp_path / "train_history.json"
    history = json.loads((DEMO / "train_history.json").read_text())
    bad.write_text(json.dumps(history[:-1] + [1000]))  # a draw outside [0, mod)
    run_dir = tmp_path / "step3"
    rc, msg, out = step3_local(run_dir, step3_train_history=str(bad))
    assert rc != 0 and str(bad) in msg and "\n" not in msg, out[-3000:]
    assert not (run_dir / "run.json").exists()  # no run was started, no job attempted
    assert "Step 3 preflight" not in out  # refused before any host was touched


def test_i34_a_corrupt_finished_chunk_is_redone_on_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "step3"
    rc, msg, out = step3_local(run_dir)
    assert rc == 0, out[-3000:]
    outputs = sorted((run_dir / "outputs").glob("c*/c*.json"))
    victim = outputs[1]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated after it was validated
    rc, msg, out = step3_local(run_dir)
    assert rc == 0, out[-3000:]
    assert f"run again, their outputs changed: {victim.parent.name}" in out
    assert len(json.loads(victim.read_text())) == len(json.loads(good))  # whole again
    # Same size, other content (a flipped digit): the recorded SHA-256 catches it.
    other = outputs[0]
    original = other.read_bytes()
    at = original.index(b'"seed": ') + len(b'"seed": ')
    flipped = original[:at] + (b"8" if original[at : at + 1] != b"8" else b"9") + original[at + 1 :]
    other.write_bytes(flipped)
    rc, msg, out = step3_local(run_dir)
    assert rc == 0, out[-3000:]
    assert f"run again, their outputs changed: {other.parent.name}" in out and "(sha256)" in out
    assert other.read_bytes() == original
    scored = json.loads((run_dir / "survivors_with_scores.json").read_text())
    survivors = json.loads((DEMO / "survivors.json").read_text())
    assert Counter(r["seed"] for r in scored) == Counter(r["seed"] for r in survivors)


def test_step1_takes_another_memory_model_checked_by_the_contract(tmp_path: Path) -> None:
    """Step 1 names its memory model as Step 3 does (-e memory_model / step1_memory_model);
    before, it took only the PRNG_MEMORY_MODEL environment variable and ignored the -e."""
    run_dir = tmp_path / "step1"
    bad = tmp_path / "model.json"
    bad.write_text("")
    for model, said in ((bad, "not a readable JSON file"), (tmp_path / "none.json", "file not found")):
        rc, msg, out = playbook(
            "playbooks/step1.yml", {"step1_run_dir": str(run_dir), "memory_model": str(model)}
        )
        assert rc == 2 and "\n" not in msg and "memory_model" in msg and str(model) in msg, out[-3000:]
        assert said in msg and "Step 1 preflight" not in out
    other = tmp_path / "other" / "memory_model.json"
    other.parent.mkdir()
    other.write_text((REPO / "data" / "memory_model.json").read_text())
    rc, msg, out = playbook(
        "playbooks/step1.yml", {"step1_run_dir": str(run_dir), "step1_memory_model": str(other)}, "--check"
    )
    assert rc == 0, out[-3000:]
    assert f'\\"memory_model\\": \\"{other}\\"' in out  # the plan names the model it sized with
    assert not (run_dir / "bidirectional" / "run.json").exists()


# -- on the real SSH test cluster ---------------------------------------------------------
NUMPY = {"worker_backend": "numpy"}


@pytest.mark.cluster
def test_i29_hosts_that_fail_the_preflight_get_no_jobs(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(
        [
            HostSpec("good", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2, vars=NUMPY),
            # its workers are not installed where its inventory says: the worker check fails
            HostSpec(
                "noworkers", max_concurrent_jobs=2, vars={**NUMPY, "worker_venv": str(tmp_path / "none")}
            ),
            # its ramdisk may not take the inputs: the preload is refused
            HostSpec("fullshm", max_concurrent_jobs=2, vars={**NUMPY, "ramdisk_max_percent": 1}),
        ]
    )
    run_dir = tmp_path / "step3"
    proc = c.playbook(
        "playbooks/step3.yml", extra_vars={"step3_run_dir": str(run_dir), "step3_chunk_size": 250}
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    fan = json.loads((run_dir / "fanout_manifest.json").read_text())
    assert set(fan["left_out"]) == {"noworkers", "fullshm"}
    assert (
        "failed the step3 preflight" in fan["left_out"]["noworkers"]
        and "worker" in fan["left_out"]["noworkers"]
    )
    assert "failed the step3 preflight" in fan["left_out"]["fullshm"]
    assert set(fan["hosts"]) == {"good"} and fan["complete"]
    assert "left out: noworkers: failed the step3 preflight" in proc.stdout
    scored = json.loads((run_dir / "survivors_with_scores.json").read_text())
    assert {r["metadata"]["host"] for r in scored} == {"good"}
    assert len(scored) == len(json.loads((DEMO / "survivors.json").read_text()))


@pytest.mark.cluster
def test_i32_a_bad_host_variable_stops_the_run_before_any_host_is_touched(
    make_cluster: Any, tmp_path: Path
) -> None:
    c = make_cluster([HostSpec("a", vars=NUMPY), HostSpec("b", max_concurrent_jobs=0, vars=NUMPY)])
    run_dir = tmp_path / "step3"
    env = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    proc = c.playbook("playbooks/step3.yml", extra_vars={"step3_run_dir": str(run_dir)}, **env)
    msg = failure_message(proc.stdout)
    assert proc.returncode != 0
    assert msg == "fanout: host b: max_concurrent_jobs: expected a value in [1, 1024], got 0"
    proc = c.playbook(
        "playbooks/step3.yml", extra_vars={"step3_run_dir": str(run_dir), "gpu_count": "twelve"}, **env
    )
    assert proc.returncode != 0
    assert failure_message(proc.stdout) == "fanout: host a: gpu_count: expected int, got 'twelve'"
    for host in c.hosts.values():  # no preload happened anywhere
        assert not list(host.shm.iterdir())
    assert not run_dir.exists() or not (run_dir / "run.json").exists()


@pytest.mark.cluster
def test_i37_inventory_all_vars_win_over_the_collection_defaults(make_cluster: Any, tmp_path: Path) -> None:
    """`ramdisk_root` and `worker_venv` set in the inventory's `all: vars:` are what every
    playbook uses (they were silently outranked by playbooks/group_vars/all.yml)."""
    c = make_cluster([HostSpec("a", vars=NUMPY), HostSpec("b", vars=NUMPY)])
    venv = tmp_path / "shared-venv"
    venv.symlink_to(REPO / ".venv")  # another path than the default <prng_home>/venv
    inv = yaml.safe_load(c.inventory.read_text())
    inv["all"]["vars"].update(ramdisk_root="/dev/shm/team-root", worker_venv=str(venv))
    for hosts in inv["all"]["children"].values():
        for hv in (hosts.get("hosts") or {}).values():
            if hv:
                hv.pop("worker_venv", None)
    c.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    run_dir = tmp_path / "step3"
    proc = c.playbook("playbooks/step3.yml", extra_vars={"step3_run_dir": str(run_dir)})
    assert proc.returncode == 0, proc.stdout[-4000:]
    fan = json.loads((run_dir / "fanout_manifest.json").read_text())
    assert fan["complete"] and not fan["left_out"]
    for host in c.hosts.values():
        # the JSON survivors reach the hosts converted once to NPZ (issue 10: one copy per host)
        assert (host.shm / "team-root" / "step3" / "survivors.npz").is_file()
        assert not (host.shm / "prng").exists()
    status = c.playbook("playbooks/ramdisk_status.yml")
    assert status.returncode == 0 and "step3" in status.stdout  # the table lists the step under team-root
    clear = c.playbook("playbooks/ramdisk_clear.yml")
    assert clear.returncode == 0, clear.stdout[-3000:]
    for host in c.hosts.values():
        assert not (host.shm / "team-root" / "step3").exists()


def test_a_limit_without_the_controller_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """`--limit n1` skips every play on localhost (the contract, the fan-out): before, the
    preflight failed on `object of type 'HostVarsVars' has no attribute 'step3_contract'`.
    Now one line says how to limit the hosts; with localhost in the limit the step runs."""
    inventory = tmp_path / "inv.yml"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(BIN / "python"),
        "gpu_type": "cpu",
        "gpu_count": 0,
        "max_concurrent_jobs": 1,
        "worker_venv": str(BIN.parent),
        "prng_home": str(tmp_path / "home"),
    }
    inventory.write_text(json.dumps({"all": {"children": {"gpu_nodes": {"hosts": {"n1": host}}}}}))
    extra = {"step3_run_dir": str(tmp_path / "run")}
    rc, msg, out = playbook("playbooks/step3.yml", extra, "--limit", "n1", inventory=inventory)
    assert rc == 2 and msg.startswith("--limit n1 leaves out localhost"), out[-3000:]
    assert "add it (--limit 'n1,localhost')" in msg and not (tmp_path / "run").exists()
    rc, msg, out = playbook(
        "playbooks/step3.yml", extra, "--check", "--limit", "n1,localhost", inventory=inventory
    )
    assert rc == 0, out[-3000:]
