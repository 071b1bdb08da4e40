"""`prng-workers`: version and environment report of the installed worker package."""

from __future__ import annotations

import argparse
import json
import sys

from prng_workers import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prng-workers", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", nargs="?", default="version", choices=["version"],
                        help="'version' prints a JSON line with the package version")
    parser.parse_args(argv)
    print(json.dumps({"version": __version__, "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
