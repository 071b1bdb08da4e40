"""memory_facts: the real memory limit from cgroup v2, then v1, then /proc/meminfo (i26).

Fixture trees under tests/fixtures/cgroup/ copy the files the kernel exposes; one test
also makes a real memory cgroup on this machine and reads it from inside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible.module_utils.testing import patch_module_args  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import memory  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import memory_facts as mod  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "cgroup"
G = 1024**3
M = 1024**2


def facts(tree: str, shm: str = "/dev/shm") -> dict:
    base = FIX / tree
    return memory.memory_facts(str(base / "sys/fs/cgroup"), str(base / "proc"), shm)


def run_module(args: dict) -> tuple[int, dict]:
    """Run the module's main() and return (exit code, the JSON it printed)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with patch_module_args(args), redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        mod.main()
    return int(exc.value.code or 0), json.loads(buf.getvalue())


def test_i26_cgroup_v2_container_limit_beats_host_ram() -> None:
    f = facts("v2_container")
    assert f["limit_source"] == "cgroup_v2"
    assert f["cgroup_version"] == 2
    assert f["limit_bytes"] == 4 * G
    assert f["host_total_bytes"] == 8074256 * 1024
    # used = memory.current - inactive_file (reclaimable cache)
    assert f["used_bytes"] == 1536 * M - 512 * M
    assert f["available_bytes"] == 4 * G - 1024 * M
    assert f["used_pct"] == 25.0


def test_i26_cgroup_v2_limit_on_a_parent_slice() -> None:
    f = facts("v2_nested")
    assert f["limit_source"] == "cgroup_v2"
    assert f["limit_bytes"] == 12 * G
    assert f["cgroup_limit_dir"].endswith("user.slice/user-1000.slice")
    assert f["used_bytes"] == 2 * G + 512 * M - 256 * M


def test_i26_cgroup_v1_container_free_lies() -> None:
    # seed 003: `free -h` said 282 GiB, the container was capped at 128 GB
    f = facts("v1_container")
    assert f["host_total_mb"] == 282 * 1024
    assert f["limit_source"] == "cgroup_v1"
    assert f["limit_bytes"] == 128_000_000_000
    assert f["used_bytes"] == 41875931136 - 644 * M
    assert f["available_bytes"] == 128_000_000_000 - f["used_bytes"]
    assert f["available_bytes"] < f["host_available_bytes"]


def test_cgroup_v1_unlimited_falls_back_to_meminfo() -> None:
    f = facts("v1_unlimited")
    assert f["cgroup_version"] == 1
    assert f["limit_source"] == "meminfo"
    assert f["limit_bytes"] == 8074256 * 1024
    assert f["available_bytes"] == 4980736 * 1024
    assert f["cgroup_limit_dir"] is None


def test_hybrid_host_ignores_empty_v2_tree_and_reads_v1() -> None:
    f = facts("hybrid_v1_limit")
    assert f["limit_source"] == "cgroup_v1"
    assert f["limit_bytes"] == 2 * G
    assert f["cgroup_limit_dir"].endswith("process_api/47243409")
    assert f["used_bytes"] == 600 * M


def test_no_cgroup_at_all_uses_meminfo() -> None:
    f = facts("no_cgroup")
    assert (f["limit_source"], f["cgroup_version"]) == ("meminfo", 0)
    assert f["used_bytes"] == (8074256 - 4915200) * 1024


def test_missing_meminfo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MemTotal"):
        memory.memory_facts(str(tmp_path), str(tmp_path), str(tmp_path))


def test_shm_usage_reads_the_real_mount(tmp_path: Path) -> None:
    shm = memory.shm_usage("/dev/shm")
    st = os.statvfs("/dev/shm")
    assert shm["present"] and shm["size_bytes"] == st.f_blocks * st.f_frsize
    missing = memory.shm_usage(str(tmp_path / "nope"))
    assert missing["present"] is False and "error" in missing


def test_workers_fit_margin() -> None:
    # rig-6600: ~4.8 GB available, 900 MiB workers, 20 % margin -> 4, not 12 (i10)
    assert memory.workers_fit(4800 * M, 900, 20) == 4
    assert memory.workers_fit(4800 * M, 900, 0) == 5
    assert memory.workers_fit(100 * M, 900, 20) == 0
    assert memory.workers_fit(4800 * M, 0, 20) == 0


def test_module_reports_workers_fit_on_fixture_tree() -> None:
    base = FIX / "v2_container"
    rc, out = run_module({"cgroup_root": str(base / "sys/fs/cgroup"), "proc_root": str(base / "proc"),
                          "worker_mb": 700, "margin_pct": 10})
    assert rc == 0 and out["changed"] is False
    assert out["limit_mb"] == 4096 and out["available_mb"] == 3072
    assert out["workers_fit"] == int(3072 * 0.9 // 700) == 3
    assert out["workers_fit_limit"] == int(4096 * 0.9 // 700) == 5
    assert out["ansible_facts"]["prng_memory"]["limit_source"] == "cgroup_v2"


def test_module_without_worker_mb_and_bad_input() -> None:
    base = FIX / "no_cgroup"
    rc, out = run_module({"cgroup_root": str(base / "sys/fs/cgroup"), "proc_root": str(base / "proc")})
    assert rc == 0 and out["workers_fit"] is None
    rc, out = run_module({"worker_mb": -5})
    assert rc == 1 and "worker_mb must be > 0" in out["msg"]
    rc, out = run_module({"margin_pct": 100})
    assert rc == 1 and "margin_pct" in out["msg"]


def _real_memory_cgroup() -> tuple[str, str] | None:
    """(directory to make the test cgroup in, limit file name) on this machine, if writable."""
    if os.geteuid() != 0:
        return None
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "memory" in v2.read_text().split():
        return "/sys/fs/cgroup", "memory.max"
    if Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        return "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
    return None


def test_i26_real_cgroup_limit_read_from_inside() -> None:
    """A process in a real 512 MiB memory cgroup sees 512 MiB, not the host's RAM."""
    found = _real_memory_cgroup()
    if found is None:
        pytest.skip("needs root and a writable memory cgroup (v2 or v1)")
    parent, limit_file = found
    cg = Path(parent) / f"prng-test-{uuid.uuid4().hex[:8]}"
    try:
        cg.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        (cg / limit_file).write_text(str(512 * M))
        top = str(Path(memory.__file__).parents[5])  # the folder holding ansible_collections
        code = (f"import json,sys; sys.path.insert(0, {top!r});"
                "from ansible_collections.prng.cluster.plugins.module_utils.memory import memory_facts;"
                "print(json.dumps(memory_facts()))")
        procs = str(cg / "cgroup.procs")

        def enter() -> None:  # runs in the child before exec: join the cgroup
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))

        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              preexec_fn=enter, timeout=60)
        assert proc.returncode == 0, proc.stderr
        f = json.loads(proc.stdout)
        assert f["limit_bytes"] == 512 * M
        assert f["limit_source"] in ("cgroup_v2", "cgroup_v1")
        assert f["host_total_bytes"] > 512 * M
        assert 0 < f["available_bytes"] <= 512 * M
    finally:
        cg.rmdir()
