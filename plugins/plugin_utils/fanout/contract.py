# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""The run contract: every parameter, input and host variable a run depends on, checked on
the controller before any host is touched (i31, i32, i33).

- `check_params(kind, raw)`: typed, range-checked parameters of a plan, from whatever
  Ansible handed over (strings from `-e`, ints from YAML). Unknown names are refused.
- `check_inputs(kind, params)`: the inputs' content, through the worker package's own
  checks (`prng_workers.contract`), once for the whole run instead of once per job.
- `check_host(name, hostvars)`: a host's variables against the `cluster_host` role's
  argument spec (the same spec the role validates on the host), plus ranges.
- `identity(kind, params, inputs)`: everything that changes results; a resume with any
  of it changed is refused and the difference named (i30).

Every failure is a `ContractError` whose message is one line: what (file, host or
variable), what was found, what is expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import yaml


class ContractError(ValueError):
    """Bad input, parameter or host variable; the message is one line for the operator."""


def _shown(value: Any) -> str:
    """A value as the operator typed it (Ansible hands over its own str/list subclasses)."""
    for plain in (str, list, dict, int, float):
        if isinstance(value, plain) and not isinstance(value, bool):
            return repr(plain(value))[:120]
    return repr(value)[:120]


# -- typed values ----------------------------------------------------------------------
def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ContractError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise ContractError(f"{name}: expected an integer, got {value!r}") from None


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ContractError(f"{name}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ContractError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ContractError(f"{name}: expected a finite number, got {value!r}")
    return out


def _str(name: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ContractError(f"{name}: expected a string, got {value!r}")
    return str(value).strip()


def _path(name: str, value: Any) -> str:
    text = _str(name, value)
    if not text:
        raise ContractError(f"{name}: expected a file path, got an empty value")
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise ContractError(f"{name}: {path} is a folder, expected a file")
    if not os.path.isfile(path):
        raise ContractError(f"{name}: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ContractError(f"{name}: {path} is not readable by this user, expected a readable file")
    return path


def _paths(name: str, value: Any) -> List[str]:
    """A list of file paths (a comma-separated string from -e is split)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ContractError(f"{name}: expected a list of file paths, got {value!r}")
    return [_path(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _shard(name: str, value: Any) -> str:
    """`K/N`: this run is shard K of N of one step (docs/fanout.md, "Shards")."""
    text = value.replace(" ", "") if isinstance(value, str) else ""
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text)  # ASCII digits: str.isdigit also takes "²"
    if match and 1 <= int(match.group(1)) <= int(match.group(2)):
        return f"{int(match.group(1))}/{int(match.group(2))}"
    raise ContractError(f"{name}: expected K/N with 1 <= K <= N (shard K of N, e.g. 1/2), got {value!r}")


@dataclass(frozen=True)
class Param:
    """One plan parameter: its type, bounds, default and whether it changes results."""

    kind: str  # int, float, str, path, paths, shard
    required: bool = False
    default: Any = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    choices: Tuple[str, ...] = ()
    identity: bool = False  # part of the run's identity (results depend on it)

    def convert(self, name: str, value: Any) -> Any:
        convert: Dict[str, Callable[[str, Any], Any]] = {
            "int": _int,
            "float": _float,
            "str": _str,
            "path": _path,
            "paths": _paths,
            "shard": _shard,
        }
        out = convert[self.kind](name, value)
        if self.choices and out not in self.choices:
            raise ContractError(f"{name}: expected one of {', '.join(self.choices)}, got {out!r}")
        if self.low is not None and out < self.low:
            raise ContractError(f"{name}: expected a value >= {_fmt(self.low)}, got {out!r}")
        if self.high is not None and out > self.high:
            raise ContractError(f"{name}: expected a value <= {_fmt(self.high)}, got {out!r}")
        if self.above is not None and out <= self.above:
            raise ContractError(f"{name}: expected a value > {_fmt(self.above)}, got {out!r}")
        return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# An int, not a float: float(2**64 - 1) == 2**64, so a seed of 2**64 would pass a float bound.
SEED_SPACE = 2**64 - 1
TIMEOUT = Param("float", default=3600.0, low=1)  # seconds; under one no worker even starts
# Part of the identity: a resume with another shard is refused, the difference named.
SHARD = Param("shard", identity=True)

PARAMS: Dict[str, Dict[str, Param]] = {
    "score": {
        "survivors": Param("path", required=True),
        "train_history": Param("path", required=True),
        "holdout_history": Param("path", required=True),
        "family": Param("str", required=True, identity=True),
        "mod": Param("int", default=1000, low=2, identity=True),
        "chunk_size": Param("int", default=1000, low=1, identity=True),
        "memory_model": Param("path"),
        "timeout": TIMEOUT,
        "shard": SHARD,
    },
    "sieve": {
        "history": Param("path", required=True),
        "family": Param("str", required=True, identity=True),
        "direction": Param(
            "str", default="forward", choices=("forward", "bidirectional", "reversed_window"), identity=True
        ),
        "reverse_window": Param("int", default=0, low=0, identity=True),
        "seed_start": Param("int", required=True, low=0, high=SEED_SPACE, identity=True),
        "seed_stop": Param("int", required=True, low=1, high=SEED_SPACE + 1, identity=True),
        "chunk_size": Param("int", required=True, low=1, identity=True),
        "window": Param("int", required=True, low=1, identity=True),
        "offset": Param("int", default=0, low=0, identity=True),
        "skip_min": Param("int", default=0, low=0, identity=True),
        "skip_max": Param("int", default=0, low=0, identity=True),
        "threshold": Param("float", default=0.01, above=0, high=1, identity=True),
        "mod": Param("int", default=1000, low=2, identity=True),
        "sessions": Param("str", default="both", choices=("midday", "evening", "both"), identity=True),
        # sizes the slots only (as Step 3's): not part of the identity; not given: sizing.default_memory_model
        "memory_model": Param("path"),
        "timeout": TIMEOUT,
        "shard": SHARD,
    },
    "list": {
        "jobs_file": Param("path", required=True),
        "files": Param("paths", default=[]),
        "python": Param("str", default="{worker_bin}/python"),
        "timeout": TIMEOUT,
        "shard": SHARD,
    },
}


def check_params(kind: str, raw: Dict[str, Any]) -> Dict[str, Any]:
    """Typed, range-checked parameters of plan `kind`; defaults filled in."""
    if kind not in PARAMS:
        raise ContractError(f"plan: expected one of {', '.join(sorted(PARAMS))}, got {kind!r}")
    if not isinstance(raw, dict):
        raise ContractError(f"params: expected a mapping, got {_shown(raw)}")
    spec = PARAMS[kind]
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise ContractError(
            f"params: unknown {', '.join(unknown)} for a {kind} plan (known: {', '.join(sorted(spec))})"
        )
    out: Dict[str, Any] = {}
    for name, param in spec.items():
        value = raw.get(name)
        empty = isinstance(value, str) and not value.strip()
        if empty and param.default is not None and param.kind != "paths":
            # `-e threshold=` is a typo, not "the default": the playbook's default may differ
            # from this one (Step 1's direction is bidirectional there, forward here).
            raise ContractError(f"{name}: expected {_expected(param)}, got an empty value")
        if value is None or empty:
            if param.required:
                raise ContractError(f"{name}: required for a {kind} plan, not given")
            if param.default is not None:
                out[name] = param.default
            continue
        out[name] = param.convert(name, value)
    if kind == "sieve":
        if out["seed_stop"] <= out["seed_start"]:
            raise ContractError(
                f"seed_stop: expected a value > seed_start ({out['seed_start']}), got {out['seed_stop']}"
            )
        if out["skip_max"] < out["skip_min"]:
            raise ContractError(
                f"skip_max: expected a value >= skip_min ({out['skip_min']}), got {out['skip_max']}"
            )
    return out


def _expected(param: Param) -> str:
    if param.choices:
        return "one of " + ", ".join(param.choices)
    return {"int": "an integer", "float": "a number", "paths": "a list of file paths"}.get(
        param.kind, "a value"
    )


def check_run_dir(value: Any) -> str:
    """The run folder: absolute; a folder or not there yet, never a file (it is created later,
    after the preflight has touched the hosts: a file there must be found before)."""
    text = _str("run_dir", value)
    if not text:
        raise ContractError("run_dir: expected a folder path, got an empty value")
    path = os.path.abspath(os.path.expanduser(text))
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is" if probe == path else f"lies under {probe}, which is"
        raise ContractError(f"run_dir: {path} {what} a file, expected a folder (or a path to create)")
    return path


def check_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise ContractError(f"{name}: expected true or false, got {value!r}")


# Settings that must be >= 1 / > 0 / in (0, 1]; the rest >= 0.
_AT_LEAST_ONE = ("max_attempts", "max_host_failures", "max_jobs_per_dispatch")
_POSITIVE = ("target_dispatch_seconds", "poll_seconds", "progress_interval")


def check_settings(raw: Any, settings_cls: Any) -> Any:
    """The scheduler's knobs (`settings:`), typed and in range; unknown names refused."""
    if not isinstance(raw, dict):
        raise ContractError(f'settings: expected a mapping (e.g. {{"max_attempts": 5}}), got {_shown(raw)}')
    defaults = settings_cls()
    known = sorted(settings_cls.__dataclass_fields__)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ContractError(f"settings: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        name = f"settings.{key}"
        default = getattr(defaults, key)
        if isinstance(default, str):
            out: Any = _str(name, value)
        elif isinstance(default, bool):
            out = check_bool(name, value)
        elif isinstance(default, int):
            out = Param("int", low=1 if key in _AT_LEAST_ONE else 0).convert(name, value)
        else:
            out = Param(
                "float", above=0 if key in _POSITIVE else None, low=None if key in _POSITIVE else 0
            ).convert(name, value)
            if key == "ema_alpha" and not 0 < out <= 1:
                raise ContractError(f"{name}: expected a value in (0, 1], got {out!r}")
        values[key] = out
    return settings_cls(**values)


# -- inputs ------------------------------------------------------------------------------
def _workers() -> Any:
    try:
        from prng_workers import contract  # the controller runs the same checks as the workers
        from prng_workers.errors import InputError
    except ImportError as exc:
        raise ContractError(
            f"the controller's Python cannot import the worker package ({exc}): run make setup"
        ) from None
    return contract, InputError


def check_inputs(kind: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Content checks of every input, once per run; returns what the worker package found
    (counts, draws). A list plan's jobs file is checked by the planner."""
    if kind == "list":
        return {}
    contract, input_error = _workers()
    if params.get("memory_model"):  # Step 3's and Step 1's
        check_memory_model(params["memory_model"])
    try:
        if kind == "score":
            return contract.check_score_inputs(
                params["survivors"],
                params["train_history"],
                params.get("holdout_history"),
                params["family"],
                params["mod"],
            )
        return contract.check_sieve_inputs(
            params["history"],
            params["family"],
            params["mod"],
            params["window"],
            params["offset"],
            params["skip_min"],
            params["skip_max"],
            params["sessions"],
            params["threshold"],
            params["seed_start"],
            params["seed_stop"],
            params["direction"],
            params["reverse_window"],
        )
    except input_error as exc:
        raise ContractError(str(exc).splitlines()[0] if str(exc) else "bad input") from None


def check_memory_model(path: str) -> None:
    """The memory model the slots are sized with (scripts' measure_memory output): read only
    after the preflight otherwise, where a bad file was a raw JSON error (no file named)."""
    where = f"memory_model {path}"
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ContractError(f"{where}: not a readable JSON file ({str(exc).splitlines()[0][:80]})") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not models:
        raise ContractError(
            f'{where}: no models, expected {{"models": {{<backend>: {{"base_mb": N, '
            '"bytes_per_seed_draw": N}}} (playbooks/measure_memory.yml writes it)'
        )
    for backend, model in models.items():
        for key in ("base_mb", "bytes_per_seed_draw"):
            value = model.get(key) if isinstance(model, dict) else None
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0:
                raise ContractError(
                    f"{where}: models.{backend}.{key} is {_shown(value)}, expected a number >= 0"
                )


def worker_identity() -> Dict[str, Any]:
    return dict(_workers()[0].worker_identity())


# -- host variables ----------------------------------------------------------------------
HOST_SPEC_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "..",
    "roles",
    "cluster_host",
    "meta",
    "argument_specs.yml",
)


def host_spec() -> Dict[str, Any]:
    """The `cluster_host` role's argument spec: the one definition of the host variables."""
    with open(HOST_SPEC_FILE) as fh:
        return yaml.safe_load(fh)["argument_specs"]["main"]["options"]


# Ranges an argument spec cannot say.
HOST_RANGES: Dict[str, Tuple[float | None, float | None]] = {
    "gpu_count": (0, 64),
    "max_concurrent_jobs": (1, 1024),
    "memory_margin_pct": (0, 95),
    "start_stagger_seconds": (0, 600),
}


def check_host(name: str, hostvars: Any) -> Dict[str, Any]:
    """A host's fan-out variables, validated and with defaults; one-line ContractError."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    spec = host_spec()
    values = {}
    for key in spec:
        value = hostvars.get(key) if hasattr(hostvars, "get") else None
        if value is not None:
            values[key] = value
        # Ansible's validator takes `gpu_count: yes` as an int: refuse a boolean for a number.
        if isinstance(value, bool) and spec[key].get("type") in ("int", "float"):
            raise ContractError(f"host {name}: {key}: expected {spec[key]['type']}, got {value!r}")
    validator = ArgumentSpecValidator(
        {k: {kk: vv for kk, vv in v.items() if kk != "description"} for k, v in spec.items()}
    )
    result = validator.validate(values)
    if result.error_messages:
        raise ContractError(f"host {name}: {_host_message(result.error_messages[0], values)}")
    out = dict(result.validated_parameters)
    for key, (low, high) in HOST_RANGES.items():
        value = out.get(key)
        if value is None:
            continue
        # NaN compares false with everything: it must fail the range, not pass it
        inside = (low is None or value >= low) and (high is None or value <= high)
        if not math.isfinite(value) or not inside:
            raise ContractError(
                f"host {name}: {key}: expected a value in [{_fmt(low)}, {_fmt(high)}], got {value!r}"
            )
    bad = [i for i in out.get("gpu_exclude") or [] if not 0 <= i < 64]
    if bad:
        raise ContractError(f"host {name}: gpu_exclude: expected GPU indexes in [0, 63], got {bad[0]!r}")
    device = out.get("worker_device")
    if device is not None and not re.fullmatch(r"(auto|cpu|cuda(:[0-9]{1,2})?)?", str(device)):  # "" is auto
        raise ContractError(f"host {name}: worker_device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    return out


def _host_message(message: str, values: Dict[str, Any]) -> str:
    """Ansible's validator words it "argument 'x' is of type <class 'str'> and we were
    unable to convert to int: ..." or "value of x must be one of: a, b, got: c": say the
    variable, what is expected and the value found instead."""
    for key, value in values.items():
        if "unable to convert to" in message and f"'{key}'" in message:
            wanted = message.split("unable to convert to", 1)[1].split(":", 1)[0].strip()
            return f"{key}: expected {wanted}, got {value!r}"
        if message.startswith(f"value of {key} must be one of:"):
            choices = message.split("one of:", 1)[1].rsplit(", got:", 1)[0].strip()
            return f"{key}: expected one of {choices}, got {value!r}"
    return message.splitlines()[0]


# -- identity ----------------------------------------------------------------------------
def identity(kind: str, params: Dict[str, Any], inputs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """What the results depend on: the plan, the result-changing parameters, the inputs'
    content hashes and the worker code. Two runs with equal identities give equal results.
    A shard (`shard: K/N`) also records `full_run`, the hash of the identity of the whole
    run it is part of: the merge checks that every shard has the same."""
    ident = {
        "plan": kind,
        "params": {k: params[k] for k, p in PARAMS[kind].items() if p.identity and k in params},
        "inputs": {k: v["sha256"] for k, v in sorted(inputs.items())},
        "worker": worker_identity() if kind != "list" else {},
    }
    if params.get("shard"):
        ident["full_run"] = full_run_hash(ident)
    return ident


def full_run_hash(ident: Dict[str, Any]) -> str:
    """sha256 of an identity without its shard: equal for every shard of one run."""
    whole = {k: v for k, v in ident.items() if k != "full_run"}
    whole["params"] = {k: v for k, v in (ident.get("params") or {}).items() if k != "shard"}
    return hashlib.sha256(json.dumps(whole, sort_keys=True, default=str).encode()).hexdigest()


def identity_changes(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable differences, e.g. "mod 1000 -> 997", "input survivors changed"."""
    changes: List[str] = []
    if old.get("plan") != new.get("plan"):
        changes.append(f"plan {old.get('plan')} -> {new.get('plan')}")
    for section, label in (
        ("params", "{k} {a} -> {b}"),
        ("inputs", "input {k} changed (sha256 {a:.12} -> {b:.12})"),
    ):
        a_map, b_map = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a_map) | set(b_map)):
            a, b = a_map.get(key), b_map.get(key)
            if a != b:
                changes.append(label.format(k=key, a=str(a), b=str(b)))
    a_w, b_w = old.get("worker") or {}, new.get("worker") or {}
    for key in sorted(set(a_w) | set(b_w)):
        if a_w.get(key) != b_w.get(key):
            changes.append(f"worker {key} {str(a_w.get(key))[:12]} -> {str(b_w.get(key))[:12]}")
    return changes
