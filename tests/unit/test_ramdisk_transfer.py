"""The ramdisk transfer: ONE session with a receiver that prepares, receives the missing
files, hashing each copy while it writes it (no second read), and commits, manifest last.
Real files on the real /dev/shm tmpfs and a real receiver process started the way the
action plugin starts it (here without ssh: `local`); the same over real SSH runs in
tests/integration/test_ramdisk_cluster.py."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.action import ramdisk as action  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils import ramdisk as rd  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import ramdisk as mod  # noqa: E402

from tests.unit import ramdisk_support  # noqa: E402
from tests.unit.ramdisk_support import entry, tmpfs_root  # noqa: E402

STEP = "step3"


@pytest.fixture
def root() -> Iterator[Path]:
    yield from tmpfs_root("prng-transfer")


@pytest.fixture
def srcs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in (
        ("survivors.npz", os.urandom(3_000_000)),  # several receive chunks
        ("train_history.json", json.dumps(list(range(20_000))).encode()),
        ("empty.json", b""),
    ):
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def run_module(args: dict) -> dict:
    return ramdisk_support.run_module(mod, args)


def stream(root: Path, srcs: dict[str, Path], manifest: list[dict] | None = None) -> tuple[dict, dict]:
    """What the action plugin does over a connection: ONE receiver session that prepares
    (the module's arguments, validated by its spec), receives the needed files and commits.
    The receiver runs isolated (-I, another cwd): it has only the source the action sends,
    not this checkout. Returns (the prepare's answer, the result)."""
    manifest = manifest or [entry(p) for p in srcs.values()]
    args = {
        "state": "preload",
        "root": str(root),
        "step": STEP,
        "_manifest": manifest,
        "_load_id": uuid.uuid4().hex,
    }
    params = ArgumentSpecValidator(mod.ARGUMENT_SPEC).validate(args).validated_parameters
    sizes = {m["name"]: m["size"] for m in manifest}
    argv = [sys.executable, "-I", "-S", "-c", action.RECEIVE_BOOT, rd.RECEIVE_TAG]
    cwd = os.getcwd()
    os.chdir("/")
    try:
        session = action.Receiver(argv, ())
        prep = session.request({"prepare": params})
        assert prep is not None and not prep.get("failed"), (prep, session.close())
        res = (
            prep if prep["complete"] else session.send([(n, str(srcs[n]), sizes[n]) for n in prep["needed"]])
        )
        error = session.close()
    finally:
        os.chdir(cwd)
    assert res is not None, error
    return prep, res


def leftovers(root: Path) -> list[str]:
    """Partial copies and claims: what a finished or failed preload must not leave."""
    return sorted(n for n in os.listdir(root / STEP) if n.startswith((rd.INCOMING, rd.LOADING)))


def test_one_session_receives_hashes_and_commits(root: Path, srcs: dict[str, Path]) -> None:
    prep, res = stream(root, srcs)
    assert sorted(prep["needed"]) == sorted(srcs) and not res.get("failed"), res
    step = root / STEP
    for name, path in srcs.items():
        assert (step / name).read_bytes() == path.read_bytes()
    manifest = json.loads((step / rd.MANIFEST).read_text())
    assert {(f["name"], f["size"], f["sha256"]) for f in manifest["files"]} == {
        (e["name"], e["size"], e["sha256"]) for e in map(entry, srcs.values())
    }
    assert sorted(res["copied"]) == sorted(srcs) and res["files"]["survivors.npz"] == str(
        step / "survivors.npz"
    )
    assert leftovers(root) == [] and not (step / rd.PREV_MANIFEST).exists()
    # Unchanged: the session's prepare answers "complete" and ends there (a re-run's only
    # call per host); the module's prepare says the same.
    again, res = stream(root, srcs)
    assert again["complete"] is True and again["needed"] == [] and res is again
    again = run_module({"state": "preload", "root": str(root), "step": STEP, "_manifest": manifest["files"]})
    assert again["complete"] is True and again["needed"] == []


def test_only_the_changed_file_goes_through_the_stream(root: Path, srcs: dict[str, Path]) -> None:
    stream(root, srcs)
    before = {n: (root / STEP / n).stat().st_ino for n in srcs}
    srcs["train_history.json"].write_text("[1, 2, 3]")
    prep, res = stream(root, srcs)
    assert prep["needed"] == ["train_history.json"] and res["copied"] == ["train_history.json"], res
    assert (root / STEP / "train_history.json").read_text() == "[1, 2, 3]"
    assert {n: (root / STEP / n).stat().st_ino for n in srcs if n != "train_history.json"} == {
        n: i for n, i in before.items() if n != "train_history.json"
    }


@pytest.mark.parametrize("fault", ["corrupt", "short"])
def test_i12_bytes_that_are_not_the_hashed_ones_leave_no_sentinel(
    root: Path, srcs: dict[str, Path], fault: str
) -> None:
    """The controller hashed one content and sends another (the file changed after it was
    hashed): the receiver's own hash refuses it, or the stream ends early; either way no
    manifest, no partial copy, no claim, and the message names the file."""
    stream(root, srcs)  # loaded and ready
    manifest = [entry(p) for p in srcs.values()]
    payload = os.urandom(3_000_000)
    manifest[0] = {
        "name": "survivors.npz",
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if fault == "corrupt":
        srcs["survivors.npz"].write_bytes(bytes([payload[0] ^ 0xFF]) + payload[1:])  # always differs
    else:
        srcs["survivors.npz"].write_bytes(payload[:1_000_000])
    _prep, res = stream(root, srcs, manifest)
    assert res.get("failed") is True
    if fault == "corrupt":
        assert res["msg"].startswith("copy of survivors.npz is corrupt: sha256 "), res["msg"]
    else:
        assert res["msg"].startswith("copy of survivors.npz is incomplete: "), res["msg"]
        assert "is shorter than when it was hashed" in res["msg"], res["msg"]
    assert res["msg"].find(f"step {STEP} not ready") > 0
    assert not (root / STEP / rd.MANIFEST).exists() and leftovers(root) == []
    assert rd.status(str(root), STEP)["steps"][0]["state"] == "incomplete"
    # The sources put right, the next preload completes (the old records still spare rehashing).
    srcs["survivors.npz"].write_bytes(payload)
    _prep, res = stream(root, srcs, manifest)
    assert not res.get("failed") and (root / STEP / rd.MANIFEST).exists(), res


def test_a_copy_changed_after_it_was_received_is_hashed_again(root: Path, srcs: dict[str, Path]) -> None:
    """The receiver's digest is trusted only for the file it wrote (size, mtime, inode):
    a copy touched between receive and commit is read again and refused."""
    manifest = [entry(p) for p in srcs.values()]
    plan = rd.plan_preload(str(root), STEP, manifest)
    rd.prepare_preload(plan)
    staged = {n: rd.staged_path(plan["path"], n) for n in srcs}
    received = {}
    for name, path in srcs.items():
        with open(path, "rb") as fh:
            received[name] = rd.receive_file(fh, staged[name], path.stat().st_size, name, STEP)
    assert received["survivors.npz"]["sha256"] == entry(srcs["survivors.npz"])["sha256"]
    with open(staged["survivors.npz"], "r+b") as fh:  # same size, another byte
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))
    os.utime(staged["survivors.npz"], ns=(1, 1))
    with pytest.raises(rd.RamdiskError, match="copy of survivors.npz is corrupt"):
        rd.commit_preload(str(root), STEP, manifest, staged, received=received)
    assert not (root / STEP / rd.MANIFEST).exists() and leftovers(root) == []


def test_the_receiver_refuses_a_staged_path_outside_the_step(root: Path, srcs: dict[str, Path]) -> None:
    outside = root / "elsewhere"
    manifest = [entry(srcs["train_history.json"])]
    plan = rd.plan_preload(str(root), STEP, manifest)
    rd.prepare_preload(plan)
    req = {
        "root": str(root),
        "step": STEP,
        "manifest": manifest,
        "files": [{"name": "train_history.json", "staged": str(outside)}],
    }
    with (
        open(srcs["train_history.json"], "rb") as fh,
        pytest.raises(rd.RamdiskError, match="not an incoming"),
    ):
        rd.receive_and_commit(req, fh)
    assert not outside.exists() and not (root / STEP / rd.MANIFEST).exists()


def test_receiver_source_carries_what_it_imports() -> None:
    """The receiver gets module_utils/ramdisk and any module_utils of this collection it
    imports (dependencies first), so a shared helper moved into another file still runs."""
    mods = action._collection_modules(rd)
    assert mods[-1] is rd
    assert all(m.__name__.startswith("ansible_collections.prng.cluster.plugins.module_utils.") for m in mods)
    source = action.receiver_source().decode()
    assert all(repr(m.__name__) in source for m in mods) and source.endswith(".receive_main()")


def test_a_receiver_that_cannot_start_says_why_in_one_line() -> None:
    """A host whose Python does not run (a shim that is no interpreter: exit 127) gives no
    answer; the reason names the exit and the first and last lines it wrote (the shell's
    complaint, a traceback's last line)."""
    said = "pyenv: python3.13: command not found\\n\\nsee help\\n"
    fail = f"import sys; sys.stderr.write('{said}'); sys.exit(127)"
    session = action.Receiver([sys.executable, "-c", fail], ())
    assert session.request({"prepare": {}}) is None
    assert session.close() == "exit 127: pyenv: python3.13: command not found ... see help"
    assert not session.unreachable
