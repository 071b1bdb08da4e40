"""The fan-out checks a run's input content once per content: the verdict on the same bytes,
parameters and worker code is reused (a step playbook checks its contract twice, a resume
again), and any change of content or parameters is checked anew. Real demo files; the
worker package's check is wrapped only to count its calls."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.prng.cluster.plugins.action import fanout as action  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import contract  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.journal import hash_inputs  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.plans import make_plan  # noqa: E402


def test_the_input_check_runs_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    calls: list[str] = []
    real = contract.check_inputs

    def counted(kind: str, params: dict[str, Any]) -> dict[str, Any]:
        calls.append(kind)
        return real(kind, params)

    monkeypatch.setattr(contract, "check_inputs", counted)
    for name in ("survivors.json", "train_history.json", "holdout_history.json"):
        shutil.copy(ROOT / "demo" / name, tmp_path / name)
    raw = {
        "survivors": str(tmp_path / "survivors.json"),
        "train_history": str(tmp_path / "train_history.json"),
        "holdout_history": str(tmp_path / "holdout_history.json"),
        "family": "java_lcg",
        "mod": 1000,
        "chunk_size": 100,
    }

    def check(**change: Any) -> dict[str, Any]:
        params = contract.check_params("score", dict(raw, **change))
        inputs = hash_inputs(make_plan("score", params).inputs())
        return action._checked_inputs("score", params, contract.identity("score", params, inputs))

    first = check()
    assert check() == first and calls == ["score"]  # the same run again: the verdict is reused
    check(chunk_size=50)
    assert len(calls) == 2  # another parameter: checked again
    (tmp_path / "holdout_history.json").write_text("[1, 2, 5000]")  # 5000 is not below mod 1000
    with pytest.raises(contract.ContractError, match="holdout_history"):
        check()  # new content: checked again, and a bad verdict is never kept
    with pytest.raises(contract.ContractError, match="holdout_history"):
        check()
    assert len(calls) == 4
