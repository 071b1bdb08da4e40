"""The test-cluster harness itself: real SSH to network-namespace hosts, and a clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import Cluster, HostSpec
from tests.cluster.harness import REPO_ROOT, STATE_DIR, missing_requirements, reap_stale

pytestmark = pytest.mark.cluster


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_three_hosts_real_ssh_own_hostname_and_shm(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(
        [
            HostSpec("alpha", shm_mb=16),
            HostSpec("beta", shm_mb=32, gpu_count=2),
            HostSpec("gamma", shm_mb=48, max_concurrent_jobs=4),
        ]
    )
    ping = c.ansible("all", "-m", "ping", "-o")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sorted(line.split()[0] for line in ping.stdout.splitlines() if "SUCCESS" in line) == [
        "alpha",
        "beta",
        "gamma",
    ]

    # Each host answers with its own hostname and its own /dev/shm size, over SSH.
    res = c.ansible("all", "-m", "command", "-a", "sh -c 'hostname; stat -f -c %b:%S /dev/shm'", "-o")
    assert res.returncode == 0, res.stdout + res.stderr
    seen = {}
    for line in res.stdout.splitlines():
        name, _, rest = line.partition(" | ")
        body = rest.split("(stdout) ", 1)[1].split("\\n")
        blocks, bsize = body[1].split(":")
        seen[name] = (body[0], int(blocks) * int(bsize) // 2**20)
    assert seen == {"alpha": ("alpha", 16), "beta": ("beta", 32), "gamma": ("gamma", 48)}

    # The connection really went to the namespace address, not to localhost.
    addrs = {h.name: h.address for h in c.hosts.values()}
    assert len(set(addrs.values())) == 3
    inv = c.inventory.read_text() if c.inventory else ""
    for addr in addrs.values():
        assert addr in inv

    # Per-host vars and distinct per-host folders.
    hv = c.ansible("all", "-m", "debug", "-a", "msg={{ [gpu_count, max_concurrent_jobs, prng_home] }}", "-o")
    assert hv.returncode == 0
    homes = {h.name: str(h.home / "home") for h in c.hosts.values()}
    assert len(set(homes.values())) == 3
    for name, expect in (("alpha", [0, 1]), ("beta", [2, 1]), ("gamma", [0, 4])):
        line = next(x for x in hv.stdout.splitlines() if x.startswith(name))
        assert json.loads(line.split(" => ", 1)[1])["msg"] == [*expect, homes[name]]


def test_faults_and_shm_isolation(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, shm_mb=16)
    c.fill_shm("node1", 12)
    used1, size1 = c.shm_usage("node1")
    used2, _ = c.shm_usage("node2")
    assert size1 == 16 * 2**20 and used1 >= 12 * 2**20 and used2 == 0
    # The machine's own /dev/shm does not see the host's file.
    assert not Path("/dev/shm/.testcluster-fill").exists()
    c.free_shm("node1")
    assert c.shm_usage("node1")[0] == 0

    # A killed sshd: the host stops answering; restarted, it answers again, shm kept.
    c.exec("node2", ["sh", "-c", "echo kept > /dev/shm/marker"], check=True)
    c.kill_sshd("node2")
    res = c.ansible("node2", "-m", "ping", "-o", timeout=60)
    assert res.returncode != 0 and "UNREACHABLE" in res.stdout
    c.restart_sshd("node2")
    assert c.ansible("node2", "-m", "ping", "-o").returncode == 0
    assert c.exec("node2", ["cat", "/dev/shm/marker"]).stdout == "kept\n"

    # A cut link: unreachable, then back.
    c.link_down("node1")
    res = c.ansible(
        "node1", "-m", "ping", "-o", "-T", "3", timeout=60, ANSIBLE_SSH_ARGS="-o ControlMaster=no"
    )
    assert res.returncode != 0 and "UNREACHABLE" in res.stdout
    c.link_up("node1")
    assert c.ansible("node1", "-m", "ping", "-o").returncode == 0


def test_teardown_leaves_nothing_also_on_error() -> None:
    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    before_ns, before_links = _netns(), _links()
    cluster = Cluster(2)
    with pytest.raises(RuntimeError, match="boom"), cluster:
        assert cluster.ansible("all", "-m", "ping").returncode == 0
        names = {h.netns for h in cluster.hosts.values()}
        pids = [p for h in cluster.hosts.values() for p in (h.holder_pid, h.sshd_pid)]
        tmp = cluster.tmpdir
        assert names <= _netns()
        raise RuntimeError("boom")
    assert _netns() == before_ns
    assert _links() == before_links
    assert tmp is not None and not tmp.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    claims = {json.loads(p.read_text())["netns"] for p in (STATE_DIR / "claims").glob("*.json")}
    assert not names & claims


def test_concurrent_clusters_get_distinct_slots(make_cluster: Callable[..., Cluster]) -> None:
    a = make_cluster(2)
    b = make_cluster(2)
    slots_a = {h.slot for h in a.hosts.values()}
    slots_b = {h.slot for h in b.hosts.values()}
    assert not slots_a & slots_b
    assert a.ansible("all", "-m", "ping", "-o").returncode == 0
    assert b.ansible("all", "-m", "ping", "-o").returncode == 0


def test_sigterm_tears_down(tmp_path: Path) -> None:
    """A test process killed with SIGTERM still removes its hosts."""
    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from tests.cluster import Cluster\n"
        "c = Cluster(1).start()\n"
        "print(next(iter(c.hosts.values())).netns, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    netns = proc.stdout.readline().strip()
    assert netns in _netns()
    proc.terminate()
    proc.wait(timeout=30)
    assert netns not in _netns()


def test_operator_cli_up_status_down() -> None:
    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    cli = [str(REPO_ROOT / "scripts" / "testcluster")]
    up = subprocess.run(
        [*cli, "up", "2", "--shm-mb", "8", "--name", "clitest"], capture_output=True, text=True
    )
    try:
        assert up.returncode == 0, up.stderr
        inventory = Path(up.stdout.strip().splitlines()[-1].split()[-1])
        assert inventory.is_file()
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"))
        ping = subprocess.run(
            [str(Path(sys.executable).parent / "ansible"), "all", "-i", str(inventory), "-m", "ping", "-o"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        status = subprocess.run([*cli, "status"], capture_output=True, text=True)
        assert "clitest" in status.stdout
    finally:
        down = subprocess.run([*cli, "down", "clitest"], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    status = subprocess.run([*cli, "status"], capture_output=True, text=True)
    assert "clitest" not in status.stdout
    bad = subprocess.run([*cli, "down", "no-such-cluster"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ")


def test_sigkilled_owner_is_reaped(tmp_path: Path) -> None:
    """A test process killed with SIGKILL cannot clean up; the next start (or
    `testcluster down`) reaps its hosts, processes and temp dir."""
    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    script = tmp_path / "die.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from tests.cluster import Cluster\n"
        "c = Cluster(1).start()\n"
        "h = next(iter(c.hosts.values()))\n"
        "print(h.netns, h.holder_pid, h.sshd_pid, c.tmpdir, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    netns, holder, sshd, tmp = proc.stdout.readline().split()
    proc.kill()
    proc.wait(timeout=30)
    assert netns in _netns() and Path(f"/proc/{holder}").exists()  # left behind
    assert netns in reap_stale()
    assert netns not in _netns() and not Path(tmp).exists()
    for pid in (holder, sshd):  # gone, or a zombie waiting for init to reap it
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", stat.read_text()
