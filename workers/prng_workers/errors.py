"""Bad input and the exit-code convention every worker command shares.

0 = success (one JSON summary line on stdout), 2 = bad input (`error: <one line>` on
stderr, nothing written), 1 = unexpected failure (also one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class InputError(ValueError):
    """Bad input (file, parameter, range). Message is one line, meant for the operator."""


class CliParser(argparse.ArgumentParser):
    """The parser of every worker command: a usage error is bad input like any other, one
    `error:` line and exit 2 through `run_cli` (not argparse's usage dump). Parse inside the
    command given to `run_cli`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{self.prog}: {message} (see --help)")


def run_cli(command: Callable[[], dict[str, Any]]) -> int:
    """Run `command`, print its summary as one JSON line, map failures to exit codes."""
    try:
        summary = command()
    except InputError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "bad input"
        print(f"error: {first_line}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the operator, not a traceback
        print(f"error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
