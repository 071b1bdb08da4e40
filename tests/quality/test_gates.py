"""Repository-wide quality gates, run as tests so the suite has one verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.quality


def _run(argv: list[str], timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


def test_ruff() -> None:
    _assert_ok(_run([str(BIN / "ruff"), "check", "."]))


def test_ansible_lint_production_profile() -> None:
    _assert_ok(_run([str(BIN / "ansible-lint"), "--profile", "production", "--offline"]))


def test_ansible_test_sanity() -> None:
    _assert_ok(_run([str(ROOT / "scripts" / "ansible-test.sh"), "sanity"], timeout=2400))


SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    _assert_ok(_run([str(BIN / "molecule"), "test", "-s", scenario]))
