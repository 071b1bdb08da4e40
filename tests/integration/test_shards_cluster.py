"""One step over two controllers (issue 14, "past one controller"): Step 3 split into two
shards of two hosts each, run by two concurrent ansible-playbook processes on a real
4-host SSH test cluster; one controller killed mid-run, the merge refused while its shard
is incomplete, the shard resumed by the same command, then merged into one aggregate equal
to a single controller's run of the same step, every job done exactly once. Step 1's merge
(the survivors file) on the local inventory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, HostSpec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import shards  # noqa: E402

CHUNK = 100  # 2,000 demo survivors: 20 jobs, 10 per shard


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step3_vars(base: Path, **more: Any) -> dict[str, Any]:
    return {"step3_run_dir": str(base), "step3_chunk_size": CHUNK, **more}


def controller_env(tmp: Path, name: str) -> dict[str, str]:
    """Each controller its own caches, as on its own machine."""
    return {"PRNG_NPZ_CACHE": str(tmp / name / "npz"), "PRNG_THROUGHPUT": str(tmp / name / "throughput.json")}


def ranked(path: Path) -> list[tuple[int, float]]:
    return [(r["seed"], r["score"]) for r in json.loads(path.read_text())]


def merge(c: Cluster, base: Path, dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    return c.playbook(
        "playbooks/merge_shards.yml", extra_vars={"run_dir": str(base), "shard_dirs": [str(d) for d in dirs]}
    )


@pytest.mark.cluster
def test_two_shards_on_two_controllers_merge_into_the_single_controller_result(
    make_cluster: Any, tmp_path: Path
) -> None:
    numpy = {"worker_backend": "numpy"}
    c = make_cluster(
        [HostSpec(f"a{i}", groups=("shard_a",), vars=numpy) for i in (1, 2)]
        + [HostSpec(f"b{i}", groups=("shard_b",), vars=numpy) for i in (1, 2)]
    )
    base = tmp_path / "step3"
    dirs = [base / "shard-1-of-2", base / "shard-2-of-2"]
    # Controller B dispatches one job at a time, so that it is killed with most of its jobs left.
    b_vars = step3_vars(
        base, shard="2/2", fanout_group="shard_b", fanout_settings={"max_jobs_per_dispatch": 1}
    )
    a_vars = step3_vars(base, shard="1/2", fanout_group="shard_a")
    proc_a = c.playbook_popen(
        "playbooks/step3.yml", tmp_path / "a.log", a_vars, **controller_env(tmp_path, "a")
    )
    proc_b = c.playbook_popen(
        "playbooks/step3.yml", tmp_path / "b.log", b_vars, **controller_env(tmp_path, "b")
    )
    try:
        deadline = time.time() + 150
        while not any(r["ev"] == "done" for r in records(dirs[1])):
            assert proc_b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
            assert time.time() < deadline, "shard 2/2 did not finish a job in time"
            time.sleep(0.2)
        os.killpg(proc_b.pid, signal.SIGKILL)  # controller B crashes: no chance to clean up
        proc_b.wait(30)
        assert proc_a.wait(240) == 0, (tmp_path / "a.log").read_text()[-4000:]
    finally:
        for proc in (proc_a, proc_b):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    done_b = {r["job"] for r in records(dirs[1]) if r["ev"] == "done"}
    assert 1 <= len(done_b) < 10, done_b
    assert "merge the shards with playbooks/merge_shards.yml" in (tmp_path / "a.log").read_text()
    assert not (dirs[0] / "survivors_with_scores.json").exists()  # a shard alone is not aggregated

    deadline = time.time() + 90  # the killed controller's leftovers let go of its run folder
    while shards._locked(str(dirs[1])) and time.time() < deadline:
        time.sleep(0.5)
    refused = merge(c, base, dirs)
    assert refused.returncode != 0
    text = " ".join(refused.stdout.split())  # however the callback wraps the line
    assert f"error: shard 2/2 ({dirs[1]}): {10 - len(done_b)} of 10 jobs not done" in text, text[-3000:]
    assert not (base / "survivors_with_scores.json").exists()

    resumed = c.playbook("playbooks/step3.yml", extra_vars=b_vars, **controller_env(tmp_path, "b"))
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "resuming run" in resumed.stdout

    merged = merge(c, base, dirs)
    assert merged.returncode == 0, merged.stdout[-4000:]
    out = base / "survivors_with_scores.json"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    again = merge(c, base, list(reversed(dirs)))  # idempotent, whatever the order given
    assert again.returncode == 0 and hashlib.sha256(out.read_bytes()).hexdigest() == digest

    m = json.loads((base / "fanout_manifest.json").read_text())
    assert m["complete"] and m["jobs"]["completed"] == m["jobs"]["full_plan"] == 20
    assert [(s["shard"], s["jobs_done"]) for s in m["shards"]] == [("1/2", 10), ("2/2", 10)]
    # Which of a shard's hosts took its jobs depends on how soon each one started (under load
    # one may take them all), never a host of the other shard; none was left out.
    took = {s["shard"]: set(s["hosts"]) for s in m["shards"]}
    assert took["1/2"] <= {"a1", "a2"} and took["2/2"] <= {"b1", "b2"}, took
    for d in dirs:
        assert json.loads((d / "fanout_manifest.json").read_text())["left_out"] == {}, d
    assert sum(h["jobs_done"] for h in m["hosts"].values()) == 20
    assert json.loads((base / "run_manifest.json").read_text())["complete"] is True

    # Every job of the full plan done exactly once across the two journals; B's finished
    # jobs were not started again by the resume.
    done = Counter(r["job"] for d in dirs for r in records(d) if r["ev"] == "done")
    starts = Counter(r["job"] for r in records(dirs[1]) if r["ev"] == "start")
    assert all(starts[j] == 1 for j in done_b)

    single = tmp_path / "single"
    ref = c.playbook("playbooks/step3.yml", extra_vars=step3_vars(single), **controller_env(tmp_path, "one"))
    assert ref.returncode == 0, ref.stdout[-4000:]
    plan = [j["id"] for j in json.loads((single / "plan.json").read_text())]
    assert sorted(done) == plan and set(done.values()) == {1}
    assert ranked(out) == ranked(single / "survivors_with_scores.json")


def test_step1_shards_merge_into_the_single_run_survivors(tmp_path: Path) -> None:
    """Step 1 in two shards, one after the other on the embedded local inventory, merged:
    the same survivors file, column for column, as one run of the whole seed range."""
    import numpy as np

    env = dict(os.environ, **controller_env(tmp_path, "local"), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    bin_dir = Path(sys.executable).parent

    def play(playbook: str, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        argv = [str(bin_dir / "ansible-playbook"), playbook, "-e", json.dumps(extra)]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    start = json.loads((REPO / "demo" / "README.json").read_text())["step1"]["seed_start"]
    common = {"step1_seed_stop": start + 1_000_000, "step1_chunk_size": 100_000}
    for shard in ("1/2", "2/2"):
        res = play("playbooks/step1.yml", dict(common, step1_run_dir=str(tmp_path / "step1"), shard=shard))
        assert res.returncode == 0, res.stdout[-3000:]
    dirs = [str(tmp_path / "step1" / f"shard-{k}-of-2" / "bidirectional") for k in (1, 2)]
    merged = play("playbooks/merge_shards.yml", {"run_dir": str(tmp_path / "merged"), "shard_dirs": dirs})
    assert merged.returncode == 0, merged.stdout[-3000:]
    single = play("playbooks/step1.yml", dict(common, step1_run_dir=str(tmp_path / "single")))
    assert single.returncode == 0, single.stdout[-3000:]
    with (
        np.load(tmp_path / "merged" / "bidirectional_survivors.npz") as a,
        np.load(tmp_path / "single" / "bidirectional_survivors.npz") as b,
    ):
        assert a.files == b.files and a["seeds"].size > 0
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
    m = json.loads((tmp_path / "merged" / "fanout_manifest.json").read_text())
    assert m["plan"] == "sieve" and m["jobs"]["completed"] == 10 and "shard" not in m["params"]
