"""Ramdisk preload / clear / status on a real 3-host SSH test cluster (network namespaces,
each host with its own small /dev/shm). Incidents i12, i13, i14, i25, i35."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import Cluster, HostSpec

pytestmark = pytest.mark.cluster

ROOT = "/dev/shm/prng"  # the default root; each test host has its own /dev/shm


def adhoc(c: Cluster, pattern: str, args: str, *extra: str) -> dict[str, tuple[str, dict]]:
    """Run the module ad hoc; {host: (status, result)} parsed from one-line output."""
    res = c.ansible(pattern, "-m", "prng.cluster.ramdisk", "-a", args, "-o", *extra)
    out: dict[str, tuple[str, dict]] = {}
    for line in res.stdout.splitlines():
        if " => " not in line:
            continue
        head, body = line.split(" => ", 1)
        host, status = (part.strip() for part in head.split(" | ")[:2])
        out[host] = (status, json.loads(body))
    assert out, res.stdout + res.stderr
    return out


def recap(res: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    out = {}
    lines = res.stdout.split("PLAY RECAP", 1)[1].splitlines()[1:]
    for line in lines:
        if ":" not in line:
            continue
        host, counts = line.split(":", 1)
        out[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
    return out


def files_on(c: Cluster, host: str, step: str) -> dict[str, tuple[int, bytes]]:
    """{name: (inode, content)} of a step folder on a host, read through its namespaces."""
    d = c.hosts[host].shm / "prng" / step
    if not d.is_dir():
        return {}
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in d.iterdir()}


@pytest.fixture
def srcs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "survivors.npz": os.urandom(6_000_000),
        "train_history.json": json.dumps(list(range(150_000))).encode(),
        "holdout_history.json": json.dumps(list(range(500))).encode(),
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def preload_vars(srcs: dict[str, Path], **extra: object) -> dict[str, object]:
    return {"ramdisk_step": "step3", "ramdisk_files": [str(p) for p in srcs.values()], **extra}


def test_i13_preload_three_hosts_rerun_unchanged_then_only_changed_file(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path]
) -> None:
    c = make_cluster(3, shm_mb=64)
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(r["changed"] == 1 and r["failed"] == 0 for r in recap(res).values())
    first = {h: files_on(c, h, "step3") for h in c.hosts}
    for host, files in first.items():
        assert {n: d for n, (_, d) in files.items() if n != ".manifest.json"} == {
            n: p.read_bytes() for n, p in srcs.items()
        }, host
        manifest = json.loads(files[".manifest.json"][1])
        assert sorted(f["name"] for f in manifest["files"]) == sorted(srcs)

    # Unchanged: changed=0 everywhere, no file touched.
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    assert res.returncode == 0 and all(r["changed"] == 0 for r in recap(res).values()), res.stdout[-3000:]
    assert {h: files_on(c, h, "step3") for h in c.hosts} == first

    # One source changes: only it is sent again (new inode), the others keep theirs.
    srcs["train_history.json"].write_text(json.dumps(list(range(150_001))))
    out = adhoc(c, "all", f"state=preload step=step3 files={','.join(str(p) for p in srcs.values())}")
    for host, (status, result) in out.items():
        assert status == "CHANGED" and result["copied"] == ["train_history.json"], (host, result)
        now = files_on(c, host, "step3")
        assert now["train_history.json"][1] == srcs["train_history.json"].read_bytes()
        assert now["train_history.json"][0] != first[host]["train_history.json"][0]
        for name in ("survivors.npz", "holdout_history.json"):
            assert now[name] == first[host][name]


@pytest.mark.parametrize("become", [False, True], ids=["session", "become-module"])
def test_preload_one_session_per_host_or_the_module_phases_under_become(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path], become: bool
) -> None:
    """Without become a preload is ONE receiver session per host (prepare, files, commit);
    with become the module's prepare and commit phases around put_file. Same files, same
    manifest, and an unchanged re-run ends at the prepare either way."""
    c = make_cluster(2, shm_mb=64)
    files = ",".join(str(p) for p in srcs.values())
    extra = ("-b", "--become-method", "su") if become else ()
    via = "module" if become else "session"
    for status in ("CHANGED", "SUCCESS"):
        out = adhoc(c, "all", f"state=preload step=step3 files={files}", *extra)
        for host, (got, result) in out.items():
            assert got == status and result["timing"]["via"] == via, (host, result)
            assert result["complete"] is (status == "SUCCESS"), (host, result)
            on_host = files_on(c, host, "step3")
            assert {n: d for n, (_, d) in on_host.items() if not n.startswith(".")} == {
                n: p.read_bytes() for n, p in srcs.items()
            }
            manifest = json.loads(on_host[".manifest.json"][1])
            assert sorted(f["name"] for f in manifest["files"]) == sorted(srcs)


def test_i25_small_shm_host_refuses_others_succeed(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path]
) -> None:
    c = make_cluster([HostSpec("big1", shm_mb=64), HostSpec("tiny", shm_mb=4), HostSpec("big2", shm_mb=64)])
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    assert res.returncode != 0
    rc = recap(res)
    assert rc["tiny"]["failed"] == 1 and rc["big1"]["failed"] == 0 and rc["big2"]["failed"] == 0
    fail_line = next(line for line in res.stdout.splitlines() if line.startswith("fatal: [tiny]"))
    assert "fatal: [tiny]" in fail_line
    assert "refusing: step step3 needs" in res.stdout and "only 4.0 MiB is free" in res.stdout
    assert files_on(c, "tiny", "step3") == {}  # nothing half-loaded
    assert ".manifest.json" in files_on(c, "big1", "step3") and ".manifest.json" in files_on(
        c, "big2", "step3"
    )


def test_i25_thresholds_read_the_real_mount(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path]
) -> None:
    c = make_cluster([HostSpec("warm", shm_mb=32), HostSpec("full", shm_mb=32)])
    c.fill_shm("warm", 12)  # 12 + ~7.1 MB -> ~60%: warn
    c.fill_shm("full", 20)  # 20 + ~7.1 MB -> ~85%: refuse
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    rc = recap(res)
    assert rc["warm"]["failed"] == 0 and rc["full"]["failed"] == 1, res.stdout[-3000:]
    text = " ".join((res.stdout + res.stderr).split())
    load = sum(p.stat().st_size for p in srcs.values())
    warm = float(re.search(r"/dev/shm is (\d+\.\d)% used after this preload \(warn above 50", text).group(1))
    full = float(
        re.search(r"/dev/shm would be (\d+\.\d)% used \(limit ramdisk_max_percent=80", text).group(1)
    )
    # The real mount's figures: fill + files over the 32 MiB size (pages round up a little).
    assert abs(warm - 100 * (12 * 2**20 + load) / 2**25) < 0.5 and 50 < warm < 80
    assert abs(full - 100 * (20 * 2**20 + load) / 2**25) < 0.5 and full > 80
    assert files_on(c, "full", "step3") == {}
    # The threshold is a variable.
    res = c.playbook(
        "playbooks/ramdisk_preload.yml",
        "--limit",
        "full",
        extra_vars=preload_vars(srcs, ramdisk_max_percent=90),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert ".manifest.json" in files_on(c, "full", "step3")


def test_i12_interrupted_copy_leaves_no_sentinel(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path]
) -> None:
    c = make_cluster(1, shm_mb=64)
    assert c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs)).returncode == 0
    step = c.hosts["node1"].shm / "prng" / "step3"
    assert (step / ".manifest.json").exists()
    srcs["survivors.npz"].write_bytes(os.urandom(6_000_000))
    c.throttle("node1", 8)  # ~6 s for the changed file: time to cut it off mid-copy
    seen: list[str] = []

    def kill_when_copying() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = [p for p in step.glob(".incoming-*") if p.stat().st_size > 0] if step.exists() else []
            if partial:
                seen.append(partial[0].name)
                c.kill_sshd("node1")  # the host goes away mid-transfer
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_copying)
    killer.start()
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    killer.join()
    assert seen, "the copy finished before it could be interrupted"
    assert res.returncode != 0
    assert not (step / ".manifest.json").exists()  # i12: never "ready" after a partial copy
    c.unthrottle("node1")
    c.restart_sshd("node1")
    out = adhoc(c, "all", "state=status step=step3")
    assert out["node1"][1]["steps"][0]["state"] == "incomplete"
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    assert res.returncode == 0, res.stdout[-3000:]
    names = sorted(p.name for p in step.iterdir())
    assert names == sorted([*srcs, ".manifest.json"])  # partial copy cleaned up
    assert (step / "survivors.npz").read_bytes() == srcs["survivors.npz"].read_bytes()

    # A missing source fails loudly before anything is touched (seed 002 section 8.7).
    before = files_on(c, "node1", "step3")
    missing = srcs["survivors.npz"].with_name("gone.json")
    out = adhoc(c, "all", f"state=preload step=step3 files={srcs['survivors.npz']},{missing}")
    status, result = out["node1"]
    assert (
        status.startswith("FAILED") and f"source file not found on the controller: {missing}" in result["msg"]
    )
    folder = srcs["survivors.npz"].parent
    status, result = adhoc(c, "node1", f"state=preload step=step3 files={folder}")["node1"]
    assert status.startswith("FAILED") and result["msg"] == (
        f"ramdisk preload: source {folder} is a folder on the controller, expected a file"
    )
    assert files_on(c, "node1", "step3") == before


def test_i14_clear_refuses_root_empty_and_outside_paths(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path], tmp_path: Path
) -> None:
    c = make_cluster(3, shm_mb=64)
    assert c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs)).returncode == 0
    # An old-style sentinel dotfile and a symlink pointing out of the root on node1.
    c.exec("node1", ["touch", f"{ROOT}/.ready_step3"], check=True)
    c.exec("node1", ["ln", "-s", "/etc", f"{ROOT}/evil"], check=True)
    # Every refusal in one play (one ansible run keeps this test fast on a loaded machine).
    cases = [
        ({"root": "/"}, "refusing: ramdisk root '/'"),
        ({"root": ""}, "refusing: the ramdisk root is empty"),
        ({"root": "/dev/shm"}, "a system directory"),
        ({"root": ROOT, "step": "../../etc"}, "refusing: step name '../../etc'"),
        ({"root": ROOT, "step": "evil"}, "outside the ramdisk root"),
    ]
    play = tmp_path / "refusals.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "name": "Clear refusals",
                    "hosts": "node1",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Try to clear",
                            "prng.cluster.ramdisk": "{{ item | combine({'state': 'clear'}) }}",
                            "loop": [args for args, _ in cases],
                            "ignore_errors": True,
                            "register": "tries",
                        },
                        {
                            "name": "Report",
                            "delegate_to": "localhost",
                            "ansible.builtin.copy": {
                                "dest": str(tmp_path / "report.json"),
                                "content": "{{ tries.results | map(attribute='failed') | zip("
                                "tries.results | map(attribute='msg')) | list | to_json }}",
                                "mode": "0644",
                            },
                        },
                    ],
                }
            ]
        )
    )
    res = c.playbook(play)
    assert res.returncode == 0, res.stdout[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report) == len(cases)
    for (failed, msg), (args, needle) in zip(report, cases, strict=True):
        assert failed is True and needle in msg, (args, msg)
    assert Path("/etc/passwd").exists()
    res = c.playbook("playbooks/ramdisk_clear.yml", extra_vars={"ramdisk_root": "/"})
    assert res.returncode != 0 and "refusing" in res.stdout
    assert ".manifest.json" in files_on(c, "node2", "step3")

    # Clear all (the default): whole step folders with their dotfiles; what is not a step
    # folder of ours (the old sentinel, the link) is left alone (i35), never /etc.
    res = c.playbook("playbooks/ramdisk_clear.yml")
    assert res.returncode == 0 and all(r["changed"] == 1 for r in recap(res).values()), res.stdout[-3000:]
    for host in c.hosts:
        left = sorted(os.listdir(c.hosts[host].shm / "prng"))
        assert left == ([".ready_step3", "evil"] if host == "node1" else []), (host, left)
    assert Path("/etc/passwd").exists()
    res = c.playbook("playbooks/ramdisk_clear.yml")
    assert all(r["changed"] == 0 for r in recap(res).values())


def test_status_table_shows_stale_after_source_change(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path]
) -> None:
    c = make_cluster(3, shm_mb=64)
    assert c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs)).returncode == 0
    res = c.playbook("playbooks/ramdisk_status.yml")
    assert res.returncode == 0
    rows = [line for line in res.stdout.splitlines() if "step3" in line and "MiB (" in line]
    assert len(rows) == 3 and all(" valid " in r for r in rows), res.stdout[-2000:]
    srcs["holdout_history.json"].write_text("[1, 2, 3]")
    res = c.playbook("playbooks/ramdisk_status.yml", extra_vars=preload_vars(srcs))
    rows = [line for line in res.stdout.splitlines() if "step3" in line and "MiB (" in line]
    assert len(rows) == 3 and all(" stale " in r for r in rows), res.stdout[-2000:]
    for host in c.hosts:
        assert any(r.split("- ", 1)[-1].startswith(host) for r in rows)

    # A host that does not answer still gets its row.
    c.kill_sshd("node3")
    res = c.playbook("playbooks/ramdisk_status.yml")
    assert res.returncode != 0
    assert "node3  (no answer: unreachable or failed)" in res.stdout, res.stdout[-2000:]
    assert len([line for line in res.stdout.splitlines() if "step3" in line and " valid " in line]) == 2
    c.restart_sshd("node3")

    # Check mode + diff: reports the change, copies nothing.
    before = {h: files_on(c, h, "step3") for h in c.hosts}
    res = c.playbook("playbooks/ramdisk_preload.yml", "--check", "--diff", extra_vars=preload_vars(srcs))
    assert res.returncode == 0 and all(r["changed"] == 1 for r in recap(res).values())
    assert "holdout_history.json" in res.stdout and "+++ after" in res.stdout
    assert {h: files_on(c, h, "step3") for h in c.hosts} == before


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (dotfiles and links too): content, link target, None for folders."""
    out: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(base) / name
            rel = str(p.relative_to(path))
            out[rel] = os.readlink(p).encode() if p.is_symlink() else (None if p.is_dir() else p.read_bytes())
    return out


def test_i35_clear_refuses_disk_roots_and_deletes_only_our_steps(
    make_cluster: Callable[..., Cluster], srcs: dict[str, Path], tmp_path: Path
) -> None:
    c = make_cluster(2, shm_mb=64)
    # Someone's folder on disk (shared by the test hosts), with dotfiles and a step-like folder.
    disk = tmp_path / "data"
    (disk / "photos").mkdir(parents=True)
    (disk / ".bashrc").write_text("precious dotfile")
    (disk / "thesis.tex").write_text("precious")
    (disk / "photos" / ".hidden.jpg").write_bytes(b"\xff\xd8")
    (disk / "step3").mkdir()
    (disk / "step3" / "train_history.json").write_text("[1, 2]")
    before = tree(disk)
    stat_f = c.exec("node1", ["stat", "-f", "-c", "%T", str(disk)], check=True).stdout.strip()
    assert stat_f not in ("tmpfs", "ramfs"), stat_f
    fstype, mount = c.exec(
        "node1", ["findmnt", "-n", "-o", "FSTYPE,TARGET", "-T", str(disk)], check=True
    ).stdout.split()

    def refusal(given: str) -> str:
        return (
            f"refusing to clear: ramdisk root {given} (real path {disk}) is on {fstype} (mount {mount}), "
            "not a tmpfs/ramfs; nothing removed "
            "(set ramdisk_allow_any_root=true, module option allow_any_root, to override)"
        )

    # The disk folder itself as the root: every host refuses, nothing is removed.
    one_line = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}  # each failure's result on its fatal line
    res = c.playbook("playbooks/ramdisk_clear.yml", extra_vars={"ramdisk_root": str(disk)}, **one_line)
    assert res.returncode != 0 and all(r["failed"] == 1 for r in recap(res).values()), res.stdout[-3000:]
    fatal = [line for line in res.stdout.splitlines() if line.startswith("fatal: [")]
    assert len(fatal) == 2 and all(f'"msg": "{refusal(str(disk))}"' in line for line in fatal), fatal
    assert tree(disk) == before

    # A /dev/shm symlink to it: resolved first, refused the same way.
    (c.hosts["node1"].shm / "shortcut").symlink_to(disk)
    res = c.playbook(
        "playbooks/ramdisk_clear.yml",
        "--limit",
        "node1",
        extra_vars={"ramdisk_root": "/dev/shm/shortcut"},
        **one_line,
    )
    assert res.returncode != 0 and recap(res)["node1"]["failed"] == 1, res.stdout[-3000:]
    assert f'"msg": "{refusal("/dev/shm/shortcut")}"' in res.stdout, res.stdout[-3000:]
    assert tree(disk) == before and (c.hosts["node1"].shm / "shortcut").is_symlink()

    # On the real ramdisk root: a standalone preload purges our other step but keeps foreign
    # entries; a clear removes our steps and leaves the foreign file and folder alone.
    one = {"survivors.npz": srcs["survivors.npz"]}
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(one, ramdisk_step="step2"))
    assert res.returncode == 0, res.stdout[-3000:]
    for host in c.hosts:
        root = c.hosts[host].shm / "prng"
        (root / "notes.txt").write_text("operator's notes")
        (root / "mydata" / ".cache").mkdir(parents=True)
        (root / "mydata" / ".cache" / "x").write_text("x")
    foreign = {h: tree(c.hosts[h].shm / "prng") for h in c.hosts}
    foreign = {
        h: {k: v for k, v in t.items() if k.split("/")[0] in ("notes.txt", "mydata")}
        for h, t in foreign.items()
    }
    res = c.playbook("playbooks/ramdisk_preload.yml", extra_vars=preload_vars(srcs))
    assert res.returncode == 0, res.stdout[-3000:]
    for host in c.hosts:
        assert sorted(os.listdir(c.hosts[host].shm / "prng")) == ["mydata", "notes.txt", "step3"], host
    res = c.playbook("playbooks/ramdisk_clear.yml")
    assert res.returncode == 0 and all(r["changed"] == 1 for r in recap(res).values()), res.stdout[-3000:]
    assert "left alone (not a step folder of ours" in " ".join(res.stdout.split()) + " ".join(
        res.stderr.split()
    )
    for host in c.hosts:
        assert tree(c.hosts[host].shm / "prng") == foreign[host], host
