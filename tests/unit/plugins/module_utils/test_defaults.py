"""One definition of each default place (issue 11): plugins/module_utils/defaults.py for the
Python side (and, through the prng.cluster.defaults lookup, the roles' defaults), the
cluster_host role's argument spec and defaults for the inventory (the fan-out's contract
reads the spec); no other copy of the values in code, roles or playbooks."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.module_utils import defaults  # noqa: E402

LITERALS = (defaults.PRNG_HOME, defaults.PRNG_RAMDISK_ROOT)
# Where the values may be written out: their definitions, documentation and examples, tests.
ALLOWED_DIRS = ("docs/", "tests/", "molecule/", "inventory/", "changelogs/", "bench/", "demo/")
ALLOWED_FILES = {
    "plugins/module_utils/defaults.py",
    "roles/cluster_host/meta/argument_specs.yml",  # the contract reads its defaults
    "roles/cluster_host/defaults/main.yml",  # equal to the spec (test_contract_params)
    "README.md",
    "CHANGELOG.md",
}
# Copies left in files other work owned when this test was written; each one the count
# found, so a new copy there still fails. Remove an entry once its copy is gone.
KNOWN_LEFT: dict[str, int] = {}  # files allowed a copy (none left)
SKIP = {".git", ".venv", "collections", "runs", "__pycache__", ".ruff_cache", "build", ".pytest_cache"}
TEXT = (".py", ".yml", ".yaml", ".j2", ".sh", ".cfg", ".toml", ".ini", ".json")


def _doc_lines(source: str) -> set[int]:
    """Lines of a module's DOCUMENTATION / EXAMPLES / RETURN strings (documentation)."""
    lines: set[int] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("DOCUMENTATION", "EXAMPLES", "RETURN") for t in node.targets
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def copies() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(REPO).as_posix()
            if not name.endswith(TEXT) or rel in ALLOWED_FILES or rel.startswith(ALLOWED_DIRS):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if not any(lit in text for lit in LITERALS):
                continue
            skip = _doc_lines(text) if name.endswith(".py") else set()
            hits = [
                f"{rel}:{no}: {line.strip()}"
                for no, line in enumerate(text.splitlines(), 1)
                if no not in skip and any(lit in line for lit in LITERALS)
            ]
            if hits:
                found[rel] = hits
    return found


def test_default_places_are_written_once() -> None:
    found = copies()
    new = {rel: hits for rel, hits in found.items() if len(hits) > KNOWN_LEFT.get(rel, 0)}
    assert not new, "copies of a default outside plugins/module_utils/defaults.py:\n" + "\n".join(
        h for hits in new.values() for h in hits
    )


def test_the_inventory_spec_and_the_role_defaults_agree_with_the_module() -> None:
    spec = yaml.safe_load((REPO / "roles/cluster_host/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert options["prng_home"]["default"] == defaults.PRNG_HOME
    assert options["prng_ramdisk_root"]["default"] == defaults.PRNG_RAMDISK_ROOT
    role_defaults = yaml.safe_load((REPO / "roles/cluster_host/defaults/main.yml").read_text())
    assert role_defaults["prng_home"] == defaults.PRNG_HOME
    assert role_defaults["prng_ramdisk_root"] == defaults.PRNG_RAMDISK_ROOT
    assert role_defaults["ramdisk_root"] == "{{ prng_ramdisk_root }}"
