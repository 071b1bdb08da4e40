"""Host-side ramdisk logic (module_utils/ramdisk.py) and the module, on real files in /dev/shm.

Incidents: i12 (sentinel only after every file verified), i13 (content hashes, not
existence), i14 (clear removes whole step folders, dotfiles too, never outside the root),
i35 (clear and the exclusive purge delete only on a tmpfs/ramfs root and only step folders
carrying our manifest; a disk folder here is one that `stat -f` reports as not a tmpfs).
The real-mount thresholds (i25) and transfers over SSH are in tests/integration/test_ramdisk_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.module_utils import ramdisk as rd  # noqa: E402
from ansible_collections.prng.cluster.plugins.modules import ramdisk as mod  # noqa: E402

from tests.unit import ramdisk_support  # noqa: E402
from tests.unit.ramdisk_support import entry, tmpfs_root  # noqa: E402


def fs_type(path: Path) -> str:
    """The filesystem type as `stat -f` reports it (independent of the code under test)."""
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def root() -> Iterator[Path]:
    """A ramdisk root of its own on the real /dev/shm tmpfs."""
    yield from tmpfs_root("prng-unit")


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A real folder on disk (not tmpfs/ramfs): pytest's tmp_path, else /var/tmp or runs/."""
    for base in (tmp_path, Path("/var/tmp"), ROOT / "runs"):
        if base.is_dir() and os.access(base, os.W_OK) and fs_type(base) not in ("tmpfs", "ramfs"):
            path = base / f"prng-disk-{uuid.uuid4().hex[:10]}"
            path.mkdir()
            yield path
            shutil.rmtree(path, ignore_errors=True)
            return
    pytest.skip("no writable disk (non-tmpfs) folder found")


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    a = tmp_path / "train_history.json"
    a.write_text(json.dumps(list(range(2000))))
    b = tmp_path / "survivors.npz"
    b.write_bytes(os.urandom(300_000))
    return {"train_history.json": a, "survivors.npz": b}


def preload(root: Path, step: str, srcs: dict[str, Path], exclusive: bool = False) -> dict:
    """What the action plugin does, without the transport: plan, prepare, stage, commit."""
    expected = [entry(p) for p in srcs.values()]
    plan = rd.plan_preload(str(root), step, expected, exclusive)
    if plan["complete"]:
        return {"plan": plan, "copied": []}
    rd.prepare_preload(plan)
    staged = {}
    for name in plan["needed"]:
        staged[name] = rd.staged_path(plan["path"], name)
        shutil.copyfile(srcs[name], staged[name])
    res = rd.commit_preload(str(root), step, expected, staged)
    res["plan"] = plan
    return res


def run_module(args: dict) -> dict:
    return ramdisk_support.run_module(mod, args)


# --------------------------------------------------------------------------- preload


def test_i12_manifest_written_last_with_sizes_and_hashes(root: Path, sources: dict[str, Path]) -> None:
    res = preload(root, "step3", sources)
    assert sorted(res["copied"]) == sorted(sources)
    manifest = json.loads((root / "step3" / rd.MANIFEST).read_text())
    assert {f["name"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        n: (entry(p)["size"], entry(p)["sha256"]) for n, p in sources.items()
    }
    for name, src in sources.items():
        assert (root / "step3" / name).read_bytes() == src.read_bytes()
    # Nothing but the data files and the sentinel is left behind.
    assert sorted(os.listdir(root / "step3")) == sorted([*sources, rd.MANIFEST])
    assert rd.status(str(root))["steps"][0]["state"] == "valid"


def test_unchanged_rerun_copies_nothing(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    before = (root / "step3" / rd.MANIFEST).read_bytes()
    plan = rd.plan_preload(str(root), "step3", [entry(p) for p in sources.values()])
    assert plan["complete"] and plan["needed"] == [] and plan["extraneous"] == []
    assert (root / "step3" / rd.MANIFEST).read_bytes() == before


def test_i13_changed_source_only_that_file_recopied(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    sources["train_history.json"].write_text(json.dumps(list(range(2001))))
    res = preload(root, "step3", sources)
    assert res["copied"] == ["train_history.json"]
    assert (root / "step3" / "train_history.json").read_bytes() == sources["train_history.json"].read_bytes()


def test_plan_reads_no_loaded_file_when_the_manifest_answers(
    root: Path, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unchanged and changed sources are both decided from the manifest records (size +
    mtime of the loaded copy unchanged), so a re-run never re-reads large loaded files."""
    preload(root, "step3", sources)
    sources["survivors.npz"].write_bytes(os.urandom(300_000))  # same size, new content
    hashed: list[str] = []
    monkeypatch.setattr(rd, "hash_file", lambda p: hashed.append(p) or "0" * 64)
    plan = rd.plan_preload(str(root), "step3", [entry(p) for p in sources.values()])
    assert plan["needed"] == ["survivors.npz"] and hashed == []


def test_i13_same_size_same_mtime_change_found_by_full_verify(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    dest = root / "step3" / "survivors.npz"
    st = dest.stat()
    data = bytearray(dest.read_bytes())
    data[100] ^= 0xFF
    dest.write_bytes(bytes(data))
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from a quick check
    expected = [entry(p) for p in sources.values()]
    assert rd.plan_preload(str(root), "step3", expected, verify="quick")["complete"]
    full = rd.plan_preload(str(root), "step3", expected, verify="full")
    assert full["needed"] == ["survivors.npz"]
    assert rd.status(str(root), verify="full")["steps"][0]["state"] == "damaged"


def test_tampered_file_with_new_mtime_is_rehashed(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    dest = root / "step3" / "survivors.npz"
    data = bytearray(dest.read_bytes())
    data[0] ^= 0xFF
    dest.write_bytes(bytes(data))
    plan = rd.plan_preload(str(root), "step3", [entry(p) for p in sources.values()])
    assert plan["needed"] == ["survivors.npz"]
    assert rd.status(str(root))["steps"][0]["state"] == "damaged"


@pytest.mark.parametrize("fault", ["corrupt", "truncated", "missing"])
def test_i12_bad_copy_leaves_no_sentinel(root: Path, sources: dict[str, Path], fault: str) -> None:
    preload(root, "step3", sources)
    sources["survivors.npz"].write_bytes(os.urandom(300_000))
    expected = [entry(p) for p in sources.values()]
    plan = rd.plan_preload(str(root), "step3", expected)
    rd.prepare_preload(plan)
    assert not (root / "step3" / rd.MANIFEST).exists()  # not ready from the first change on
    staged = {"survivors.npz": rd.staged_path(plan["path"], "survivors.npz")}
    payload = sources["survivors.npz"].read_bytes()
    if fault == "corrupt":
        Path(staged["survivors.npz"]).write_bytes(bytes([payload[0] ^ 0xFF]) + payload[1:])  # always differs
    elif fault == "truncated":
        Path(staged["survivors.npz"]).write_bytes(payload[:1000])
    message = {
        "corrupt": "corrupt: sha256",
        "truncated": "incomplete: 1000 of 300000",
        "missing": "never arrived",
    }
    with pytest.raises(rd.RamdiskError, match=message[fault]):
        rd.commit_preload(str(root), "step3", expected, staged)
    assert not (root / "step3" / rd.MANIFEST).exists()
    assert not [n for n in os.listdir(root / "step3") if n.startswith(rd.INCOMING)]
    st = rd.status(str(root))["steps"][0]
    assert st["state"] == "incomplete" and "no manifest" in " ".join(st["problems"])


def test_interrupted_update_then_rerun_uses_previous_records(
    root: Path, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    preload(root, "step3", sources)
    sources["train_history.json"].write_text("[1, 2, 3]")
    expected = [entry(p) for p in sources.values()]
    plan = rd.plan_preload(str(root), "step3", expected)
    rd.prepare_preload(plan)
    Path(rd.staged_path(plan["path"], "train_history.json")).write_bytes(b"[1, 2")  # the copy was cut off
    assert rd.status(str(root))["steps"][0]["state"] == "incomplete"
    # The unchanged large file is trusted from the previous manifest's records (no re-read);
    # only the changed one is hashed (new copies always are).
    hashed: list[str] = []
    real_hash = rd.hash_file
    monkeypatch.setattr(rd, "hash_file", lambda p: hashed.append(os.path.basename(p)) or real_hash(p))
    res = preload(root, "step3", sources)
    assert res["copied"] == ["train_history.json"]
    assert "survivors.npz" not in hashed
    assert rd.status(str(root))["steps"][0]["state"] == "valid"
    assert sorted(os.listdir(root / "step3")) == sorted([*sources, rd.MANIFEST])


def test_extra_files_removed_and_exclusive_purges_other_steps(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step2", {"survivors.npz": sources["survivors.npz"]})
    (root / "step2" / ".hidden").write_text("x")
    preload(root, "step3", sources)
    (root / "step3" / "leftover.json").write_text("{}")
    assert (root / "step2").exists()
    res = preload(root, "step3", sources, exclusive=True)
    assert res["plan"]["purge"] == ["step2"] and res["removed"] == ["leftover.json"]
    assert sorted(os.listdir(root)) == ["step3"]


def test_file_names_must_be_plain_and_unique(root: Path, sources: dict[str, Path]) -> None:
    e = entry(sources["survivors.npz"])
    for bad in ("../x", ".manifest.json", "a/b", ""):
        with pytest.raises(rd.RamdiskError, match="refusing"):
            rd.plan_preload(str(root), "step3", [dict(e, name=bad)])
    with pytest.raises(rd.RamdiskError, match="share the name"):
        rd.plan_preload(str(root), "step3", [e, e])
    with pytest.raises(rd.RamdiskError, match="thresholds"):
        rd.plan_preload(str(root), "step3", [e], warn_percent=90, max_percent=80)


# --------------------------------------------------------------------------- clear


def test_i14_clear_all_removes_dotfiles_and_whole_step_dirs(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step2", {"survivors.npz": sources["survivors.npz"]})
    preload(root, "step3", sources)
    (root / "step3" / ".ready_step3").write_text("old sentinel")  # dotfiles inside a step go with it
    (root / ".ready_step3").write_text("old sentinel")  # not a step folder of ours: kept (i35)
    plan = rd.plan_clear(str(root))
    assert sorted(Path(t["path"]).name for t in plan["targets"]) == ["step2", "step3"]
    assert plan["foreign"] == [str(root / ".ready_step3")]
    rd.do_clear(plan)
    assert os.listdir(root) == [".ready_step3"]
    rd.do_clear(rd.plan_clear(str(root), remove_foreign=True))  # the explicit override
    assert os.listdir(root) == []


def test_i14_clear_one_step_keeps_others(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step2", {"survivors.npz": sources["survivors.npz"]})
    preload(root, "step3", sources)
    rd.do_clear(rd.plan_clear(str(root), "step3"))
    assert os.listdir(root) == ["step2"]
    assert rd.plan_clear(str(root), "step3")["targets"] == []  # idempotent


@pytest.mark.parametrize("bad_root", ["/", "", "   ", "relative/path", "/dev/shm", "/etc", "/tmp", "/dev"])
def test_i14_clear_refuses_system_empty_and_relative_roots(bad_root: str) -> None:
    with pytest.raises(rd.RamdiskError, match="refusing"):
        rd.plan_clear(bad_root)


def test_i14_clear_refuses_root_symlinked_to_a_system_dir(tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(rd.RamdiskError, match="resolves to /etc"):
        rd.plan_clear(str(link))


@pytest.mark.parametrize("bad_step", ["..", "../other", "/etc", "a/../..", "."])
def test_i14_clear_refuses_steps_outside_root(root: Path, bad_step: str) -> None:
    with pytest.raises(rd.RamdiskError, match="refusing"):
        rd.plan_clear(str(root), bad_step)


def test_i14_step_symlinked_outside_root_refused_and_target_kept(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    (root / "step9").symlink_to(outside)
    with pytest.raises(rd.RamdiskError, match="outside the ramdisk root"):
        rd.plan_clear(str(root), "step9")
    with pytest.raises(rd.RamdiskError, match="outside the ramdisk root"):
        rd.plan_preload(str(root), "step9", [])
    # A link is never a step of ours: kept; the override removes the link itself, never
    # what it points to.
    assert rd.plan_clear(str(root))["foreign"] == [str(root / "step9")]
    rd.do_clear(rd.plan_clear(str(root), remove_foreign=True))
    assert os.listdir(root) == [] and (outside / "data").read_text() == "keep me"


# --------------------------------------------------------------------------- i35: only ours


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (dotfiles and links too): file content, None for folders."""
    out: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(base) / name
            rel = str(p.relative_to(path))
            out[rel] = os.readlink(p).encode() if p.is_symlink() else (None if p.is_dir() else p.read_bytes())
    return out


def fill_disk_folder(path: Path, sources: dict[str, Path]) -> dict[str, bytes | None]:
    """Someone's data on disk, including a step folder of ours and dotfiles."""
    preload(path, "step3", sources)  # non-exclusive: allowed anywhere (only warns)
    (path / ".bashrc").write_text("precious dotfile")
    (path / "thesis.tex").write_text("precious")
    (path / "photos").mkdir()
    (path / "photos" / ".hidden.jpg").write_bytes(b"\xff\xd8")
    return snapshot(path)


def expected_refusal(given: Path | str, real: Path) -> str:
    found = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,TARGET", "-T", str(real)], capture_output=True, text=True, check=True
    ).stdout.split()
    return (
        f"refusing to clear: ramdisk root {given} (real path {real}) is on {found[0]} (mount {found[1]}), "
        "not a tmpfs/ramfs; nothing removed "
        "(set ramdisk_allow_any_root=true, module option allow_any_root, to override)"
    )


def test_i35_clear_refuses_a_disk_root_and_removes_nothing(disk_dir: Path, sources: dict[str, Path]) -> None:
    assert fs_type(disk_dir) not in ("tmpfs", "ramfs")
    before = fill_disk_folder(disk_dir, sources)
    with pytest.raises(rd.RamdiskError) as err:
        rd.plan_clear(str(disk_dir))
    assert str(err.value) == expected_refusal(disk_dir, disk_dir)
    for args in ({}, {"step": "step3"}, {"_ansible_check_mode": True}):
        res = run_module({"state": "clear", "root": str(disk_dir), **args})
        assert res["failed"] is True and res["msg"] == expected_refusal(disk_dir, disk_dir), res
        assert "\n" not in res["msg"]
    assert snapshot(disk_dir) == before


def test_i35_clear_refuses_a_shm_symlink_to_a_disk_folder(
    root: Path, disk_dir: Path, sources: dict[str, Path]
) -> None:
    before = fill_disk_folder(disk_dir, sources)
    link = root / "prng"
    link.symlink_to(disk_dir)
    assert fs_type(root) == "tmpfs" and fs_type(link) not in ("tmpfs", "ramfs")  # stat -f follows it
    res = run_module({"state": "clear", "root": str(link)})
    assert res["failed"] is True and res["msg"] == expected_refusal(link, disk_dir), res
    assert snapshot(disk_dir) == before and link.is_symlink()


def test_i35_missing_root_on_tmpfs_clears_nothing_missing_root_on_disk_refused(
    root: Path, disk_dir: Path
) -> None:
    res = run_module({"state": "clear", "root": str(root / "nope")})
    assert res["changed"] is False and res["removed"] == []
    assert res["msg"] == f"ramdisk root {root / 'nope'} does not exist: nothing to clear"
    res = run_module({"state": "clear", "root": str(disk_dir / "nope")})
    assert res["failed"] is True and res["msg"].startswith(
        f"refusing to clear: ramdisk root {disk_dir / 'nope'} "
    )


def test_i35_clear_removes_only_step_folders_carrying_our_manifest(
    root: Path, sources: dict[str, Path]
) -> None:
    preload(root, "step2", {"survivors.npz": sources["survivors.npz"]})
    preload(root, "step3", sources)
    (root / ".keep").write_text("dotfile")
    (root / "notes.txt").write_text("foreign file")
    (root / "mydata").mkdir()
    (root / "mydata" / "x.bin").write_bytes(b"x")
    (root / "fake").mkdir()
    (root / "fake" / rd.MANIFEST).write_text('{"hello": 1}')  # not our manifest
    (root / "copy").mkdir()  # a manifest of ours, but for another step (copied by hand)
    shutil.copy(root / "step2" / rd.MANIFEST, root / "copy" / rd.MANIFEST)
    (root / "alias").symlink_to(root / "step3")  # a link is never a step of ours
    foreign = [".keep", "alias", "copy", "fake", "mydata", "notes.txt"]
    kept = {k: v for k, v in snapshot(root).items() if k.split("/")[0] in foreign}

    res = run_module({"state": "clear", "root": str(root), "_ansible_check_mode": True})
    assert res["removed"] == [str(root / "step2"), str(root / "step3")] and (root / "step2").exists()
    res = run_module({"state": "clear", "root": str(root)})
    assert res["changed"] is True and res["removed"] == [str(root / "step2"), str(root / "step3")]
    assert res["foreign"] == [str(root / n) for n in foreign]
    assert sorted(os.listdir(root)) == foreign
    assert snapshot(root) == kept
    assert (root / "notes.txt").read_text() == "foreign file"

    # One step: a folder without our manifest is not removed either.
    res = run_module({"state": "clear", "root": str(root), "step": "mydata"})
    assert res["changed"] is False and res["foreign"] == [str(root / "mydata")]
    assert (root / "mydata" / "x.bin").exists()

    # The explicit override removes everything (links as links).
    res = run_module({"state": "clear", "root": str(root), "remove_foreign": True})
    assert res["changed"] is True and os.listdir(root) == []


def test_i35_exclusive_preload_purges_only_our_steps(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step2", {"survivors.npz": sources["survivors.npz"]})
    (root / ".keep").write_text("dotfile")
    (root / "mydata").mkdir()
    plan = rd.plan_preload(str(root), "step3", [entry(p) for p in sources.values()], exclusive=True)
    assert plan["purge"] == ["step2"] and plan["foreign"] == [".keep", "mydata"]
    assert any("left alone" in w and "mydata" in w for w in plan["warnings"])
    preload(root, "step3", sources, exclusive=True)
    assert sorted(os.listdir(root)) == [".keep", "mydata", "step3"]


def test_i35_exclusive_preload_on_a_disk_root_refuses_to_purge(
    disk_dir: Path, sources: dict[str, Path]
) -> None:
    preload(disk_dir, "step2", {"survivors.npz": sources["survivors.npz"]})
    before = snapshot(disk_dir)
    expected = [entry(p) for p in sources.values()]
    with pytest.raises(
        rd.RamdiskError, match=r"^refusing to remove the other steps \(step2\): ramdisk root "
    ):
        rd.plan_preload(str(disk_dir), "step3", expected, exclusive=True)
    assert snapshot(disk_dir) == before
    plan = rd.plan_preload(str(disk_dir), "step3", expected, exclusive=True, allow_any_root=True)
    assert plan["purge"] == ["step2"]


def test_i35_allow_any_root_still_removes_only_our_steps(disk_dir: Path, sources: dict[str, Path]) -> None:
    fill_disk_folder(disk_dir, sources)
    res = run_module({"state": "clear", "root": str(disk_dir), "allow_any_root": True})
    assert res["removed"] == [str(disk_dir / "step3")]
    assert sorted(os.listdir(disk_dir)) == [".bashrc", "photos", "thesis.tex"]


def test_unfinished_first_preload_is_still_ours(root: Path, sources: dict[str, Path]) -> None:
    """A folder the preload created carries an (empty, never ready) manifest from the start,
    so a clear removes it even when the first load never finished."""
    plan = rd.plan_preload(str(root), "step3", [entry(p) for p in sources.values()])
    rd.prepare_preload(plan)
    Path(rd.staged_path(plan["path"], "survivors.npz")).write_bytes(b"partial")
    assert rd.status(str(root))["steps"][0]["state"] == "incomplete"
    assert rd.is_our_step(str(root), "step3")
    rd.do_clear(rd.plan_clear(str(root)))
    assert os.listdir(root) == []


# --------------------------------------------------------------------------- status


def test_status_states(root: Path, sources: dict[str, Path]) -> None:
    assert rd.status(str(root))["steps"] == []
    assert rd.status(str(root), "step3")["steps"][0]["state"] == "absent"
    preload(root, "step3", sources)
    expected = [entry(p) for p in sources.values()]
    st = rd.status(str(root), "step3", expected)
    assert st["steps"][0]["state"] == "valid" and st["steps"][0]["bytes"] == sum(e["size"] for e in expected)
    sources["train_history.json"].write_text("[]")
    st = rd.status(str(root), "step3", [entry(p) for p in sources.values()])["steps"][0]
    assert st["state"] == "stale" and st["stale_files"] == ["train_history.json"]
    os.unlink(root / "step3" / "survivors.npz")
    assert rd.status(str(root), "step3")["steps"][0]["state"] == "damaged"
    shm = rd.status(str(root))["shm"]
    assert shm["size_bytes"] > 0 and shm["mount"] in (str(root.parent.parent), "/dev/shm", "/tmp", "/")


def test_shm_info_reads_the_real_mount() -> None:
    info = rd.shm_info("/dev/shm/does/not/exist/yet")
    st = os.statvfs("/dev/shm")
    assert info["mount"] == "/dev/shm" and info["fstype"] == "tmpfs"
    assert info["size_bytes"] == st.f_blocks * st.f_frsize


# --------------------------------------------------------------------------- the module


def test_module_status_and_clear(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    res = run_module({"state": "status", "root": str(root)})
    assert res["steps"][0]["state"] == "valid" and res["changed"] is False
    assert res["rows"][0].startswith("step3") and "valid" in res["rows"][0]
    res = run_module(
        {"state": "clear", "root": str(root), "_ansible_check_mode": True, "_ansible_diff": True}
    )
    assert res["changed"] is True and res["removed"] == [str(root / "step3")]
    assert "step3" in res["diff"]["before"] and (root / "step3").exists()  # check mode: kept
    res = run_module({"state": "clear", "root": str(root)})
    assert res["changed"] is True and not (root / "step3").exists()
    res = run_module({"state": "clear", "root": str(root)})
    assert res["changed"] is False


@pytest.mark.parametrize(
    "args",
    [
        {"root": "/"},
        {"root": ""},
        {"root": str(Path("/dev/shm"))},
        {"root": "/dev/shm/prng-x", "step": "../../etc"},
    ],
)
def test_module_clear_refusals(args: dict) -> None:
    res = run_module({"state": "clear", **args})
    assert res["failed"] is True and res["msg"].startswith("refusing")


def test_module_preload_check_mode_and_diff_change_nothing(root: Path, sources: dict[str, Path]) -> None:
    preload(root, "step3", sources)
    old = entry(sources["train_history.json"])["sha256"]
    sources["train_history.json"].write_text("[9]")
    manifest = [entry(p) for p in sources.values()]
    res = run_module(
        {
            "state": "preload",
            "root": str(root),
            "step": "step3",
            "_manifest": manifest,
            "_ansible_check_mode": True,
            "_ansible_diff": True,
        }
    )
    assert res["changed"] is True and res["needed"] == ["train_history.json"]
    new = entry(sources["train_history.json"])["sha256"]
    assert old in res["diff"]["before"] and new not in res["diff"]["before"] and new in res["diff"]["after"]
    assert (root / "step3" / rd.MANIFEST).exists()  # check mode keeps the sentinel
