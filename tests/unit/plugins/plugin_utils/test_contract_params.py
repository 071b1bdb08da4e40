"""The run contract on the controller (plugins/plugin_utils/fanout/contract.py): parameters
typed and range-checked, host variables against the cluster_host role's argument spec,
settings, and the run identity that a resume must match (i30, i32, i33, i37)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import contract  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.contract import ContractError  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout.scheduler import Settings  # noqa: E402

DEMO = REPO / "demo"
SCORE = {
    "survivors": str(DEMO / "survivors.json"),
    "train_history": str(DEMO / "train_history.json"),
    "holdout_history": str(DEMO / "holdout_history.json"),
    "family": "java_lcg",
}


def test_score_params_typed_from_strings_with_defaults() -> None:
    out = contract.check_params("score", dict(SCORE, mod="997", chunk_size="250", timeout="60"))
    assert out["mod"] == 997 and out["chunk_size"] == 250 and out["timeout"] == 60.0
    assert contract.check_params("score", SCORE)["mod"] == 1000  # default


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("chunk_size", "-5", "chunk_size: expected a value >= 1, got -5"),
        ("chunk_size", "0", "chunk_size: expected a value >= 1, got 0"),
        ("chunk_size", "abc", "chunk_size: expected an integer, got 'abc'"),
        ("chunk_size", "2.5", "chunk_size: expected an integer, got '2.5'"),
        ("mod", "1", "mod: expected a value >= 2, got 1"),
        ("timeout", "abc", "timeout: expected a number, got 'abc'"),
        ("timeout", "0", "timeout: expected a value >= 1, got 0.0"),
        ("timeout", "1e-9", "timeout: expected a value >= 1, got 1e-09"),
        ("timeout", "nan", "timeout: expected a finite number, got 'nan'"),
        ("survivors", "/nonexistent/s.json", "survivors: file not found: /nonexistent/s.json"),
    ],
)
def test_i32_bad_score_parameters_are_refused_with_one_line(key: str, value: str, message: str) -> None:
    with pytest.raises(ContractError) as err:
        contract.check_params("score", dict(SCORE, **{key: value}))
    assert str(err.value) == message


def test_i32_unknown_and_missing_parameters() -> None:
    with pytest.raises(ContractError, match=r"params: unknown globals_file for a score plan"):
        contract.check_params("score", dict(SCORE, globals_file="x"))
    missing = {k: v for k, v in SCORE.items() if k != "family"}
    with pytest.raises(ContractError, match=r"^family: required for a score plan, not given$"):
        contract.check_params("score", missing)


def test_i32_sieve_ranges() -> None:
    sieve = {"history": str(DEMO / "history.json"), "family": "java_lcg", "window": "32", "chunk_size": "100"}
    ok = contract.check_params("sieve", dict(sieve, seed_start="0", seed_stop="1000"))
    assert ok["seed_stop"] == 1000 and ok["direction"] == "forward"
    with pytest.raises(ContractError, match=r"^seed_stop: expected a value > seed_start \(10\), got 5$"):
        contract.check_params("sieve", dict(sieve, seed_start="10", seed_stop="5"))
    with pytest.raises(ContractError, match=r"^skip_max: expected a value >= skip_min \(3\), got 1$"):
        contract.check_params("sieve", dict(sieve, seed_start=0, seed_stop=9, skip_min=3, skip_max=1))
    with pytest.raises(ContractError, match=r"^threshold: expected a value <= 1, got 1.5$"):
        contract.check_params("sieve", dict(sieve, seed_start=0, seed_stop=9, threshold="1.5"))
    expected = r"^direction: expected one of forward, bidirectional, reversed_window, got 'both'$"
    with pytest.raises(ContractError, match=expected):
        contract.check_params("sieve", dict(sieve, seed_start=0, seed_stop=9, direction="both"))


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"gpu_count": "twelve"}, "host h: gpu_count: expected int, got 'twelve'"),
        ({"max_concurrent_jobs": 0}, "host h: max_concurrent_jobs: expected a value in [1, 1024], got 0"),
        ({"max_concurrent_jobs": -1}, "host h: max_concurrent_jobs: expected a value in [1, 1024], got -1"),
        ({"gpu_type": "intel"}, "host h: gpu_type: expected one of cpu, cuda, rocm, got 'intel'"),
        ({"memory_margin_pct": 120}, "host h: memory_margin_pct: expected a value in [0, 95], got 120.0"),
        ({"start_stagger_seconds": "soon"}, "host h: start_stagger_seconds: expected float, got 'soon'"),
    ],
)
def test_i32_bad_host_variables_are_refused_naming_host_and_variable(hostvars: dict, message: str) -> None:
    with pytest.raises(ContractError) as err:
        contract.check_host("h", hostvars)
    assert str(err.value) == message


def test_host_variables_defaults_come_from_the_role_spec() -> None:
    out = contract.check_host("h", {"gpu_count": "2", "gpu_type": "cuda"})
    assert out["gpu_count"] == 2 and out["max_concurrent_jobs"] == 1 and out["prng_home"] == "~/prng-cluster"


def test_i37_role_defaults_match_the_spec_the_fanout_reads() -> None:
    """One definition: the cluster_host role's defaults equal its argument spec's defaults,
    which the fan-out applies to hosts whose inventory does not set a variable."""
    spec = contract.host_spec()
    defaults = yaml.safe_load((REPO / "roles" / "cluster_host" / "defaults" / "main.yml").read_text())
    for key, option in spec.items():
        if "default" in option:
            assert str(defaults[key]) == str(option["default"]), key
    assert not (REPO / "playbooks" / "group_vars").exists(), "playbook group_vars outrank the inventory (i37)"


def test_settings_typed_and_checked() -> None:
    assert contract.check_settings({"max_attempts": "5"}, Settings).max_attempts == 5
    for raw, message in (
        ({"max_attempts": 0}, "settings.max_attempts: expected a value >= 1, got 0"),
        ({"transport": "pool"}, "settings: unknown transport"),  # one transport since issue 14
        ({"nope": 1}, "settings: unknown nope"),
        ({"ema_alpha": 2}, "settings.ema_alpha: expected a value in (0, 1], got 2.0"),
    ):
        with pytest.raises(ContractError) as err:
            contract.check_settings(raw, Settings)
        assert str(err.value).startswith(message)


def test_i30_identity_names_what_changed() -> None:
    old = {
        "plan": "score",
        "params": {"mod": 1000, "family": "java_lcg"},
        "inputs": {"survivors": "a" * 64},
        "worker": {"code_sha256": "c" * 64},
    }
    new = {
        "plan": "score",
        "params": {"mod": 997, "family": "java_lcg"},
        "inputs": {"survivors": "b" * 64},
        "worker": {"code_sha256": "d" * 64},
    }
    changes = contract.identity_changes(old, new)
    assert "mod 1000 -> 997" in changes
    assert "input survivors changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)" in changes
    assert "worker code_sha256 cccccccccccc -> dddddddddddd" in changes
    assert contract.identity_changes(old, old) == []


# -- found by trying it as an operator would (issue 9, second pass) ------------------------
SIEVE = {
    "history": str(DEMO / "history.json"),
    "family": "java_lcg",
    "window": "32",
    "chunk_size": "100",
    "seed_start": "0",
    "seed_stop": "1000",
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # `-e threshold=` used to mean "the contract's default" (0.01), not the playbook's (0.03)
        ("threshold", "", "threshold: expected a number, got an empty value"),
        # and `-e direction=` ran a forward sieve where the playbook's default is bidirectional
        (
            "direction",
            " ",
            "direction: expected one of forward, bidirectional, reversed_window, got an empty value",
        ),
        ("offset", "", "offset: expected an integer, got an empty value"),
        # float(2**64 - 1) == 2**64: a seed of 2**64 passed the float bound; the message named seed_stop
        ("seed_start", str(2**64), f"seed_start: expected a value <= {2**64 - 1}, got {2**64}"),
        (
            "shard",
            "\u00b2/3",
            "shard: expected K/N with 1 <= K <= N (shard K of N, e.g. 1/2), got '\u00b2/3'",
        ),
    ],
)
def test_odd_sieve_values_are_refused_naming_the_parameter(key: str, value: str, message: str) -> None:
    with pytest.raises(ContractError) as err:
        contract.check_params("sieve", dict(SIEVE, **{key: value}))
    assert str(err.value) == message


def test_a_folder_or_unreadable_file_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as err:
        contract.check_params("score", dict(SCORE, survivors=str(tmp_path)))
    assert str(err.value) == f"survivors: {tmp_path} is a folder, expected a file"  # not "file not found"


def test_run_dir_that_is_a_file_is_refused_before_any_host(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("an operator's file\n")
    assert contract.check_run_dir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    with pytest.raises(ContractError, match=rf"^run_dir: {afile} is a file, expected a folder"):
        contract.check_run_dir(str(afile))
    with pytest.raises(ContractError, match=rf"^run_dir: {afile}/x lies under {afile}, which is a file"):
        contract.check_run_dir(str(afile / "x"))
    assert afile.read_text() == "an operator's file\n"


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        # NaN compares false both ways: it passed the range, then sizing died in int(nan)
        ({"memory_margin_pct": "nan"}, "host h: memory_margin_pct: expected a value in [0, 95], got nan"),
        (
            {"start_stagger_seconds": "nan"},
            "host h: start_stagger_seconds: expected a value in [0, 600], got nan",
        ),
        # Ansible's validator takes a boolean for an int: `gpu_count: yes` ran with 1 GPU
        ({"gpu_count": True}, "host h: gpu_count: expected int, got True"),
        ({"max_concurrent_jobs": False}, "host h: max_concurrent_jobs: expected int, got False"),
        ({"worker_device": "gpu0"}, "host h: worker_device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"),
        ({"gpu_exclude": [-1]}, "host h: gpu_exclude: expected GPU indexes in [0, 63], got -1"),
    ],
)
def test_odd_host_variables_are_refused(hostvars: dict, message: str) -> None:
    with pytest.raises(ContractError) as err:
        contract.check_host("h", hostvars)
    assert str(err.value) == message
    assert contract.check_host("h", {"worker_device": "cuda:1"})["worker_device"] == "cuda:1"


def test_settings_given_as_a_string_say_what_was_found() -> None:
    with pytest.raises(ContractError) as err:
        contract.check_settings(type("_Tagged", (str,), {})("abc"), Settings)  # Ansible's str subclass
    assert str(err.value) == "settings: expected a mapping (e.g. {\"max_attempts\": 5}), got 'abc'"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not a readable JSON file"),
        (
            '{"models": {}}',
            'no models, expected {"models": {<backend>: {"base_mb": N, "bytes_per_seed_draw": N}}}',
        ),
        ('{"models": {"numpy": {"base_mb": "x", "bytes_per_seed_draw": 0}}}', "models.numpy.base_mb is 'x'"),
    ],
)
def test_a_bad_memory_model_is_refused_before_the_preflight(
    tmp_path: Path, content: str, message: str
) -> None:
    """It was read only when sizing the slots, after the hosts were preloaded: a raw
    `Expecting value: line 1 column 1 (char 0)` with no file named."""
    model = tmp_path / "memory_model.json"
    model.write_text(content)
    params = contract.check_params("score", dict(SCORE, memory_model=str(model)))
    with pytest.raises(ContractError) as err:
        contract.check_inputs("score", params)
    assert str(err.value).startswith(f"memory_model {model}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
