"""The prng.cluster.defaults lookup: role defaults read the one definition through it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "collections"))

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible_collections.prng.cluster.plugins.lookup.defaults import LookupModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import defaults  # noqa: E402


def test_the_lookup_answers_from_the_module_and_refuses_unknown_names() -> None:
    lookup = LookupModule()
    assert lookup.run(["prng_home", "prng_ramdisk_root"]) == [defaults.PRNG_HOME, defaults.PRNG_RAMDISK_ROOT]
    with pytest.raises(AnsibleLookupError, match="unknown name 'prng_hom'"):
        lookup.run(["prng_hom"])
