"""Planner parts of issue 10: the old scripts_coordinator jobs format (what is rewritten and
what is ignored, said), throughput remembered between runs, and the --check plan preview."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "collections"))

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import HostSpec, PlanError
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import ListPlan, SievePlan
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.sizing import (
    default_memory_model,
    load_throughput,
    plan_preview,
    remember_throughput,
    size_hosts,
    slots_for,
    stored_rate,
)


def old_jobs(tmp_path: Path, n: int = 3) -> Path:
    jobs = [
        {
            "job_id": f"scorer_trial_{i:04d}",
            "script": "scorer_trial_worker.py",
            "args": [
                "--survivors",
                "/dev/shm/prng/bidirectional_survivors_binary.npz",
                "--train-history",
                "train_history.json",
                "--params=/elsewhere/other.json",
                f"--output=results/t{i}.json",
            ],
            "gpu_id": i,
            "priority": 1,
        }
        for i in range(n)
    ]
    path = tmp_path / "scorer_jobs.json"
    path.write_text(json.dumps({"jobs": jobs}))
    return path


def test_old_scripts_coordinator_jobs_are_read_and_what_is_ignored_is_said(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = [
        str(data / n)
        for n in ("bidirectional_survivors_binary.npz", "train_history.json", "scorer_trial_worker.py")
    ]
    plan = ListPlan({"jobs_file": str(old_jobs(tmp_path)), "files": files, "timeout": 60.0})
    jobs = plan.make_jobs()
    assert [j.id for j in jobs] == ["scorer_trial_0000", "scorer_trial_0001", "scorer_trial_0002"]
    assert jobs[1].argv == [
        "{worker_bin}/python",
        "{input_dir}/scorer_trial_worker.py",
        "--survivors",
        "{input_dir}/bidirectional_survivors_binary.npz",
        "--train-history",
        "{input_dir}/train_history.json",
        "--params=/elsewhere/other.json",  # not one of the step's files: as given
        "--output={out}/t1.json",
    ]
    assert jobs[1].outputs == [{"path": "{out}/t1.json", "kind": "json"}]
    assert plan.notes[0].startswith("ignored gpu_id in 3 jobs: each slot binds its own GPU")
    assert "ignored unknown fields: priority (3 jobs)" in plan.notes
    assert any(n.startswith("3 output paths given as --output arguments") for n in plan.notes)
    assert any(n.startswith("9 arguments naming the step's files") for n in plan.notes)
    assert set(plan.inputs()) == {
        "jobs_file",
        "file:bidirectional_survivors_binary.npz",
        "file:train_history.json",
        "file:scorer_trial_worker.py",
    }


def test_old_job_without_an_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [{"job_id": "a", "script": "x.py", "args": ["--n", "1"]}]}))
    with pytest.raises(PlanError, match="names no output"):
        ListPlan({"jobs_file": str(path)}).make_jobs()
    with pytest.raises(PlanError, match="two inputs named t.json"):
        ListPlan(
            {"jobs_file": str(path), "files": [str(tmp_path / "a" / "t.json"), str(tmp_path / "t.json")]}
        ).inputs()


def test_throughput_is_remembered_per_host_and_gpu_type(tmp_path: Path) -> None:
    path = str(tmp_path / "throughput.json")
    assert load_throughput(path) == {"version": 1, "rates": {}}
    remember_throughput(
        path,
        "score",
        {
            "h1": {"gpu_type": "rocm", "rate_units_per_slot_s": 100.0, "jobs_done": 3},
            "h2": {"gpu_type": "rocm", "rate_units_per_slot_s": 0, "jobs_done": 0},
        },
    )
    doc = remember_throughput(
        path, "score", {"h1": {"gpu_type": "rocm", "rate_units_per_slot_s": 200.0, "jobs_done": 3}}
    )
    assert doc["rates"]["score"]["host:h1"]["rate"] == 150.0 and doc["rates"]["score"]["host:h1"]["runs"] == 2
    table = load_throughput(path)
    assert stored_rate(table, "score", HostSpec("h1", gpu_type="rocm")) == (150.0, "this host, 2 runs")
    # a host never measured gets its GPU type's rate; another plan kind has none
    assert stored_rate(table, "score", HostSpec("h9", gpu_type="rocm"))[1] == "rocm, 2 runs"
    assert stored_rate(table, "sieve", HostSpec("h1", gpu_type="rocm")) == (None, "no stored rate")


def test_plan_preview_eta_slots_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(
        json.dumps({"jobs": [{"id": f"j{i}", "argv": ["x"], "output": "{out}/o.json"} for i in range(12)]})
    )
    plan = ListPlan({"jobs_file": str(path)})
    a = HostSpec("a", gpu_type="cuda", gpu_count=4, max_concurrent_jobs=2, memory_available_mb=1000)
    b = HostSpec("b", gpu_type="cuda", gpu_count=2, max_concurrent_jobs=2)
    for h in (a, b):
        slots_for(h, 100.0)
    table = {"version": 1, "rates": {"list": {"gpu_type:cuda": {"rate": 0.5, "runs": 1}}}}
    got = plan_preview(plan, {"chunk_size": None, "worker_mb": {"a": 100.0}}, [a, b], {"c": "down"}, table)
    assert got["jobs"] == 12 and got["units"] == 12 and got["left_out"] == {"c": "down"}
    assert got["eta_s"] == 12 / (0.5 * 4)  # 4 slots at 0.5 jobs per slot-second
    assert got["hosts"]["a"]["memory_limit"] == "2 x 100.0 MiB = 200.0 of 800.0 MiB usable"
    assert "memory_fit=8" in got["hosts"]["a"]["slot_reason"]
    got = plan_preview(plan, {}, [a, b], {}, {"version": 1, "rates": {}})
    assert got["eta_s"] is None and got["eta"] == "unknown: no stored throughput for a, b"


def sieve_model(path: Path, figures: dict) -> None:
    """A model file as prng-memory-model writes it: the Step 3 part and the `sieve` section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "models": {"numpy": {"base_mb": 86.0, "bytes_per_seed_draw": 0.2}},
                "measurements": [],
                "sieve": {"backends": {b: {"base_mb": mb, "chunks": [100000]} for b, mb in figures.items()}},
            }
        )
    )


def test_sieve_slots_are_limited_by_the_hosts_sieve_figure_and_the_preview_shows_it(tmp_path: Path) -> None:
    controller = tmp_path / "data" / "memory_model.json"
    sieve_model(controller, {"cpu": 150.0, "gpu": 900.0})
    sieve_model(tmp_path / "data" / "memory_models" / "g.json", {"gpu": 300.0})  # measured on g itself
    plan = SievePlan(
        {
            "history": str(tmp_path / "h.json"),
            "family": "java_lcg",
            "seed_start": 0,
            "seed_stop": 1000,
            "chunk_size": 100,
            "window": 8,
        }
    )
    c = HostSpec("c", max_concurrent_jobs=8, memory_available_mb=1000, backend="cpu")
    g = HostSpec(
        "g", gpu_type="cuda", gpu_count=4, max_concurrent_jobs=4, memory_available_mb=1000, backend="torch"
    )
    n = HostSpec("n", max_concurrent_jobs=3, memory_available_mb=1000, backend="numpy")
    hosts = [c, g, n]
    for h in hosts:
        plan.adapt_host(h)  # torch -> the sieve's gpu
    params = dict(plan.params, memory_model=str(controller))
    assert size_hosts(plan, params, hosts) == ""
    assert params["chunk_size"] == 100  # flat in the chunk: never shrunk
    # 800 MiB usable (20 % margin): 5 cpu workers of 150, 2 gpu workers of 300 (g's own model)
    assert (c.slots, g.slots, n.slots) == (5, 2, 3)
    assert "memory_fit=5" in c.slot_reason
    assert c.slot_reason.endswith("memory model: the controller's measurement (fallback), sieve backend cpu")
    assert g.slot_reason.endswith("memory model: measured on this host, sieve backend gpu")
    assert "memory_fit" not in n.slot_reason
    assert n.slot_reason.endswith("no memory model with a sieve figure for backend numpy")
    got = plan_preview(plan, params, hosts, {}, {"version": 1, "rates": {}})
    assert got["jobs"] == 10 and got["chunk_size"] == 100
    assert got["hosts"]["c"]["predicted_worker_mb"] == 150.0
    assert got["hosts"]["c"]["memory_limit"] == "5 x 150.0 MiB = 750.0 of 800.0 MiB usable"
    assert got["hosts"]["g"]["memory_limit"] == "2 x 300.0 MiB = 600.0 of 800.0 MiB usable"
    assert "measured on this host" in got["hosts"]["g"]["slot_reason"]
    assert got["hosts"]["n"]["predicted_worker_mb"] is None
    assert got["hosts"]["n"]["memory_limit"] == "no memory model for this plan"


def test_a_sieve_plan_without_memory_model_uses_the_collections_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Step 1 passes no memory_model: data/memory_model.json next to the throughput file
    model = tmp_path / "memory_model.json"
    sieve_model(model, {"numpy": 400.0})
    monkeypatch.setenv("PRNG_MEMORY_MODEL", str(model))
    plan = SievePlan(
        {"history": "h.json", "family": "java_lcg", "seed_start": 0, "seed_stop": 10, "chunk_size": 5}
    )
    h = HostSpec("h", max_concurrent_jobs=4, memory_available_mb=1000)
    size_hosts(plan, dict(plan.params), [h])
    assert h.slots == 2 and "sieve backend numpy" in h.slot_reason
    # without the override: the collection's own model, which carries the measured sieve figures
    monkeypatch.delenv("PRNG_MEMORY_MODEL")
    repo_model = Path(__file__).resolve().parents[4] / "data" / "memory_model.json"
    assert Path(default_memory_model()).resolve() == repo_model
    figures = json.loads(repo_model.read_text())["sieve"]["backends"]
    assert figures["cpu"]["base_mb"] > 0 and figures["numpy"]["base_mb"] > 0
