"""A real multi-host SSH test cluster on one machine, built from network namespaces.

Each test host is a network namespace with its own veth link and /24, a private mount and
UTS namespace (own hostname, own sized ``/dev/shm`` tmpfs) held open by a small holder
process, and its own sshd. Ansible reaches the hosts over real SSH. Everything else (the
filesystem outside /dev/shm, the users) is shared with this machine, so per-host folders
(``prng_home``) point at distinct folders under the cluster's temp dir.

Several clusters may run at once (parallel test sessions, an operator's cluster): host
slots (netns name, veth name, subnet 10.231.X.0/24) are claimed under a file lock in
``STATE_DIR``; claims of owners that died are reclaimed (their leftovers torn down).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("PRNG_TESTCLUSTER_STATE", "/run/prng-testcluster"))
SUBNET_PREFIX = "10.231"
SLOTS = range(1, 255)  # X in 10.231.X.0/24
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "ssh", "ssh-keygen", "fallocate")


class ClusterError(RuntimeError):
    """The test cluster could not be built or driven."""


def missing_requirements() -> str | None:
    """Why a cluster cannot run here (None when it can); used by fixtures to skip."""
    if os.geteuid() != 0:
        return "the test cluster needs root (network namespaces, mounts)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} missing (apt-get install openssh-server)"
    if not os.access(SFTP_SERVER, os.X_OK):
        return f"{SFTP_SERVER} missing (apt-get install openssh-server)"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install iproute2 util-linux openssh-client)"
    return None


@dataclass
class HostSpec:
    """What one test host looks like; ``vars`` are extra inventory host vars."""

    name: str
    shm_mb: int = 64
    gpu_count: int = 0
    max_concurrent_jobs: int = 1
    gpu_type: str = "cpu"
    groups: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)
    # Leave sshd's session limits at OpenSSH's defaults (MaxSessions 10, MaxStartups
    # 10:30:100), as on a real rig; the others get raised limits, which would hide a
    # transport that opens too many sessions or connections per host.
    stock_sshd: bool = False


@dataclass
class Host:
    """A running test host."""

    spec: HostSpec
    slot: int
    home: Path
    holder_pid: int = 0
    sshd_pid: int = 0
    # (pid, kernel start time) of our processes: a pid is only ever killed while it still
    # names the process we started (pids are reused).
    started: dict[int, str] = field(default_factory=dict)

    def own_pids(self) -> list[list[Any]]:
        return [[p, self.started.get(p)] for p in (self.holder_pid, self.sshd_pid) if p]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def netns(self) -> str:
        return f"prngtc{self.slot}"

    @property
    def veth(self) -> str:
        return f"prngtc{self.slot}h"

    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.slot}.2"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.slot}.1"

    @property
    def shm(self) -> Path:
        """This host's private /dev/shm, seen from the controller through the holder."""
        return Path(f"/proc/{self.holder_pid}/root/dev/shm")


# --------------------------------------------------------------------------- helpers


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _start_time(pid: int) -> str | None:
    """The kernel start time of a process: with the pid it names one process, not a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _start_time(pid) == start


def _kill(pids: Sequence[int], grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    live = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            live.append(pid)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [p for p in live if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.02)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _teardown_slot(netns: str, veth: str, pids: Sequence[Sequence[Any]] = ()) -> None:
    """Remove one host's processes, link and namespace; safe to repeat. ``pids`` are
    (pid, start time) pairs, killed only if still the same process."""
    pairs = [item for item in pids if isinstance(item, (list, tuple)) and len(item) == 2]
    ours = [int(p) for p, start in pairs if _alive(int(p), start)]
    _kill([*ours, *_netns_pids(netns)])
    for _ in range(3):  # processes that sshd forked while we killed
        rest = _netns_pids(netns)
        if not rest:
            break
        _kill(rest, grace=0.5)
    _run(["ip", "link", "del", veth], check=False)
    _run(["ip", "netns", "del", netns], check=False)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "claims").mkdir(exist_ok=True)
    with open(STATE_DIR / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _claims() -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for path in (STATE_DIR / "claims").glob("*.json"):
        try:
            out[int(path.stem)] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
    return out


def _claim_is_stale(claim: Mapping[str, Any]) -> bool:
    owner = claim.get("owner_pid")
    if owner is None:  # a detached (operator) cluster: only `testcluster down` ends it
        return False
    return not _alive(int(owner), claim.get("owner_start"))


def reap_stale() -> list[str]:
    """Tear down host slots whose owning process died without cleaning up."""
    reaped = []
    with _locked():
        for slot, claim in _claims().items():
            if _claim_is_stale(claim):
                _teardown_slot(claim["netns"], claim["veth"], claim.get("pids", []))
                tmp = claim.get("tmpdir")
                if tmp and Path(tmp).name.startswith("prngtc-"):
                    shutil.rmtree(tmp, ignore_errors=True)
                (STATE_DIR / "claims" / f"{slot}.json").unlink(missing_ok=True)
                reaped.append(claim["netns"])
    return reaped


def _used_subnets() -> set[int]:
    used = set()
    for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        for word in line.split():
            if word.startswith(f"{SUBNET_PREFIX}."):
                with contextlib.suppress(ValueError, IndexError):
                    used.add(int(word.split(".")[2]))
    return used


# --------------------------------------------------------------------------- cluster

_LIVE: set[Cluster] = set()
_LIVE_LOCK = threading.Lock()
_SIGNALS_INSTALLED = False


def _teardown_live() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    _teardown_live()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    global _SIGNALS_INSTALLED
    if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_teardown_live)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_sigterm)
    _SIGNALS_INSTALLED = True


class Cluster:
    """N test hosts with their own sshd, hostname and /dev/shm, and an inventory for them.

    Use as a context manager (``with Cluster(3) as c: ...``); ``stop()`` always runs, also
    when the body raises, and on SIGTERM/SIGHUP/interpreter exit. ``detach=True`` (the
    operator CLI) leaves the cluster running after this process ends; ``Cluster.load`` and
    ``stop()`` end it later.
    """

    def __init__(
        self,
        hosts: int | Sequence[HostSpec] = 3,
        *,
        shm_mb: int = 64,
        name_prefix: str = "node",
        groups: Sequence[str] = ("testcluster", "gpu_nodes"),
        worker_venv: str | None = None,
        python: str | None = None,
        group_vars: Mapping[str, Any] | None = None,
        detach: bool = False,
        label: str = "",
    ) -> None:
        if isinstance(hosts, int):
            hosts = [HostSpec(f"{name_prefix}{i + 1}", shm_mb=shm_mb) for i in range(hosts)]
        names = [h.name for h in hosts]
        if len(set(names)) != len(names) or not names:
            raise ClusterError(f"host names must be unique and non-empty: {names}")
        self.specs = list(hosts)
        self.groups = list(groups)
        self.worker_venv = worker_venv or str(REPO_ROOT / ".venv")
        self.python = python or sys.executable
        self.group_vars = dict(group_vars or {})
        self.detach = detach
        self.label = label
        self.hosts: dict[str, Host] = {}
        self.tmpdir: Path | None = None
        self.inventory: Path | None = None
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        problem = missing_requirements()
        if problem:
            raise ClusterError(problem)
        if self.started:
            return self
        if not self.detach:
            _install_signal_handlers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.started = True
        try:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="prngtc-"))
            self._keys()
            slots = self._claim_slots(len(self.specs))
            for spec, slot in zip(self.specs, slots, strict=True):
                home = self.tmpdir / "hosts" / spec.name
                (home / "home").mkdir(parents=True)
                self.hosts[spec.name] = Host(spec=spec, slot=slot, home=home)
            for host in self.hosts.values():
                self._start_host(host)
            self._wait_ready()
            self.inventory = self.write_inventory()
            if self.detach:
                self._save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear down everything this cluster made; safe to call twice."""
        if not self.started:
            return
        self.started = False
        if self.tmpdir is not None:
            # Close SSH ControlMaster connections first so no client outlives the hosts.
            cp = self.tmpdir / "cp"
            masters = [
                subprocess.Popen(
                    ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for sock in (cp.glob("*") if cp.is_dir() else [])
            ]
            for proc in masters:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=3)
        with _locked():
            for host in self.hosts.values():
                _teardown_slot(host.netns, host.veth, host.own_pids())
                (STATE_DIR / "claims" / f"{host.slot}.json").unlink(missing_ok=True)
            for slot in getattr(self, "_unassigned", []):
                (STATE_DIR / "claims" / f"{slot}.json").unlink(missing_ok=True)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            (STATE_DIR / "clusters" / f"{self.tmpdir.name}.json").unlink(missing_ok=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # ------------------------------------------------------------------ building

    def _keys(self) -> None:
        assert self.tmpdir is not None
        for key in ("id_ed25519", "ssh_host_ed25519_key"):
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "prng-testcluster",
                    "-f",
                    str(self.tmpdir / key),
                ]
            )
        shutil.copy(self.tmpdir / "id_ed25519.pub", self.tmpdir / "authorized_keys")
        (self.tmpdir / "cp").mkdir()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _claim_slots(self, count: int) -> list[int]:
        reap_stale()
        with _locked():
            taken = set(_claims()) | _used_subnets()
            existing = set(_run(["ip", "netns", "list"]).stdout.split())
            free = [s for s in SLOTS if s not in taken and f"prngtc{s}" not in existing]
            if len(free) < count:
                raise ClusterError(f"only {len(free)} free test-host slots, need {count}")
            chosen = free[:count]
            owner = None if self.detach else os.getpid()
            for slot in chosen:
                claim = {
                    "owner_pid": owner,
                    "owner_start": _start_time(owner) if owner else None,
                    "netns": f"prngtc{slot}",
                    "veth": f"prngtc{slot}h",
                    "tmpdir": str(self.tmpdir),
                    "pids": [],
                }
                (STATE_DIR / "claims" / f"{slot}.json").write_text(json.dumps(claim))
            self._unassigned = chosen
        return chosen

    def _record_pids(self, host: Host) -> None:
        path = STATE_DIR / "claims" / f"{host.slot}.json"
        with _locked():
            claim = json.loads(path.read_text())
            claim["pids"] = host.own_pids()
            path.write_text(json.dumps(claim))

    def _start_host(self, host: Host) -> None:
        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        _run(["ip", "addr", "add", f"{host.gateway}/24", "dev", host.veth])
        _run(["ip", "link", "set", host.veth, "up"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        # The holder keeps the host's mount/UTS namespaces (its /dev/shm) alive, so sshd
        # can be killed and restarted without losing the ramdisk, like a real host.
        log = open(host.home / "holder.log", "w")
        script = (
            'hostname "$1" && mount -t tmpfs -o "size=$2m,mode=1777" tmpfs /dev/shm && exec sleep infinity'
        )
        holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                "unshare",
                "-m",
                "-u",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "holder",
                host.name,
                str(host.spec.shm_mb),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        host.holder_pid = holder.pid
        host.started[holder.pid] = _start_time(holder.pid) or ""
        deadline = time.monotonic() + 10
        while True:
            if holder.poll() is not None:
                raise ClusterError(
                    f"{host.name}: holder failed: {(host.home / 'holder.log').read_text().strip()}"
                )
            try:
                if Path(f"/proc/{holder.pid}/comm").read_text().strip() == "sleep":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"{host.name}: holder did not come up")
            time.sleep(0.005)
        self._write_sshd_config(host)
        self.start_sshd(host.name)

    def _write_sshd_config(self, host: Host) -> None:
        assert self.tmpdir is not None
        limits = [] if host.spec.stock_sshd else ["MaxStartups 200:30:400", "MaxSessions 200"]
        (host.home / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}",
                    "Port 22",
                    f"HostKey {self.tmpdir / 'ssh_host_ed25519_key'}",
                    f"PidFile {host.home / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.tmpdir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # keys live under /tmp
                    "UseDNS no",
                    *limits,
                    "LogLevel ERROR",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "",
                ]
            )
        )

    def _wait_ready(self, timeout: float = 15) -> None:
        pending = dict(self.hosts)
        deadline = time.monotonic() + timeout
        while pending:
            for name, host in list(pending.items()):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((host.address, 22), timeout=0.5) as sock,
                ):
                    sock.settimeout(2)
                    if sock.recv(4).startswith(b"SSH-"):
                        del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"sshd not answering on {sorted(pending)}")
            time.sleep(0.01)

    # ------------------------------------------------------------------ inventory

    def host_vars(self, host: Host) -> dict[str, Any]:
        assert self.tmpdir is not None
        spec = host.spec
        hv: dict[str, Any] = {
            "ansible_host": host.address,
            "gpu_type": spec.gpu_type,
            "gpu_count": spec.gpu_count,
            "max_concurrent_jobs": spec.max_concurrent_jobs,
            "testcluster_shm_mb": spec.shm_mb,
            "prng_home": str(host.home / "home"),
            "worker_venv": self.worker_venv,
            "ansible_remote_tmp": str(host.home / "ansible-tmp"),
        }
        if spec.gpu_type != "cpu":
            # Test hosts have no GPU and no vendor tool: the health preflight would leave
            # them out. Health is tested with captured tool output (tests/fixtures/gpu_tools).
            hv["gpu_health_policy"] = "ignore"
        hv.update(spec.vars)
        return hv

    def write_inventory(self, path: Path | None = None) -> Path:
        assert self.tmpdir is not None
        path = path or self.tmpdir / "inventory.yml"
        ssh_args = (
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
            f"-o ControlPath={self.tmpdir}/cp/%C -o ConnectTimeout=5"
        )
        all_vars = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.tmpdir / "id_ed25519"),
            "ansible_ssh_common_args": ssh_args,
            "ansible_python_interpreter": self.python,
            **self.group_vars,
        }
        children: dict[str, Any] = {}
        for group in self.groups:
            children[group] = {"hosts": {name: None for name in self.hosts}}
        for name, host in self.hosts.items():
            for group in host.spec.groups:
                children.setdefault(group, {"hosts": {}})["hosts"][name] = None
        # Host vars once, in the first group; other groups only list membership.
        first = self.groups[0] if self.groups else next(iter(children), "testcluster")
        children.setdefault(first, {"hosts": {}})
        for name, host in self.hosts.items():
            children[first]["hosts"][name] = self.host_vars(host)
        data = {"all": {"vars": all_vars, "children": children}}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    # ------------------------------------------------------------------ running things

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for ansible commands against this cluster (the repo's ansible.cfg)."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(self.python).parent}:{env.get('PATH', '')}"
        env["ANSIBLE_CONFIG"] = str(REPO_ROOT / "ansible.cfg")
        env["ANSIBLE_FORCE_COLOR"] = "0"
        env["ANSIBLE_NOCOLOR"] = "1"
        env.update(extra)
        return env

    def ansible(
        self, pattern: str, *args: str, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ansible <pattern> -i <inventory> <args>`` from the repo root."""
        argv = [str(Path(self.python).parent / "ansible"), pattern, "-i", str(self.inventory), *args]
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )

    def playbook(
        self,
        playbook: str | Path,
        *args: str,
        extra_vars: Mapping[str, Any] | None = None,
        timeout: float = 600,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ansible-playbook -i <inventory> <playbook>`` from the repo root."""
        argv = [str(Path(self.python).parent / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        if extra_vars:
            argv += ["-e", json.dumps(dict(extra_vars))]
        argv += list(args)
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )

    def playbook_popen(
        self,
        playbook: str | Path,
        log: Path,
        extra_vars: Mapping[str, Any] | None = None,
        cwd: Path = REPO_ROOT,
        **env: str,
    ) -> subprocess.Popen[str]:
        """Start ``ansible-playbook -i <inventory> <playbook>`` in its own session (so that a
        test can kill the whole controller with ``os.killpg``); its output goes to ``log``,
        never to a pipe that nobody reads while the run goes on."""
        argv = [str(Path(self.python).parent / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        if extra_vars:
            argv += ["-e", json.dumps(dict(extra_vars))]
        with open(log, "w") as out:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a host's namespaces (mount, UTS, network), as root."""
        h = self.hosts[host]
        full = ["nsenter", "-t", str(h.holder_pid), "-m", "-u", "-n", "--", *argv]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{host}: {' '.join(argv)} failed (rc {proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    # ------------------------------------------------------------------ faults

    def start_sshd(self, host: str) -> int:
        """(Re)start a host's sshd inside its namespaces; returns its pid."""
        h = self.hosts[host]
        log = open(h.home / "sshd.log", "a")
        proc = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(h.holder_pid),
                "-m",
                "-u",
                "-n",
                "--",
                SSHD,
                "-D",
                "-e",
                "-f",
                str(h.home / "sshd_config"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        h.sshd_pid = proc.pid
        h.started[proc.pid] = _start_time(proc.pid) or ""
        self._record_pids(h)
        return proc.pid

    def kill_sshd(self, host: str, sessions: bool = True) -> None:
        """Stop a host's sshd. ``sessions=True`` also kills every process running on the
        host (open SSH sessions, workers): the host is gone, but its /dev/shm survives."""
        h = self.hosts[host]
        victims = [h.sshd_pid] if h.sshd_pid and _alive(h.sshd_pid, h.started.get(h.sshd_pid)) else []
        if sessions:
            victims += [p for p in _netns_pids(h.netns) if p != h.holder_pid]
        _kill(victims, grace=0.5)
        h.sshd_pid = 0

    def restart_sshd(self, host: str) -> None:
        """Bring a killed host's sshd back and wait until it answers."""
        self.start_sshd(host)
        self._wait_ready()

    def link_down(self, host: str) -> None:
        """Cut the host's link: packets are dropped, connections hang (no reset)."""
        _run(["ip", "link", "set", self.hosts[host].veth, "down"])

    def link_up(self, host: str) -> None:
        _run(["ip", "link", "set", self.hosts[host].veth, "up"])

    def throttle(self, host: str, mbit: float) -> None:
        """Limit controller-to-host bandwidth (tc tbf on the host's link), e.g. to make a
        transfer last long enough to interrupt it."""
        _run(
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                self.hosts[host].veth,
                "root",
                "tbf",
                "rate",
                f"{mbit}mbit",
                "burst",
                "256kb",
                "latency",
                "100ms",
            ]
        )

    def unthrottle(self, host: str) -> None:
        _run(["tc", "qdisc", "del", "dev", self.hosts[host].veth, "root"], check=False)

    def fill_shm(self, host: str, mb: int, name: str = ".testcluster-fill") -> str:
        """Occupy ``mb`` MiB of the host's /dev/shm with one file; returns its path on the host."""
        path = f"/dev/shm/{name}"
        self.exec(host, ["fallocate", "-l", f"{mb}M", path], check=True)
        return path

    def free_shm(self, host: str, name: str = ".testcluster-fill") -> None:
        self.exec(host, ["rm", "-f", f"/dev/shm/{name}"], check=True)

    def shm_usage(self, host: str) -> tuple[int, int]:
        """(used, size) bytes of the host's /dev/shm, read from the real mount."""
        st = os.statvfs(self.hosts[host].shm)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize

    # ------------------------------------------------------------------ operator state

    def _save_state(self) -> None:
        assert self.tmpdir is not None
        (STATE_DIR / "clusters").mkdir(parents=True, exist_ok=True)
        state = {
            "label": self.label,
            "tmpdir": str(self.tmpdir),
            "inventory": str(self.inventory),
            "python": self.python,
            "worker_venv": self.worker_venv,
            "groups": self.groups,
            "hosts": [
                {
                    "spec": vars(h.spec) | {"groups": list(h.spec.groups)},
                    "slot": h.slot,
                    "home": str(h.home),
                    "holder_pid": h.holder_pid,
                    "sshd_pid": h.sshd_pid,
                    "started": {str(k): v for k, v in h.started.items()},
                }
                for h in self.hosts.values()
            ],
        }
        (STATE_DIR / "clusters" / f"{self.tmpdir.name}.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, state_file: Path) -> Cluster:
        """Re-attach to a detached cluster (operator CLI)."""
        state = json.loads(state_file.read_text())
        specs = [HostSpec(**(h["spec"] | {"groups": tuple(h["spec"]["groups"])})) for h in state["hosts"]]
        c = cls(
            specs,
            groups=state["groups"],
            worker_venv=state["worker_venv"],
            python=state["python"],
            detach=True,
            label=state.get("label", ""),
        )
        c.tmpdir = Path(state["tmpdir"])
        c.inventory = Path(state["inventory"])
        for h, spec in zip(state["hosts"], specs, strict=True):
            c.hosts[spec.name] = Host(
                spec=spec,
                slot=h["slot"],
                home=Path(h["home"]),
                holder_pid=h["holder_pid"],
                sshd_pid=h["sshd_pid"],
                started={int(k): v for k, v in h.get("started", {}).items()},
            )
        c.started = True
        return c

    @staticmethod
    def detached() -> list[Path]:
        d = STATE_DIR / "clusters"
        return sorted(d.glob("*.json")) if d.is_dir() else []
