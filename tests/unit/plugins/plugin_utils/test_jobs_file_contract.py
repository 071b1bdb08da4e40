"""A jobs file (playbooks/run_jobs.yml, plan `list`) is checked whole before anything starts:
each job's id, argv/args, outputs, timeout, range, units and env (issue 9). Before, a string
argv ran letter by letter, an id `../x` named folders outside the run, and an output path
outside the job's folder was deleted on the host as a "stale output" before the job ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.planner import PlanError  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import ListPlan  # noqa: E402

OK = {"id": "t1", "argv": ["{worker_bin}/python", "-c", "pass"], "outputs": [{"path": "{out}/t.json"}]}


def jobs(tmp_path: Path, *items: Any) -> list:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": list(items)}))
    return ListPlan({"jobs_file": str(path)}).make_jobs()


def test_a_good_jobs_file_and_the_old_format_still_pass(tmp_path: Path) -> None:
    assert [j.id for j in jobs(tmp_path, OK, dict(OK, id=7, timeout=60, range=[0, 10], env={"A": 1}))] == [
        "t1",
        "7",
    ]
    old = {"job_id": "scorer_trial_0001", "script": "t.py", "args": ["--output", "/tmp/x.json"], "gpu_id": 0}
    (job,) = jobs(tmp_path, old)
    assert job.outputs == [{"path": "{out}/x.json", "kind": "json"}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "../../etc"}, 'job 0 has id "../../etc", expected a name of letters, digits'),
        ({"id": ""}, 'job 0 has id "", expected a name'),
        ({"id": [1]}, "job 0 has id [1], expected a name"),
        ({"argv": "echo hi"}, 'job t1: argv is "echo hi", expected a non-empty list of strings'),
        ({"argv": []}, "job t1: argv is [], expected a non-empty list of strings"),
        ({"argv": ["echo", {"a": 1}]}, "job t1: argv is"),
        ({"outputs": [{"path": "/etc/passwd", "kind": "exists"}]}, "expected a path inside the job's folder"),
        ({"outputs": [{"path": "{out}/../../x.json"}]}, "expected a path inside the job's folder"),
        ({"outputs": ["{out}/t.json"]}, "expected a path inside the job's folder"),
        ({"outputs": "x"}, 'job t1: outputs is "x", expected a list of objects'),
        ({"outputs": [{"path": "{out}/t", "kind": "weird"}]}, 'output kind "weird", expected one of exists'),
        ({"timeout": "abc"}, 'job t1: timeout "abc", expected seconds >= 1'),
        ({"timeout": -5}, "job t1: timeout -5, expected seconds >= 1"),
        ({"timeout": 1e-9}, "job t1: timeout 1e-09, expected seconds >= 1"),
        ({"range": [5, 5]}, "job t1: range [5, 5], expected [start, stop] with 0 <= start < stop"),
        ({"units": 1.5}, "job t1: units 1.5, expected an integer >= 0"),
        ({"env": ["A=1"]}, 'job t1: env ["A=1"], expected an object'),
    ],
)
def test_a_bad_job_is_refused_naming_the_file_job_and_field(
    tmp_path: Path, change: dict, message: str
) -> None:
    with pytest.raises(PlanError) as err:
        jobs(tmp_path, dict(OK, **change))
    assert str(err.value).startswith(f"jobs file {tmp_path / 'jobs.json'}: job ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_script_args_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r'job a: args is "--x 1", expected a list of strings'):
        jobs(tmp_path, {"id": "a", "script": "t.py", "args": "--x 1", "outputs": OK["outputs"]})
