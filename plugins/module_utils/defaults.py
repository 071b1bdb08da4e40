"""The one definition of the collection's default places, for the controller (action
plugins, plugin_utils, the `prng.cluster.defaults` lookup that role defaults read) and the
hosts (modules). The cluster_host role's defaults and argument spec carry the same values
for the inventory (tests/unit/plugins/module_utils/test_defaults.py keeps them equal and finds any copy)."""

from __future__ import annotations

# Per-host working folder (job folders, state, the workers' venv); ~ is the host's home.
PRNG_HOME = "~/prng-cluster"
# Root of the ramdisk copies of the steps' inputs.
PRNG_RAMDISK_ROOT = "/dev/shm/prng"
# Controller caches (source hashes, NPZ conversions).
PRNG_CACHE = "~/.cache/prng-cluster"


def home_path(*parts: str, home: str = PRNG_HOME) -> str:
    """A path under the host's working folder, e.g. home_path("venv", "bin")."""
    return "/".join((home.rstrip("/"),) + parts)


# Derived defaults, named as the options that take them.
PRNG_WORKER_VENV = home_path("venv")
PRNG_WORKER_BIN = home_path("venv", "bin")
PRNG_WORKER_ENV_FILE = home_path("worker.env")
PRNG_DISPATCH_ROOT = home_path("dispatch")
PRNG_STATE_DIR = home_path("run")
PRNG_STAGE_DIR = home_path("dist")

# What the `prng.cluster.defaults` lookup answers, by variable name.
DEFAULTS = {
    "prng_home": PRNG_HOME,
    "prng_ramdisk_root": PRNG_RAMDISK_ROOT,
    "prng_cache": PRNG_CACHE,
    "worker_venv": PRNG_WORKER_VENV,
    "worker_bin": PRNG_WORKER_BIN,
    "worker_env_file": PRNG_WORKER_ENV_FILE,
    "dispatch_root": PRNG_DISPATCH_ROOT,
    "state_dir": PRNG_STATE_DIR,
    "stage_dir": PRNG_STAGE_DIR,
}
