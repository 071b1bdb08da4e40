"""`ansible-playbook playbooks/pipeline.yml` with no variables but the run folder (and a
private ramdisk root): the demo history goes through Step 1 and Step 3 on the embedded
local inventory, the planted seed is ranked first, and Step 1 reproduces the committed
demo survivors (scripts/make-demo-data) seed for seed; a rerun redoes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prng_workers.formats import read_survivors, survivors_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def shm_root() -> object:
    root = Path(f"/dev/shm/prng-pipeline-demo-{os.getpid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_pipeline_demo_ranks_the_planted_seed_first(tmp_path: Path, shm_root: Path) -> None:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)  # the checkout's ansible.cfg, as a user gets it
    run_dir = tmp_path / "pipeline"
    argv = [
        str(BIN / "ansible-playbook"),
        "playbooks/pipeline.yml",
        "-e",
        json.dumps({"run_dir": str(run_dir), "ramdisk_root": str(shm_root)}),
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    demo = json.loads((REPO / "demo" / "README.json").read_text())
    scored = json.loads((run_dir / "step3" / "survivors_with_scores.json").read_text())
    assert scored[0]["seed"] == demo["planted_seed"] and scored[0]["holdout_hits"] == 1.0
    # Step 1 on the demo is what the committed demo survivors claim to be
    step1 = read_survivors(run_dir / "step1" / "bidirectional_survivors.npz")
    committed = read_survivors(REPO / "demo" / "survivors.json")
    for key in ("seeds", "forward_match_rate", "reverse_match_rate", "score", "best_skip"):
        assert step1[key].tolist() == committed[key].tolist(), key
    params = survivors_params(run_dir / "step1" / "bidirectional_survivors.npz")
    assert params["direction"] == "bidirectional" and params["family"] == demo["family"]
    assert (params["seed_start"], params["seed_end"]) == (
        demo["step1"]["seed_start"],
        demo["step1"]["seed_stop"],
    )
    assert json.loads((run_dir / "train_history.json").read_text()) == json.loads(
        (REPO / "demo" / "train_history.json").read_text()
    )
    assert "top seeds: [{}".format(demo["planted_seed"]) in proc.stdout
    assert not [p for p in shm_root.iterdir() if not p.name.startswith(".")]  # every step cleared
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "Step 1 already finished" in again.stdout and "Step 3 already finished" in again.stdout
    # a marker that is not JSON is "not finished" (before: a raw from_json error): Step 1 runs,
    # its journal finds every chunk done, and the marker is written again
    marker = run_dir / "step1" / "step.done.json"
    marker.write_text(marker.read_text()[:20])
    third = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-4000:]
    said = " ".join(third.stdout.split())  # the callback wraps long messages
    assert f"{marker} is not JSON: step1 is not taken as finished" in said
    assert "Step 1 already finished" not in said and "Step 3 already finished" in said
    assert json.loads(marker.read_text())["step"] == "step1"


def test_pipeline_own_history_offset_skip_check_and_plan_only(tmp_path: Path, shm_root: Path) -> None:
    """The issue's interface on a history of our own: a seed planted at offset 7 and skip 3
    comes out of Step 3 ranked first (Step 3 scored it on other draws than Step 1 found it on,
    i.e. 0 matches); `--check` prints Step 1's plan and stops cleanly before Step 3 (it failed
    on Step 3's missing input); `-e plan_only=true` refuses instead of running everything."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)
    seed, history = 3_000_017, tmp_path / "history.json"
    made = subprocess.run(
        [str(BIN / "prng-make-history"), "--family", "mt19937", "--seed", str(seed), "--count", "300",
         "--skip", "3", "--offset", "7", "--out", str(history)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    run_dir = tmp_path / "p"
    params = {
        "history": str(history), "family": "mt19937", "seed_start": seed - 2000, "seed_end": seed + 2000,
        "window": 32, "offset": 7, "skip_min": 0, "skip_max": 4, "threshold": 0.03, "mod": 1000,
        "run_dir": str(run_dir), "ramdisk_root": str(shm_root),
    }  # fmt: skip
    argv = [str(BIN / "ansible-playbook"), "playbooks/pipeline.yml", "-e", json.dumps(params)]

    def play(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*argv, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    refused = play("-e", "plan_only=true")
    assert refused.returncode != 0 and "run the same command with --check" in refused.stdout
    assert not run_dir.exists()
    check = play("--check")
    assert check.returncode == 0, check.stdout[-4000:]
    assert '"chunk_size": 100000' in check.stdout and '"slot_reason"' in check.stdout
    assert "check mode: no job ran; Step 1 planned above" in check.stdout and not run_dir.exists()
    done = play()
    assert done.returncode == 0, done.stdout[-4000:]
    draws = [h["draw"] for h in json.loads(history.read_text())]
    assert json.loads((run_dir / "train_history.json").read_text()) == draws[:240]
    assert json.loads((run_dir / "holdout_history.json").read_text()) == draws[240:]
    step1 = read_survivors(run_dir / "step1" / "bidirectional_survivors.npz")
    row = step1["seeds"].tolist().index(seed)
    rates = [step1[k][row] for k in ("forward_match_rate", "reverse_match_rate", "score", "best_skip")]
    assert rates == [1, 1, 1, 3]
    scored = json.loads((run_dir / "step3" / "survivors_with_scores.json").read_text())
    assert scored[0]["seed"] == seed and scored[0]["holdout_hits"] == 1.0 and len(scored) > 1
    assert scored[0]["features"]["exact_matches"] == 240 - 7
    assert scored[0]["features"]["meta_reverse_match_rate"] == 1.0
    replan = play("--check")  # Step 1's survivors exist now: Step 3's plan shows too
    assert replan.returncode == 0 and replan.stdout.count('"slot_reason"') == 2, replan.stdout[-4000:]


def test_run_jobs_refuses_a_relative_script_no_host_has(tmp_path: Path, shm_root: Path) -> None:
    """An old scripts_coordinator jobs file names its script relative to the old project folder;
    a host runs each job in the job's own folder, so a script that is not one of the step's
    files never exists there. Refused before anything starts (every job failed on every retry)."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)
    (tmp_path / "train_history.json").write_text(json.dumps(list(range(50))))
    (tmp_path / "trial.py").write_text("import sys; open(sys.argv[2], 'w').write('{}')\n")
    job = {"job_id": "t0", "script": "trial.py", "args": ["--output", "r/t0.json"], "gpu_id": 0}
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [job]}))
    params = {
        "jobs_file": str(tmp_path / "jobs.json"), "run_dir": str(tmp_path / "run"),
        "ramdisk_root": str(shm_root), "jobs_inputs": [str(tmp_path / "train_history.json")],
    }  # fmt: skip
    argv = [str(BIN / "ansible-playbook"), "playbooks/run_jobs.yml", "-e", json.dumps(params)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    said = " ".join(proc.stdout.split())
    assert "script trial.py is a relative path and not one of the step's files (train_history.json)" in said
    assert not (tmp_path / "run" / "journal.jsonl").exists()
    params["jobs_inputs"].append(str(tmp_path / "trial.py"))  # named: it travels with the data and runs
    argv[-1] = json.dumps(params)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "run" / "outputs" / "t0" / "t0.json").read_text() == "{}"


def test_pipeline_rerun_does_not_redo_finished_steps_2_and_5(tmp_path: Path, shm_root: Path) -> None:
    """Steps 2 and 5 (run_jobs.yml) get the done-marker of Steps 1 and 3: a failed Step 5 is
    not marked; the rerun does not load Step 2's files again nor go through its fan-out, and
    finishes Step 5; a third run redoes nothing. Before, a rerun preloaded Steps 2 and 5's
    files onto every host again and went through their fan-outs."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)
    script, flag = tmp_path / "size.py", tmp_path / "fail-step5"
    script.write_text(
        "import json, os, sys\n"
        "a = sys.argv\n"
        "if os.path.exists(a[a.index('--fail-if') + 1]):\n"
        "    sys.exit(3)\n"
        "size = os.path.getsize(a[a.index('--in') + 1])\n"
        "json.dump({'bytes': size}, open(a[a.index('--output') + 1], 'w'))\n"
    )

    def jobs(name: str, reads: str, fail_if: Path) -> str:
        args = ["--in", reads, "--fail-if", str(fail_if), "--output", f"results/{name}.json"]
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"jobs": [{"job_id": name, "script": "size.py", "args": args}]})
        )
        return str(tmp_path / f"{name}.json")

    run_dir = tmp_path / "pipeline"
    params = {
        "run_dir": str(run_dir), "ramdisk_root": str(shm_root),
        "step2_jobs": jobs("s2", "train_history.json", tmp_path / "never"), "step2_inputs": [str(script)],
        "step5_jobs": jobs("s5", "survivors_with_scores.json", flag), "step5_inputs": [str(script)],
    }  # fmt: skip
    argv = [str(BIN / "ansible-playbook"), "playbooks/pipeline.yml", "-e", json.dumps(params)]

    def play() -> str:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        return f"rc={proc.returncode}\n" + proc.stdout

    def step_play(out: str, name: str) -> str:
        """The output of the play called `name` (up to the next play)."""
        return out.split(f"PLAY [{name}]", 1)[1].split("PLAY [", 1)[0]

    def loaded(step: str) -> list[bool]:
        """Per run: whether a host held <ramdisk_root>/<step> right after the step (the ramdisk
        is read at each transition before it is cleared, ramdisk/transitions.jsonl)."""
        lines = (run_dir / "ramdisk" / "transitions.jsonl").read_text().splitlines()
        found = [r["before"] for r in map(json.loads, lines) if r["transition"] == f"after-{step}"]
        return [any(step in held for held in before.values()) for before in found]

    flag.write_text("Step 5's job fails while this file exists\n")
    out = play()
    assert out.startswith("rc=2"), out[-4000:]
    s2, s5 = run_dir / "step2", run_dir / "step5"
    assert json.loads((s2 / "outputs" / "s2" / "s2.json").read_text())["bytes"] > 0
    assert (s2 / "step.done.json").is_file() and not (s5 / "step.done.json").exists()  # failed: not marked
    step2_run = [(s2 / n).read_bytes() for n in ("journal.jsonl", "fanout_manifest.json", "step.done.json")]
    flag.unlink()
    out = play()
    assert out.startswith("rc=0"), out[-4000:]
    for step in ("Step 1", "Step 2", "Step 3"):
        assert f"{step} already finished" in out, step
    assert "Step 5 already finished" not in out and (s5 / "step.done.json").is_file()
    assert json.loads((s5 / "outputs" / "s5" / "s5.json").read_text())["bytes"] > 0
    # Step 2: no preflight (no preload onto the hosts), no fan-out, nothing of its run touched
    assert "cluster_host" not in step_play(
        out, "Jobs preflight on every host (the step's files into the ramdisk)"
    )
    assert [
        (s2 / n).read_bytes() for n in ("journal.jsonl", "fanout_manifest.json", "step.done.json")
    ] == step2_run
    step5_run = [(s5 / n).read_bytes() for n in ("journal.jsonl", "fanout_manifest.json", "step.done.json")]
    out = play()
    assert out.startswith("rc=0"), out[-4000:]
    for step in ("Step 1", "Step 2", "Step 3", "Step 5"):
        assert f"{step} already finished" in out, step
    assert [
        (s5 / n).read_bytes() for n in ("journal.jsonl", "fanout_manifest.json", "step.done.json")
    ] == step5_run
    assert "fan-out: resuming run" not in out
    # Step 2 preloaded in the first run only; Step 5 held its files from the failed first run
    # (a failed step keeps them) to the end of the second, and was not loaded in the third
    assert loaded("step2") == [True, False, False] and loaded("step5") == [True, False]


def test_run_jobs_shards_run_in_their_own_folders_and_merge(tmp_path: Path) -> None:
    """run_jobs.yml -e shard=K/N runs shard K's jobs in <run_dir>/shard-K-of-N, as Steps 1
    and 3 (before, the shard was not passed on: every controller ran every job in <run_dir>);
    merge_shards.yml puts every job's output where one run puts it."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG", None)
    code = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    jobs = [
        {"id": f"t{i}", "argv": ["{worker_bin}/python", "-c", code, "{out}/t.json", f'{{"i": {i}}}'],
         "outputs": [{"path": "{out}/t.json", "kind": "json"}]}
        for i in range(3)
    ]  # fmt: skip
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    run_dir = tmp_path / "run"

    def play(book: str, **extra: object) -> subprocess.CompletedProcess:
        argv = [str(BIN / "ansible-playbook"), book, "-e", json.dumps(extra)]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    for shard, part in (("1/2", [0, 1]), ("2/2", [1, 3])):
        proc = play(
            "playbooks/run_jobs.yml", jobs_file=str(tmp_path / "jobs.json"), run_dir=str(run_dir), shard=shard
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        folder = run_dir / f"shard-{shard.replace('/', '-of-')}"
        assert json.loads((folder / "run.json").read_text())["shard"]["jobs"] == part
    assert not (run_dir / "run.json").exists()
    assert sorted(p.name for p in (run_dir / "shard-1-of-2" / "outputs").iterdir()) == ["t0"]
    shard_dirs = [str(run_dir / "shard-1-of-2"), str(run_dir / "shard-2-of-2")]
    merged = play("playbooks/merge_shards.yml", run_dir=str(run_dir), shard_dirs=shard_dirs)
    assert merged.returncode == 0, merged.stdout[-3000:]
    for i in range(3):
        assert json.loads((run_dir / "outputs" / f"t{i}" / "t.json").read_text()) == {"i": i}
    assert json.loads((run_dir / "fanout_manifest.json").read_text())["jobs"]["completed"] == 3
