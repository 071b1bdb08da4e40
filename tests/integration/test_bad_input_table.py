"""Bad input, as an operator types it: each kind gets one line naming the file, host or
variable, a non-zero exit, and no run started (i31-i33, i35). The table in
docs/bad-input.md is generated from these runs: this test fails when the doc and the code
disagree; `PRNG_UPDATE_DOCS=1 pytest tests/integration/test_bad_input_table.py` rewrites it."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.test_run_contract import DEMO, REPO, playbook

DOC = REPO / "docs" / "bad-input.md"


@dataclass
class Case:
    what: str
    extra: dict[str, Any]  # -e values; "{tmp}" in a string is the case's temp folder
    expect: str  # a fragment the message must hold (the file, host or variable named)
    make: Callable[[Path], None] | None = None  # writes the bad file(s) into the temp folder
    playbook: str = "playbooks/step3.yml"
    extra_args: list[str] = field(default_factory=list)


def write(name: str, content: Any) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp / name).write_text(text)

    return make


def survivors(records: Any) -> Callable[[Path], None]:
    return write("survivors.json", records)


def npz_without_sidecar(tmp: Path) -> None:
    np.savez(tmp / "survivors.npz", seeds=np.arange(10, dtype=np.uint64))


def npz_uint32(tmp: Path) -> None:
    from prng_workers.formats import file_sha256, write_survivors

    path = tmp / "survivors.npz"
    write_survivors(path, {"seeds": np.arange(10, dtype=np.uint64), "family": np.array(["java_lcg"] * 10)})
    with np.load(path) as data:
        cols = {k: data[k] for k in data.files}
    cols["seeds"] = cols["seeds"].astype(np.uint32)
    np.savez(path, **cols)
    side = path.with_name(path.name + ".meta.json")  # a consistent sidecar: only the dtype is wrong
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(dict(meta, npz_sha256=file_sha256(path))))


TRAIN = json.loads((DEMO / "train_history.json").read_text())
JOB = {"id": "t1", "argv": ["{worker_bin}/python", "-c", "pass"], "outputs": [{"path": "{out}/t.json"}]}
REC = {"seed": 5, "family": "java_lcg"}
S = "{tmp}/survivors.json"
CASES = [
    Case("survivors file missing", {"step3_survivors": "{tmp}/missing.json"}, "{tmp}/missing.json"),
    Case("survivors not JSON", {"step3_survivors": S}, S, survivors("seed,family\n5,java_lcg\n")),
    Case("survivors a JSON object, not a list", {"step3_survivors": S}, S, survivors(REC)),
    Case("survivors empty", {"step3_survivors": S}, S, survivors([])),
    Case("a survivor without a seed", {"step3_survivors": S}, S, survivors([{"family": "java_lcg"}])),
    Case("a negative seed", {"step3_survivors": S}, S, survivors([dict(REC, seed=-1)])),
    Case("a seed beyond 2^64", {"step3_survivors": S}, S, survivors([dict(REC, seed=2**64)])),
    Case("a seed that is not an integer", {"step3_survivors": S}, S, survivors([dict(REC, seed="5x")])),
    Case("duplicate seeds", {"step3_survivors": S}, S, survivors([REC, dict(REC, seed=7), REC])),
    Case("survivors without a family", {"step3_survivors": S}, S, survivors([{"seed": 5}])),
    Case(
        "NPZ survivors without their sidecar",
        {"step3_survivors": "{tmp}/survivors.npz"},
        "{tmp}/survivors.npz",
        npz_without_sidecar,
    ),
    Case(
        "NPZ seeds stored as uint32",
        {"step3_survivors": "{tmp}/survivors.npz"},
        "{tmp}/survivors.npz",
        npz_uint32,
    ),
    Case("unknown family", {"step3_family": "nope"}, "nope"),
    Case("family differs from the survivors'", {"step3_family": "mt19937"}, "mt19937"),
    Case(
        "train history draw >= mod",
        {"step3_train_history": "{tmp}/train.json"},
        "{tmp}/train.json",
        write("train.json", TRAIN[:-1] + [1000]),
    ),
    Case(
        "train history with a non-integer",
        {"step3_train_history": "{tmp}/train.json"},
        "{tmp}/train.json",
        write("train.json", TRAIN[:-1] + ["7"]),
    ),
    Case(
        "train history too short",
        {"step3_train_history": "{tmp}/train.json"},
        "{tmp}/train.json",
        write("train.json", TRAIN[:3]),
    ),
    Case(
        "holdout history empty",
        {"step3_holdout_history": "{tmp}/holdout.json"},
        "{tmp}/holdout.json",
        write("holdout.json", []),
    ),
    Case("mod not a number", {"step3_mod": "abc"}, "mod"),
    Case("mod below 2", {"step3_mod": 1}, "mod"),
    Case("chunk_size negative", {"step3_chunk_size": -5}, "chunk_size"),
    Case("chunk_size zero", {"step3_chunk_size": 0}, "chunk_size"),
    Case("chunk_size not an integer", {"step3_chunk_size": "abc"}, "chunk_size"),
    Case("job timeout not a number", {"step3_job_timeout": "abc"}, "timeout"),
    Case("job timeout zero", {"step3_job_timeout": 0}, "timeout"),
    Case("unknown scheduler setting", {"fanout_settings": {"max_attemps": 5}}, "max_attemps"),
    Case("scheduler setting out of range", {"fanout_settings": {"max_attempts": 0}}, "max_attempts"),
    Case("shard not K/N with 1 <= K <= N", {"shard": "3/2"}, "shard"),
    Case("host gpu_count not an integer", {"gpu_count": "twelve"}, "gpu_count"),
    Case("host max_concurrent_jobs zero", {"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
    Case("host max_concurrent_jobs negative", {"max_concurrent_jobs": -1}, "max_concurrent_jobs"),
    Case("host gpu_type unknown", {"gpu_type": "intel"}, "gpu_type"),
    Case("host memory_margin_pct out of range", {"memory_margin_pct": 150}, "memory_margin_pct"),
    Case(
        "Step 1 seed range empty",
        {"step1_seed_start": 10, "step1_seed_stop": 5},
        "seed_stop",
        playbook="playbooks/step1.yml",
    ),
    Case("Step 1 window zero", {"step1_window": 0}, "window", playbook="playbooks/step1.yml"),
    Case("Step 1 threshold above 1", {"step1_threshold": 2}, "threshold", playbook="playbooks/step1.yml"),
    Case(
        "Step 1 history missing",
        {"step1_history": "{tmp}/none.json"},
        "{tmp}/none.json",
        playbook="playbooks/step1.yml",
    ),
    # found by trying it as an operator would (issue 9, second pass)
    Case("survivors a folder", {"step3_survivors": "{tmp}"}, "{tmp} is a folder"),
    Case("run folder is a file", {"step3_run_dir": "{tmp}/keep.txt"}, "{tmp}/keep.txt"),
    Case(
        "memory model not JSON",
        {"step3_memory_model": "{tmp}/model.json"},
        "{tmp}/model.json",
        write("model.json", ""),
    ),
    Case("scheduler settings not a mapping", {"fanout_settings": "abc"}, "settings"),
    Case("host gpu_count a boolean", {"gpu_count": True}, "gpu_count"),
    Case("host memory_margin_pct NaN", {"memory_margin_pct": "nan"}, "memory_margin_pct"),
    Case("host worker_device unknown", {"worker_device": "gpu0"}, "worker_device"),
    Case("shard with non-ASCII digits", {"shard": "\u00b2/3"}, "shard"),
    Case("Step 1 threshold empty", {"step1_threshold": ""}, "threshold", playbook="playbooks/step1.yml"),
    Case(
        "Step 1 seed_start beyond 2^64",
        {"step1_seed_start": str(2**64)},
        "seed_start",
        playbook="playbooks/step1.yml",
    ),
    Case(
        "jobs file: an output outside the job's folder",
        {"jobs_file": "{tmp}/jobs.json"},
        "{tmp}/jobs.json: job t1",
        write("jobs.json", {"jobs": [dict(JOB, outputs=[{"path": "/etc/passwd"}])]}),
        playbook="playbooks/run_jobs.yml",
    ),
    Case(
        "jobs file: a job id that is a path",
        {"jobs_file": "{tmp}/jobs.json"},
        "{tmp}/jobs.json: job 0",
        write("jobs.json", {"jobs": [dict(JOB, id="../t1")]}),
        playbook="playbooks/run_jobs.yml",
    ),
    Case(
        "jobs file: argv a string",
        {"jobs_file": "{tmp}/jobs.json"},
        "{tmp}/jobs.json: job t1",
        write("jobs.json", {"jobs": [dict(JOB, argv="echo hi")]}),
        playbook="playbooks/run_jobs.yml",
    ),
    Case(
        "merge without shard_dirs",
        {"run_dir": "{tmp}/merged"},
        "shard_dirs",
        playbook="playbooks/merge_shards.yml",
    ),
    Case("job timeout under a second", {"step3_job_timeout": 0.001}, "timeout"),
    Case(
        "pipeline run folder is a file",
        {"run_dir": "{tmp}/keep.txt"},
        "run_dir: {tmp}/keep.txt",
        playbook="playbooks/pipeline.yml",
    ),
    Case(
        "ramdisk source is a folder",
        {"ramdisk_step": "step3", "ramdisk_files": ["{tmp}"]},
        "source {tmp} is a folder",
        playbook="playbooks/ramdisk_preload.yml",
    ),
    Case(
        "ramdisk clear of a disk folder",
        {"ramdisk_root": "{tmp}"},
        "{tmp}",
        playbook="playbooks/ramdisk_clear.yml",
    ),
    Case(
        "Step 1 memory model missing",
        {"memory_model": "{tmp}/none.json"},
        "memory_model: file not found: {tmp}/none.json",
        playbook="playbooks/step1.yml",
    ),
    Case(
        "Step 1 memory model not JSON",
        {"step1_memory_model": "{tmp}/model.json"},
        "memory_model {tmp}/model.json",
        write("model.json", ""),
        playbook="playbooks/step1.yml",
    ),
    # a misspelt -e name: Ansible ignores it and the run would go on with the default
    Case("a misspelt -e name", {"treshold": 0.02}, "did you mean threshold", playbook="playbooks/step1.yml"),
    Case(
        "ramdisk clear with a misspelt step variable (would clear every step)",
        {"ramdisk_clear_stp": "step1"},
        "did you mean ramdisk_clear_step",
        playbook="playbooks/ramdisk_clear.yml",
    ),
]


def fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: fill(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, tmp) for v in value]
    return value


def show(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>").replace("|", "\\|")
    return re.sub(
        r"is on \S+ \(mount [^)]*\)", "is on <disk fs> (mount <its mount>)", text
    )  # machine-specific


def run_case(case: Case, tmp: Path) -> tuple[int, str]:
    if case.make is not None:
        case.make(tmp)
    (tmp / "keep.txt").write_text("an operator's file\n")
    run_dir = tmp / "run"
    dirs = {"step3_run_dir": str(run_dir), "step1_run_dir": str(run_dir), "jobs_run_dir": str(run_dir)}
    extra = dict(dirs, **fill(case.extra, tmp))
    rc, msg, out = playbook(case.playbook, extra, *case.extra_args, timeout=300)
    assert rc != 0, f"{case.what}: accepted\n{out[-2000:]}"
    assert msg and "\n" not in msg, f"{case.what}: not one line: {msg!r}\n{out[-2000:]}"
    assert fill(case.expect, tmp) in msg, f"{case.what}: {msg!r} does not name {case.expect}"
    assert "Traceback" not in out, f"{case.what}: a traceback reached the operator"
    assert not (run_dir / "run.json").exists() and not list(run_dir.glob("*/run.json")), "a run was started"
    assert (tmp / "keep.txt").read_text() == "an operator's file\n", "an operator's file was touched"
    return rc, show(msg, tmp)


def test_bad_input_table_matches_the_code(tmp_path_factory: Any) -> None:
    rows = []
    for i, case in enumerate(CASES, 1):
        rc, msg = run_case(case, tmp_path_factory.mktemp(f"case{i}"))
        extra = " ".join(
            f"-e {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in case.extra.items()
        )
        rows.append(
            f"| {i} | {case.what} | `{case.playbook.split('/')[-1]}` `{extra.replace('{tmp}', '<tmp>')}` "
            f"| {msg} | {rc} |"
        )
    doc = (
        "# Bad input: what each kind gets\n\n"
        "Generated by `tests/integration/test_bad_input_table.py` from real `ansible-playbook` runs on\n"
        "the embedded local inventory (`PRNG_UPDATE_DOCS=1` rewrites it; the test fails when this\n"
        "page and the code disagree). In every case nothing was started: no run folder, no preload,\n"
        "no job, and the files already there are untouched. `<tmp>` is the folder holding the bad\n"
        "file, `<repo>` the checkout. Exit 2 is ansible-playbook's exit for a failed task.\n\n"
        "| # | bad input | command | message (one line) | exit |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    if os.environ.get("PRNG_UPDATE_DOCS") == "1":
        DOC.write_text(doc)
    current = DOC.read_text() if DOC.exists() else ""
    assert current == doc, "docs/bad-input.md is out of date (PRNG_UPDATE_DOCS=1 rewrites it):\n" + "".join(
        difflib.unified_diff(current.splitlines(True), doc.splitlines(True), "docs", "code")
    )
