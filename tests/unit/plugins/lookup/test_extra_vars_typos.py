"""The prng.cluster.extra_vars_typos lookup: a misspelt -e name, which Ansible would ignore
(the run going on with the default), is named with the variable it was probably meant to be;
every name the collection reads, and names far from all of them, pass."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "collections"))

from ansible_collections.prng.cluster.plugins.lookup.extra_vars_typos import typos, vocabulary  # noqa: E402

KNOWN = vocabulary()


def test_every_documented_run_variable_and_host_variable_is_known() -> None:
    documented = [
        "history", "family", "seed_start", "seed_stop", "seed_end", "window", "threshold", "mod",
        "run_dir", "fresh_run", "fanout_settings", "fanout_group", "shard", "memory_model",
        "step1_threshold", "step3_survivors", "step3_chunk_size", "step2_jobs", "jobs_file",
        "ramdisk_clear_step", "ramdisk_root", "gpu_count", "max_concurrent_jobs", "gpu_exclude",
        "fanout_input_dir",  # read by the fan-out's Python only
    ]  # fmt: skip
    assert typos(documented, KNOWN) == []


def test_a_misspelt_name_is_named_with_the_one_meant_and_other_names_pass() -> None:
    found = typos(["treshold", "ramdisk_clear_stp", "gpu_cout", "foo", "ansible_port", "m"], KNOWN)
    assert found == [
        "-e gpu_cout: this collection reads no variable of that name, did you mean gpu_count? "
        "(nothing was started)",
        "-e ramdisk_clear_stp: this collection reads no variable of that name, did you mean "
        "ramdisk_clear_step? (nothing was started)",
        "-e treshold: this collection reads no variable of that name, did you mean threshold? "
        "(nothing was started)",
    ]
