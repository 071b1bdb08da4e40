"""The changelog is antsibull-changelog's: fragments in changelogs/fragments/ (one per
change) pass its lint, changelog.yaml is valid, and CHANGELOG.md is what it generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = Path(sys.executable).parent / "antsibull-changelog"
pytestmark = pytest.mark.quality


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_fragments_and_changelog_yaml_pass_the_lint() -> None:
    for args in (("lint",), ("lint-changelog-yaml", "changelogs/changelog.yaml")):
        proc = _run(*args)
        assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_a_bad_fragment_fails_the_lint(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "changelogs", tmp_path / "changelogs")
    shutil.copy(ROOT / "galaxy.yml", tmp_path / "galaxy.yml")
    (tmp_path / "changelogs" / "fragments" / "bad.yml").write_text("new_things:\n  - not a section\n")
    proc = _run("lint", cwd=tmp_path)
    assert proc.returncode != 0 and "new_things" in proc.stdout + proc.stderr


def test_changelog_md_is_the_generated_one(tmp_path: Path) -> None:
    out = tmp_path / "CHANGELOG.md"
    proc = _run("generate", "--output", str(out), "--output-format", "md")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text() == (ROOT / "CHANGELOG.md").read_text(), "run: antsibull-changelog generate"
