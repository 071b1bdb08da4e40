"""The fan-out through real ansible-runner runs on local-connection hosts (no root, no
network namespaces needed): exactly once, progress file, manifest, run_jobs guarantees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("fanout_job.py")
BIN = Path(sys.executable).parent


def test_run_jobs_on_two_local_hosts_every_job_once_with_progress_and_manifest(tmp_path: Path) -> None:
    hosts = {}
    for name, gpus, limit in (("l1", 2, 2), ("l2", 3, 1)):  # limit above and below the GPU count
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                       "gpu_type": "cuda", "gpu_count": gpus, "max_concurrent_jobs": limit,
                       "prng_home": str(tmp_path / name), "worker_venv": str(BIN.parent)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": hosts}}}}))
    jobs = [{"id": f"j{i}", "range": [i * 5, i * 5 + 5],
             "argv": ["{worker_bin}/python", str(JOB), "--out", "{out}/r.json", "--start", "{start}",
                      "--stop", "{stop}", "--sleep", "0.02"],
             "outputs": [{"path": "{out}/r.json", "kind": "json_list", "records_from_range": True}]}
            for i in range(8)]
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    run_dir = tmp_path / "run"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    extra = {"jobs_file": str(tmp_path / "jobs.json"), "run_dir": str(run_dir),
             "fanout_settings": {"progress_interval": 1}}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/run_jobs.yml",
                           "-e", json.dumps(extra)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "fan-out" in proc.stdout and "units/s" in proc.stdout  # progress in the playbook output
    m = json.loads((run_dir / "fanout_manifest.json").read_text())
    assert m["complete"] and m["jobs"]["completed"] == 8
    assert {h: v["slots"] for h, v in m["hosts"].items()} == {"l1": 2, "l2": 1}
    assert m["inputs"]["jobs_file"]["sha256"] and m["timings"]["slots"] == 3
    seeds: Counter[int] = Counter()
    for out in m["outputs"]:
        seeds.update(r["seed"] for r in json.loads((run_dir / out["path"]).read_text()))
    assert sorted(seeds) == list(range(40)) and max(seeds.values()) == 1
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["jobs"]["done"] == 8 and set(progress["hosts"]) == {"l1", "l2"}
    # The hosts' dispatch folders are removed at the end.
    for name in hosts:
        assert not list((tmp_path / name / "dispatch").glob("*/*")), name
    # Running it again resumes a finished run: nothing is redone.
    again = subprocess.run(proc.args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "8 of 8 jobs already done" in again.stdout
    starts = Counter(json.loads(line)["job"] for line in (run_dir / "journal.jsonl").read_text().splitlines()
                     if json.loads(line)["ev"] == "start")
    assert set(starts.values()) == {1}
