"""The `survivors_with_scores` record layout, as columns (NPZ) and as records (JSON).

Record: {"seed", "score", "features": {...}, "holdout_hits", "holdout_quality",
"metadata": {"family", "m", "host", "gpu", "job_id", <every input field>}}.
Columns (NPZ): `seeds` (uint64), `score`, `holdout_hits`, `holdout_quality`,
`feature.<name>` (float64) and `metadata.<name>`.

Every field of the input survivor record except its seed goes to `metadata` unchanged;
numeric ones are also features `meta_<name>` (spec: metadata feature group). An input
field that collides with a run field (host, gpu, job_id) is kept as
`metadata.survivor_<name>`; `family` and `m` must agree with the run (checked by the CLI).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prng_workers.errors import InputError
from prng_workers.scoring import features

FEATURE = "feature."
META = "metadata."
TOP = ("score", "holdout_hits", "holdout_quality")
RUN_META = ("family", "m", "host", "gpu", "job_id")
SEED_KEYS = ("seeds", "seed")
# holdout features that live inside `features` (hits and quality are top-level fields)
HOLDOUT_IN_FEATURES = ("holdout_lane_consistency", "holdout_coherence")


def is_numeric(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iufb"


def seed_column(cols: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    for key in SEED_KEYS:
        if key in cols:
            seeds = np.asarray(cols[key])
            if seeds.dtype.kind not in "iu":
                raise InputError(f"survivors column {key!r} must hold integers, got {seeds.dtype}")
            if seeds.dtype.kind == "i" and seeds.size and int(seeds.min()) < 0:
                raise InputError("survivor seeds must be >= 0")
            return key, seeds.astype(np.uint64)  # uint64 end to end (i27)
    raise InputError("survivors have no 'seed'/'seeds' field (required)")


def build_columns(seeds: np.ndarray, train: np.ndarray, holdout: np.ndarray,
                  inputs: dict[str, np.ndarray], run_meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Output columns of one chunk; `inputs` = the survivors' columns (all copied through)."""
    count = int(seeds.size)
    cols: dict[str, np.ndarray] = {"seeds": np.asarray(seeds, dtype=np.uint64)}
    cols["score"] = train[:, features.COL["score"]].copy()
    cols["holdout_hits"] = holdout[:, features.HCOL["holdout_hits"]].copy()
    cols["holdout_quality"] = holdout[:, features.HCOL["holdout_quality"]].copy()
    for name in features.TRAIN_FEATURES:
        if name != "score":
            cols[FEATURE + name] = train[:, features.COL[name]].copy()
    for name in HOLDOUT_IN_FEATURES:
        cols[FEATURE + name] = holdout[:, features.HCOL[name]].copy()
    for key, value in run_meta.items():
        cols[META + key] = np.full(count, "" if value is None else value)
    for key, arr in inputs.items():
        if key in SEED_KEYS:
            continue
        arr = np.asarray(arr)
        if arr.shape[:1] != (count,):
            raise InputError(f"survivors field {key!r} has {arr.shape[:1]} values for {count} seeds")
        out_key = f"survivor_{key}" if key in ("host", "gpu", "job_id") else key
        cols[META + out_key] = arr
        if is_numeric(arr) and arr.ndim == 1:
            cols[FEATURE + "meta_" + key] = arr.astype(np.float64)
    return cols


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _values(arr: np.ndarray) -> list[Any]:
    """Python values of a column (`tolist` gives Python scalars except inside object arrays)."""
    vals = np.asarray(arr).tolist()
    return [_plain(v) for v in vals] if np.asarray(arr).dtype == object else vals


def columns_to_records(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """JSON-ready records from columns (Python ints/floats/strs). Built row-wise with zip (one
    tuple per seed and group, then dict(zip(keys, row))): no per-value Python call."""
    seeds = [int(s) for s in cols["seeds"].tolist()]
    fkeys = [k[len(FEATURE) :] for k in cols if k.startswith(FEATURE)]
    mkeys = [k[len(META) :] for k in cols if k.startswith(META)]
    xkeys = [k for k in cols if k not in TOP and k != "seeds" and not k.startswith((FEATURE, META))]
    n = len(seeds)

    def rows(names: list[str]) -> Any:
        return zip(*(_values(cols[k]) for k in names), strict=True) if names else iter([()] * n)

    frows, mrows, xrows = rows([FEATURE + k for k in fkeys]), rows([META + k for k in mkeys]), rows(xkeys)
    top = zip(*(_values(cols[k]) for k in TOP), strict=True)
    records = []
    for seed, (score, hits, quality), f, m, x in zip(seeds, top, frows, mrows, xrows, strict=True):
        rec: dict[str, Any] = {
            "seed": seed,
            "score": score,
            "features": dict(zip(fkeys, f, strict=True)),
            "holdout_hits": hits,
            "holdout_quality": quality,
            "metadata": dict(zip(mkeys, m, strict=True)),
        }
        if x:
            rec.update(zip(xkeys, x, strict=True))
        records.append(rec)
    return records


def records_to_columns(records: list[dict[str, Any]], where: str) -> dict[str, np.ndarray]:
    """Columns from scored JSON records; every record must have the same fields."""
    if not isinstance(records, list):
        raise InputError(f"{where}: expected a JSON list of scored records")
    if not records:
        return {}
    first = records[0]
    fkeys = list(first.get("features", {}))
    mkeys = list(first.get("metadata", {}))
    cols: dict[str, list[Any]] = {"seeds": [], **{k: [] for k in TOP}}
    cols.update({FEATURE + k: [] for k in fkeys})
    cols.update({META + k: [] for k in mkeys})
    for i, rec in enumerate(records):
        try:
            cols["seeds"].append(int(rec["seed"]))
            for k in TOP:
                cols[k].append(float(rec[k]))
            if set(rec["features"]) != set(fkeys) or set(rec["metadata"]) != set(mkeys):
                raise KeyError("features/metadata fields differ from record 0")
            for k in fkeys:
                cols[FEATURE + k].append(rec["features"][k])
            for k in mkeys:
                cols[META + k].append(rec["metadata"][k])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: record {i} is not a scored record ({exc})") from None
    out = {k: np.asarray(v) for k, v in cols.items() if k != "seeds"}
    out["seeds"] = np.asarray(cols["seeds"], dtype=np.uint64)
    return out
