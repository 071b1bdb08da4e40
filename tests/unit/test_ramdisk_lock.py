"""The ramdisk in-use lock, on real files in /dev/shm: a run's lease on its step folder
(clear and standalone preload refuse, naming the run; expired leases count for nothing;
release at the end of the step), a preload's claim that makes a second preload of the
same step wait (or take over an abandoned one), and the root's flock. The module runs as
the action plugin drives it (prepare, copy, commit); two preloads over real SSH are in
tests/integration/test_ramdisk_lock_cluster.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.action import ramdisk as action  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import ramdisk as rd  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import ramdisk as mod  # noqa: E402

from tests.unit import ramdisk_support  # noqa: E402
from tests.unit.ramdisk_support import entry, tmpfs_root  # noqa: E402


@pytest.fixture
def root() -> Iterator[Path]:
    yield from tmpfs_root("prng-lock")


@pytest.fixture
def srcs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in (("train_history.json", b"[1, 2, 3]" * 500), ("survivors.npz", os.urandom(200_000))):
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def run_module(args: dict) -> dict:
    return ramdisk_support.run_module(mod, args)


def preload(root: Path, step: str, srcs: dict[str, Path], **opts) -> dict:
    """What the action plugin does: prepare (claim, lease), copy the needed files, commit."""
    base = {
        "state": "preload",
        "root": str(root),
        "step": step,
        "_manifest": [entry(p) for p in srcs.values()],
    }
    base.update(_load_id=uuid.uuid4().hex, _holder=action.holder_id(), **opts)
    prep = run_module(dict(base, _phase="prepare"))
    if prep.get("failed") or prep.get("complete") or prep.get("busy"):
        return prep
    staged = {}
    for name in prep["needed"]:
        staged[name] = rd.staged_path(prep["step_path"], name)
        shutil.copyfile(srcs[name], staged[name])
    return run_module(dict(base, _phase="commit", _staged=staged))


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def data_files(path: Path) -> dict[str, bytes]:
    """The step's files and manifest (bookkeeping dotfiles aside)."""
    return {k: v for k, v in snapshot(path).items() if not Path(k).name.startswith(".lease")}


# ------------------------------------------------------------------ leases
def test_a_run_lease_makes_clear_and_standalone_preload_refuse(root: Path, srcs: dict[str, Path]) -> None:
    res = preload(root, "step3", srcs, run_id="run-A", exclusive=False)
    assert res["changed"] and not res.get("failed"), res
    lease = json.loads((root / "step3" / ".lease-run-A.json").read_text())
    assert lease["run_id"] == "run-A" and lease["lease_seconds"] == 21600
    before = snapshot(root)

    # a standalone preload of another step would remove step3: refused, naming the run
    other = {"survivors.npz": srcs["survivors.npz"]}
    res = preload(root, "step1", other, exclusive=True)
    assert (
        res["failed"] and "refusing to preload step1 (standalone: it removes the other steps)" in res["msg"]
    )
    assert "step step3 is in use by run run-A" in res["msg"] and "nothing removed" in res["msg"]
    assert "state=release step=step3 run_id=run-A" in res["msg"] and "\n" not in res["msg"]
    assert snapshot(root) == before and not (root / "step1").exists()

    # a clear, of the step or of everything: refused, nothing removed
    for args in ({"step": "step3"}, {}):
        res = run_module({"state": "clear", "root": str(root), **args})
        assert res["failed"] and res["msg"].startswith("refusing to clear: step step3 is in use by run run-A")
        assert snapshot(root) == before

    # a preload that would change the step's files: refused; the same files: fine
    changed = dict(srcs)
    changed["train_history.json"] = srcs["train_history.json"].parent / "other" / "train_history.json"
    changed["train_history.json"].parent.mkdir()
    changed["train_history.json"].write_text("[4, 5, 6]")
    res = preload(root, "step3", changed)
    assert res["failed"] and res["msg"].startswith(
        "refusing to change step step3: step step3 is in use by run run-A"
    )
    assert snapshot(root) == before
    res = preload(root, "step3", srcs)
    assert res["complete"] and not res["changed"] and snapshot(root) == before

    # the run itself may clear its own step; status shows who uses it
    st = run_module({"state": "status", "root": str(root)})
    assert st["rows"][0].endswith("in use by run run-A") and st["steps"][0]["leases"][0]["run_id"] == "run-A"
    res = run_module({"state": "clear", "root": str(root), "step": "step3", "run_id": "run-A"})
    assert res["changed"] and not (root / "step3").exists()
    assert os.listdir(root) == []  # the lock file lives only while an operation runs


def test_an_expired_lease_counts_for_nothing(root: Path, srcs: dict[str, Path]) -> None:
    preload(root, "step3", srcs, run_id="crashed", lease_seconds=60)
    lease = root / "step3" / ".lease-crashed.json"
    past = time.time() - 61  # the controller died a minute ago and nothing renewed it
    os.utime(lease, (past, past))
    res = preload(root, "step1", {"survivors.npz": srcs["survivors.npz"]}, exclusive=True)
    assert res["changed"] and not res.get("failed") and not (root / "step3").exists(), res
    # renewing is touching the file (or running the preload / state=lease again)
    preload(root, "step3", srcs, run_id="alive", lease_seconds=60)
    os.utime(root / "step3" / ".lease-alive.json", (past, past))
    res = run_module(
        {"state": "lease", "root": str(root), "step": "step3", "run_id": "alive", "lease_seconds": 60}
    )
    assert res["changed"] is False and res["lease"]["renewed"] is True
    assert run_module({"state": "clear", "root": str(root), "step": "step3"})["failed"]


def test_release_at_the_end_of_the_step(root: Path, srcs: dict[str, Path]) -> None:
    preload(root, "step3", srcs, run_id="run-A")
    preload(root, "step3", srcs, run_id="run-B")  # a second run on the same data shares it
    names = sorted(p.name for p in (root / "step3").iterdir() if p.name.startswith(".lease"))
    assert names == [".lease-run-A.json", ".lease-run-B.json"]
    res = run_module(
        {"state": "release", "root": str(root), "step": "step3", "run_id": "run-A", "clear_unused": True}
    )
    assert res["released"] and res["removed"] == [] and "in use by run run-B" in res["kept"]
    assert (root / "step3" / rd.MANIFEST).exists()
    res = run_module(
        {"state": "release", "root": str(root), "step": "step3", "run_id": "run-B", "clear_unused": True}
    )
    assert res["released"] and res["removed"] == [str(root / "step3")] and res["freed_bytes"] > 200_000
    assert res["summary"].startswith("lease of run run-B given back; removed step3 (")
    res = run_module({"state": "release", "root": str(root), "step": "step3", "run_id": "run-B"})
    assert res["changed"] is False and res["released"] is False
    res = run_module({"state": "release", "root": str(root), "step": "step3", "run_id": "bad id"})
    assert res["failed"] and res["msg"].startswith("run_id: found 'bad id', expected")


def test_clear_says_what_it_removed_and_freed(root: Path, srcs: dict[str, Path]) -> None:
    preload(root, "step3", srcs)
    preload(root, "step1", {"survivors.npz": srcs["survivors.npz"]})
    res = run_module({"state": "clear", "root": str(root)})
    assert res["summary"].startswith("removed step1 (195.") and "step3 (" in res["summary"]
    assert " freed; /dev/shm now " in res["summary"]
    res = run_module({"state": "clear", "root": str(root)})
    assert res["summary"].startswith("nothing to remove; /dev/shm now ")


# ------------------------------------------------------------------ two preloads of one step
def test_a_second_preload_waits_for_the_first_then_finds_the_step_loaded(
    root: Path, srcs: dict[str, Path]
) -> None:
    manifest = [entry(p) for p in srcs.values()]
    base = {"state": "preload", "root": str(root), "step": "step3", "_manifest": manifest}
    first = dict(base, _load_id="first", _holder=action.holder_id())
    prep = run_module(dict(first, _phase="prepare"))
    staged = {n: rd.staged_path(prep["step_path"], n) for n in prep["needed"]}
    shutil.copyfile(srcs["survivors.npz"], staged["survivors.npz"])  # half of its copies sent
    # the second one is told to wait: its prepare touches nothing (i12: no half-sent copy removed)
    second = dict(base, _load_id="second", _holder=action.holder_id())
    res = run_module(dict(second, _phase="prepare"))
    assert res["busy"]["id"] == "first" and res["changed"] is False
    assert Path(staged["survivors.npz"]).exists()
    # a clear or a standalone preload of another step waits too (refused while it loads)
    res = run_module({"state": "clear", "root": str(root)})
    assert res["failed"] and "step step3 is being loaded right now by another preload" in res["msg"]
    shutil.copyfile(srcs["train_history.json"], staged["train_history.json"])
    res = run_module(dict(first, _phase="commit", _staged=staged))
    assert res["changed"] and not (root / "step3" / rd.LOADING).exists()
    res = run_module(dict(second, _phase="prepare"))
    assert res["complete"] and not res.get("busy")


def test_an_abandoned_claim_is_taken_over(root: Path, srcs: dict[str, Path]) -> None:
    manifest = [entry(p) for p in srcs.values()]
    base = {"state": "preload", "root": str(root), "step": "step3", "_manifest": manifest}
    # a preload whose controller process is gone (a pid that cannot exist here)
    dead = f"{action.socket.gethostname()}:999999999:1"
    assert action.holder_gone(dead) and not action.holder_gone(action.holder_id())
    assert not action.holder_gone("another-controller:1:1")  # not ours to judge
    prep = run_module(dict(base, _phase="prepare", _load_id="dead", _holder=dead))
    leftover = rd.staged_path(prep["step_path"], "survivors.npz")
    Path(leftover).write_bytes(b"half")
    res = run_module(dict(base, _phase="prepare", _load_id="new", _holder=action.holder_id()))
    assert res["busy"]["holder"] == dead
    # the action plugin sees the holder is gone and takes over; the leftover goes
    res = run_module(dict(base, _phase="prepare", _load_id="new", _break_claim="dead"))
    assert not res.get("busy") and not Path(leftover).exists()
    assert json.loads((root / "step3" / rd.LOADING).read_text())["id"] == "new"
    # the old preload, if it comes back, may not commit over the new one
    res = run_module(dict(base, _phase="commit", _load_id="dead", _staged={}))
    assert res["failed"] and "took this load over" in res["msg"]
    # a claim of another controller that has not moved for 2 minutes is abandoned too
    past = time.time() - rd.STALE_LOAD_SECONDS - 1
    os.utime(root / "step3" / rd.LOADING, (past, past))
    res = run_module(dict(base, _phase="prepare", _load_id="third"))
    assert not res.get("busy") and not res.get("failed")


def test_abort_removes_only_its_own_copies(root: Path, srcs: dict[str, Path]) -> None:
    (root / "step3").mkdir()
    mine = rd.staged_path(str(root / "step3"), "a.json")
    theirs = rd.staged_path(str(root / "step3"), "b.json")
    Path(mine).write_text("x")
    Path(theirs).write_text("y")
    res = run_module(
        {
            "state": "preload",
            "root": str(root),
            "step": "step3",
            "_manifest": [entry(srcs["train_history.json"])],
            "_phase": "abort",
            "_load_id": "me",
            "_staged": {"a.json": mine},
        }
    )
    assert res["removed"] == [Path(mine).name] and Path(theirs).exists()


def test_root_lock_serializes_and_leaves_nothing(root: Path) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with rd.RootLock(str(root), 5):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    with pytest.raises(rd.RamdiskError, match="another ramdisk operation on this host held"):
        with rd.RootLock(str(root), 0.3):
            pass
    release.set()
    t.join()
    with rd.RootLock(str(root), 1):
        assert (root / rd.LOCK).exists()
    assert not (root / rd.LOCK).exists()


def test_a_running_agent_renews_its_runs_lease_and_never_brings_a_released_one_back(root: Path) -> None:
    from ansible_collections.prng.cluster.plugins.module_utils.fanout_agent import renew_lease

    sdir = root / "step3"
    sdir.mkdir(parents=True)
    lease = rd.take_lease(str(sdir), "step3", "score-0123456789abcdef", 2.0, "ctl")
    assert lease["path"] == str(sdir / ".lease-score-0123456789abcdef.json")
    old = time.time() - 60
    os.utime(lease["path"], (old, old))  # as if taken a minute ago: expired by now ...
    assert not rd.leases(str(sdir))[0]["live"]
    renewer = threading.Thread(target=renew_lease, args=(lease["path"],), daemon=True)
    renewer.start()
    deadline = time.time() + 10
    while not rd.leases(str(sdir))[0]["live"]:  # ... until the agent touches it
        assert time.time() < deadline, "the agent never renewed the lease"
        time.sleep(0.05)
    assert rd.release_lease(str(sdir), "score-0123456789abcdef")  # the end of the step
    renewer.join(5)
    assert not renewer.is_alive() and rd.leases(str(sdir)) == []  # gone for good, the thread ended


def test_the_lease_name_is_the_runs_the_same_for_its_resume_and_another_for_any_other_run() -> None:
    from ansible_collections.prng.cluster.plugins.action.fanout import Run

    def lease_id(identity: dict, run_dir: str = "/runs/step3") -> str:
        return Run("score", {}, None, run_dir, [], None, {}, identity, {}, False, None).lease_id()

    ident = {"plan": "score", "params": {"mod": 1000}, "inputs": {"survivors": "ab" * 32}}
    first = lease_id(ident)
    assert first == lease_id(json.loads(json.dumps(ident))) and rd.check_run_id(first) == first
    assert first.startswith("score-") and len(first) == len("score-") + 16
    assert lease_id({**ident, "params": {"mod": 997}}) != first  # other parameters: another run
    assert lease_id(ident, "/runs/other") != first  # the same parameters in another run folder
