"""Shards of one step (plugins/plugin_utils/fanout/shards.py): the split of the full plan,
the shard in the run contract and identity, and the merge's refusals, on real run folders
written by the real journal and planner."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import contract, shards  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.contract import ContractError  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import (  # noqa: E402
    Job,
    Journal,
    file_sha256,
    hash_inputs,
)
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import PlanError  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import ListPlan  # noqa: E402


# -- the split -------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 13))
def test_every_job_is_in_exactly_one_shard(n: int) -> None:
    for total in range(n, 130):
        jobs = [Job(id=f"c{i:04d}", argv=["x"], range=[i * 10, i * 10 + 10]) for i in range(total)]
        parts = [shards.select(jobs, f"{k}/{n}") for k in range(1, n + 1)]
        ids = [j.id for part, _info in parts for j in part]
        assert ids == [j.id for j in jobs]  # each once, contiguous, in plan order
        sizes = [len(part) for part, _info in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert len({info["full_plan_sha256"] for _part, info in parts}) == 1
        again = [shards.select(jobs, f"{k}/{n}")[1] for k in range(1, n + 1)]
        assert again == [info for _part, info in parts]  # the same on every controller and resume


def test_a_shard_left_without_jobs_is_refused() -> None:
    jobs = [Job(id=f"c{i}", argv=["x"]) for i in range(2)]
    with pytest.raises(
        shards.ShardError, match=r"^shard 1/3: the full plan has 2 jobs, so shard 1 would get none"
    ):
        shards.select(jobs, "1/3")


@pytest.mark.parametrize("value", ["0/2", "3/2", "x", "1/0", "-1/2", "1/2/3", "2", "1/", "a/b", True])
def test_bad_shard_is_one_line_naming_it(value: Any) -> None:
    with pytest.raises(ContractError) as err:
        contract.PARAMS["score"]["shard"].convert("shard", value)
    assert str(err.value).startswith("shard: expected K/N with 1 <= K <= N")
    assert "\n" not in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize(("value", "norm"), [("1/2", "1/2"), (" 2 / 2 ", "2/2"), ("01/3", "1/3")])
def test_good_shard_is_normalised(value: str, norm: str) -> None:
    assert contract.PARAMS["sieve"]["shard"].convert("shard", value) == norm


def jobs_file(tmp: Path, count: int, name: str = "jobs.json") -> Path:
    path = tmp / name
    jobs = [
        {"id": f"j{i:03d}", "argv": ["true"], "outputs": [{"path": "{out}/o.json"}]} for i in range(count)
    ]
    path.write_text(json.dumps({"jobs": jobs}))
    return path


def test_shard_is_in_the_identity_and_the_full_run_is_shared(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, 5)
    idents = {}
    for shard in ("1/2", "2/2", None):
        params = contract.check_params("list", {"jobs_file": str(path), "shard": shard})
        idents[shard] = contract.identity("list", params, hash_inputs(ListPlan(params).inputs()))
    assert idents["1/2"]["full_run"] == idents["2/2"]["full_run"]
    assert contract.identity_changes(idents["1/2"], idents["2/2"]) == ["shard 1/2 -> 2/2"]
    assert "full_run" not in idents[None] and "shard" not in idents[None]["params"]  # old runs unchanged
    assert idents["1/2"]["full_run"] == contract.full_run_hash(idents[None])


def test_the_planner_keeps_only_the_shards_part(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, 7)
    full = [j.id for j in ListPlan({"jobs_file": str(path)}).make_jobs()]
    seen = []
    for k in (1, 2, 3):
        plan = ListPlan({"jobs_file": str(path), "shard": f"{k}/3"})
        part = [j.id for j in plan.make_jobs()]
        assert plan.shard_info is not None and plan.shard_info["shard"] == f"{k}/3"
        assert part == full[slice(*plan.shard_info["jobs"])]
        seen += part
    assert seen == full
    with pytest.raises(PlanError, match="shard 1/9"):
        ListPlan({"jobs_file": str(path), "shard": "1/9"}).make_jobs()


# -- the merge ---------------------------------------------------------------------------
def make_shard(
    tmp: Path, shard: str, jobs: Path, *, done: int | None = None, host: str = "h1", folder: str = ""
) -> Path:
    """A shard's run folder as the fan-out action writes it (header, plan, journal, outputs)."""
    params = contract.check_params("list", {"jobs_file": str(jobs), "shard": shard})
    plan = ListPlan(params)
    part = plan.make_jobs()
    inputs = hash_inputs(plan.inputs())
    run_dir = tmp / (folder or "shard-" + shard.replace("/", "-of-"))
    header = {
        "run_id": "r-" + shard.replace("/", "-"),
        "created": 1.0,
        "plan": "list",
        "params": params,
        "inputs": inputs,
        "identity": contract.identity("list", params, inputs),
        "shard": plan.shard_info,
    }
    journal = Journal(str(run_dir))
    journal.create(header, part)
    for i, job in enumerate(part[:done] if done is not None else part):
        out = run_dir / "outputs" / job.id / "o.json"
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps({"job": job.id}))
        journal.append("start", job=job.id, host=host)
        rec = {
            "path": f"outputs/{job.id}/o.json",
            "bytes": out.stat().st_size,
            "sha256": file_sha256(str(out)),
        }
        journal.append(
            "done", job=job.id, host=host, duration_s=0.5 + i, result={"outputs": [rec], "slot": 0}
        )
    journal.close()
    return run_dir


def merge(*dirs: Path) -> list[shards.Shard]:
    return shards.check([shards.load(str(d)) for d in dirs])


def refused(*dirs: Path) -> str:
    with pytest.raises(shards.ShardError) as err:
        merge(*dirs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_merge_of_complete_shards_covers_every_job_once(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 5)
    a = make_shard(tmp_path, "1/2", jobs, host="a1")
    b = make_shard(tmp_path, "2/2", jobs, host="b1")
    done = merge(b, a)
    assert [s.info["shard"] for s in done] == ["1/2", "2/2"]
    outs = shards.outputs(done)
    assert [Path(p).parent.name for p in outs] == [f"j{i:03d}" for i in range(5)]
    m = shards.manifest(done)
    assert m["jobs"] == {"expected": 5, "completed": 5, "failed": 0, "split": 0, "full_plan": 5}
    assert {h: v["jobs_done"] for h, v in m["hosts"].items()} == {"a1": 2, "b1": 3}
    assert [(s["shard"], s["jobs"], s["jobs_done"]) for s in m["shards"]] == [
        ("1/2", [0, 2], 2),
        ("2/2", [2, 5], 3),
    ]
    assert "shard" not in m["params"]


def test_merge_refuses_an_incomplete_shard_naming_it(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 6)
    a = make_shard(tmp_path, "1/2", jobs)
    b = make_shard(tmp_path, "2/2", jobs, done=1)
    msg = refused(a, b)
    assert msg.startswith(f"shard 2/2 ({b}): 2 of 3 jobs not done (j004, j005); resume it"), msg


def test_merge_refuses_shards_of_another_run_naming_the_difference(tmp_path: Path) -> None:
    a = make_shard(tmp_path, "1/2", jobs_file(tmp_path, 4))
    (tmp_path / "other").mkdir()
    other = jobs_file(tmp_path / "other", 5)
    b = make_shard(tmp_path, "2/2", other)
    msg = refused(a, b)
    assert msg.startswith(
        f"shard 2/2 ({b}) belongs to another run than shard 1/2 ({a}): input jobs_file changed"
    )


def test_merge_refuses_a_missing_or_doubled_shard(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 6)
    a = make_shard(tmp_path, "1/3", jobs)
    c = make_shard(tmp_path, "3/3", jobs)
    assert refused(a, c) == "shard_dirs: shard 2/3 missing (given: 1/3, 3/3)"
    a2 = make_shard(tmp_path, "1/3", jobs, folder="again")
    assert refused(a, a2, c) == f"shard 1/3 given twice: {a}, {tmp_path / 'again'}"
    assert refused(a, a, c) == f"shard_dirs: {a} given twice"
    b = make_shard(tmp_path, "2/2", jobs)
    assert refused(a, b) == f"shard 2/2 ({b}) is one of 2 shards, shard 1/3 ({a}) one of 3"


def test_merge_refuses_shards_that_planned_other_jobs(tmp_path: Path) -> None:
    """The full plan's digest differs (a controller shrank its chunk size): named, not merged."""
    jobs = jobs_file(tmp_path, 6)
    a = make_shard(tmp_path, "1/2", jobs)
    b = make_shard(tmp_path, "2/2", jobs)
    header = json.loads((b / "run.json").read_text())
    header["shard"]["full_plan_sha256"] = "0" * 64
    (b / "run.json").write_text(json.dumps(header))
    assert "planned another full job list than shard 1/2" in refused(a, b)


def test_merge_refuses_a_changed_output_and_a_running_shard(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 4)
    a = make_shard(tmp_path, "1/2", jobs)
    b = make_shard(tmp_path, "2/2", jobs)
    (b / "outputs" / "j003" / "o.json").write_text(json.dumps({"job": "j999"}))  # same size
    assert refused(a, b) == (
        f"shard 2/2 ({b}): job j003: outputs/j003/o.json changed since it was validated (sha256); "
        "resume it (its command again), then merge again"
    )
    with open(a / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the fan-out action holds it
        assert "still running" in refused(a, b)


def test_merge_refuses_a_folder_that_is_not_a_shard(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 4)
    a = make_shard(tmp_path, "1/2", jobs)
    header = json.loads((a / "run.json").read_text())
    del header["shard"]
    (a / "run.json").write_text(json.dumps(header))
    assert "is not a shard (started without shard=K/N)" in refused(a)
    assert refused(tmp_path / "nowhere") == f"shard folder {tmp_path / 'nowhere'}: not found"
    (tmp_path / "a-file").write_text("")
    assert refused(tmp_path / "a-file") == f"shard folder {tmp_path / 'a-file'}: is a file, expected a folder"


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "merge-shards"), *args], capture_output=True, text=True
    )


def test_merge_script_is_idempotent_and_refuses_in_one_line(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 5)
    a = make_shard(tmp_path, "1/2", jobs)
    b = make_shard(tmp_path, "2/2", jobs, done=2)
    out = tmp_path / "merged"
    bad = script("--run-dir", str(out), str(a), str(b))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "shard 2/2" in bad.stderr
    assert not out.exists()  # nothing written
    b = make_shard(tmp_path, "2/2", jobs, folder="b-resumed")
    first = script("--run-dir", str(out), str(a), str(b))
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    # a jobs file has no aggregate: every job's outputs where one run of the whole file puts them
    assert result["jobs"]["completed"] == 5 and result["out"] == str(out / "outputs")
    copied = sorted(out.glob("outputs/*/o.json"))
    assert [json.loads(p.read_text())["job"] for p in copied] == [p.parent.name for p in copied]
    assert len(copied) == 5
    manifest = (out / "fanout_manifest.json").read_bytes()
    chunks = (out / "chunks.txt").read_text().split()
    assert len(chunks) == 5 and all(Path(p).is_file() for p in chunks)
    again = script("--run-dir", str(out), str(b), str(a))
    assert again.returncode == 0 and (out / "fanout_manifest.json").read_bytes() == manifest
    assert script("--run-dir", str(a), str(a), str(b)).stderr.startswith(
        f"error: run_dir {a}: holds a fan-out run"
    )
    moved = script(
        "--run-dir", str(out), "--inputs-json", json.dumps({"jobs_file": str(tmp_path)}), str(a), str(b)
    )
    assert moved.returncode == 2 and moved.stderr.startswith(f"error: input jobs_file: {tmp_path} not found")
