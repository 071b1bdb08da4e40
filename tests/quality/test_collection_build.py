"""`ansible-galaxy collection build` makes a tarball of the collection's content only: what
an operator installs, without the development tree (tests, venv, run folders, caches)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.quality

SHIPPED = (
    "LICENSE",
    "README.md",
    "MANIFEST.json",
    "meta/runtime.yml",
    "plugins/modules/fanout.py",
    "plugins/doc_fragments/read_only.py",
    "plugins/plugin_utils/fanout/contract.py",
    "roles/cluster_host/meta/argument_specs.yml",
    "playbooks/step3.yml",
    "roles/cluster_host/tasks/preflight.yml",
    "workers/pyproject.toml",
    "workers/prng_workers/contract.py",
    "data/memory_model.json",
    "demo/survivors.json",
    "scripts/merge-survivors",
)
NEVER = (
    "tests/",
    "runs/",
    ".venv/",
    "collections/",
    "molecule/",
    "bench/",
    ".ruff_cache/",
    ".pytest_cache/",
    "workers/build/",
    "__pycache__",
    ".pyc",
    ".egg-info",
)


def test_collection_tarball_holds_the_collection_only(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = tmp_path.glob("prng-cluster-*.tar.gz")
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    for path in SHIPPED:
        assert path in names, f"{path} missing from the tarball"
    leaked = [n for n in names if any(bad in n + "/" for bad in NEVER)]
    assert not leaked, f"development files in the tarball: {leaked[:20]}"
