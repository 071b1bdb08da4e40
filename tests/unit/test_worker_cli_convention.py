"""One convention for every worker command (workers/pyproject.toml [project.scripts]): a
usage error is bad input like any other, one `error:` line on stderr and exit 2, never
argparse's usage dump or a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(tomllib.loads((REPO / "workers" / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_error_is_one_line_and_exit_2(script: str) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / script), "--no-such-option"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
