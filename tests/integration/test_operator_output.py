"""What an operator reads at default verbosity (no -v, no --diff), on the embedded local
inventory: ramdisk_clear.yml says per host which steps it removed and how much it freed,
then prints the status table, and every ramdisk playbook's last task states its result in
one line. A root of its own under the real /dev/shm keeps other work's data out of it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO = REPO / "demo"


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path("/dev/shm") / f"prng-optest-{uuid.uuid4().hex[:10]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def playbook(name: str, extra: dict, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1")
    for key in (
        "ANSIBLE_CONFIG",
        "ANSIBLE_CALLBACK_RESULT_FORMAT",
        "ANSIBLE_VERBOSITY",
        "ANSIBLE_DIFF_ALWAYS",
    ):
        env.pop(key, None)  # the checkout's ansible.cfg, as an operator runs it
    argv = [str(BIN / "ansible-playbook"), f"playbooks/{name}", "-e", json.dumps(extra), *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def tasks(stdout: str) -> list[tuple[str, str]]:
    """(task name, its output) in order."""
    parts = re.split(r"^TASK \[(.*?)\] \**$", stdout, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def last_line(stdout: str) -> str:
    """The last task's message: one line (a YAML block of one line)."""
    name, out = [t for t in tasks(stdout.split("PLAY RECAP")[0]) if t[0] != "Gathering Facts"][-1]
    body = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert name == "Result" and body[:2] == ["ok: [localhost] =>", "msg: |-"], out
    assert len(body) == 3, f"not one line: {body}"
    return body[2]


def test_clear_says_what_it_removed_and_freed_then_the_table(root: Path) -> None:
    base = {"ramdisk_root": str(root)}
    step3 = [str(DEMO / "train_history.json"), str(DEMO / "holdout_history.json")]
    res = playbook("ramdisk_preload.yml", dict(base, ramdisk_step="step3", ramdisk_files=step3))
    assert res.returncode == 0, res.stdout[-3000:]
    sent = sum(os.path.getsize(p) for p in step3)
    assert last_line(res.stdout) == (
        f"ramdisk preload step3: ready on 1 host(s) ({sent / 1024:.1f} KiB sent to 1, 0 already had it);"
        " failed or unreachable: none"
    )
    res = playbook(
        "ramdisk_preload.yml",
        dict(
            base,
            ramdisk_step="step1",
            ramdisk_orchestrated=True,
            ramdisk_files=[str(DEMO / "survivors.json")],
        ),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    res = playbook("ramdisk_status.yml", base)
    assert last_line(res.stdout) == "ramdisk status: 2 step(s) on 1 host(s) (2 valid); no answer from none"

    sizes = {s: sum(p.stat().st_size for p in (root / s).iterdir()) for s in ("step1", "step3")}
    res = playbook("ramdisk_clear.yml", base)
    assert res.returncode == 0, res.stdout[-3000:]
    out = tasks(res.stdout)
    names = [n for n, _ in out]
    # per host: the steps removed, each with its size, and the bytes freed; at default verbosity
    said = out[names.index("Say what was removed and freed on each host")][1]
    kib = {s: f"{b / 1024:.1f} KiB" for s, b in sizes.items()}
    total = f"{sum(sizes.values()) / 1024:.1f} KiB"
    line = next(ln.strip() for ln in said.splitlines() if ln.strip().startswith("localhost: "))
    assert line.startswith(
        f"localhost: removed step1 ({kib['step1']}), step3 ({kib['step3']}): {total} freed;"
    )
    assert re.search(r"; /dev/shm now [\d.]+ \w?i?B of [\d.]+ GiB used \([\d.]+%\)$", line), line
    # then the status table, after the clear
    table_at = next(
        i for i, n in enumerate(names) if n.startswith("prng.cluster.ramdisk : Print the ramdisk table")
    )
    assert table_at > names.index("Say what was removed and freed on each host")
    table = out[table_at][1]
    assert "- host             step         files         MiB  state      shm used/size" in table
    assert re.search(r"- localhost +- +0 +0\.0  empty ", table), table
    # and the result in one line, last
    assert last_line(res.stdout) == (
        f"ramdisk clear on 1 host(s): 2 step(s) removed, {total} freed; failed or unreachable: none"
    )
    assert not root.exists() or os.listdir(root) == []

    # nothing left: it says so
    res = playbook("ramdisk_clear.yml", base)
    assert "localhost: nothing to remove; /dev/shm now " in res.stdout
    assert last_line(res.stdout) == (
        "ramdisk clear on 1 host(s): 0 step(s) removed, 0 Bytes freed; failed or unreachable: none"
    )
