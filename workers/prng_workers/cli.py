"""`prng-workers`: version and environment report of the installed worker package."""

from __future__ import annotations

import sys
from typing import Any

from prng_workers import __version__
from prng_workers.errors import CliParser, run_cli


def version(argv: list[str] | None) -> dict[str, Any]:
    parser = CliParser(prog="prng-workers", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", nargs="?", default="version", choices=["version"],
                        help="'version' prints a JSON line with the package version")
    parser.parse_args(argv)
    return {"version": __version__, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: version(argv))


if __name__ == "__main__":
    sys.exit(main())
