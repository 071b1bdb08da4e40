"""One peak-memory formula (issue 11): the workers' `predict_peak_mb` is the contract; the
fan-out's planner calls it (no silent fallback to another backend's model) and the host's
`memory_facts.workers_fit` and the planner's slot count agree on how many such workers fit."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.prng.cluster.plugins.module_utils.memory import MIB, workers_fit  # noqa: E402
from ansible_collections.prng.cluster.plugins.plugin_utils.fanout import planner, sizing  # noqa: E402

from prng_workers.scoring import memory_model  # noqa: E402

MODEL = json.loads((REPO / "data" / "memory_model.json").read_text())


@pytest.mark.parametrize("backend", sorted(MODEL["models"]))
def test_planner_and_workers_predict_the_same_peak(backend: str) -> None:
    for chunk, n_draws in itertools.product((1, 250, 1000, 4000), (500, 2000, 14450)):
        assert sizing.predict_peak_mb(MODEL, backend, chunk, n_draws) == memory_model.predict_peak_mb(
            MODEL, backend, chunk, n_draws
        )


def test_a_model_without_the_backend_is_an_error_not_another_backends_model() -> None:
    numpy_only = {"version": 1, "models": {"numpy": MODEL["models"]["numpy"]}}
    # before: the numpy model was used for a torch worker without a word
    with pytest.raises(planner.PlanError, match="no backend 'torch' \\(has numpy\\)"):
        sizing.predict_peak_mb(numpy_only, "torch", 1000, 2000)
    assert sizing.predict_peak_mb(None, "torch", 1000, 2000) == 0.0  # no model: memory does not limit


def test_memory_facts_and_the_planner_fit_the_same_number_of_workers() -> None:
    sizes = itertools.product((900, 4800, 16384, 131072), (0, 20, 35), (250, 4000))
    for available_mb, margin, chunk in sizes:
        worker_mb = sizing.predict_peak_mb(MODEL, "numpy", chunk, 14450)
        host = planner.HostSpec(
            "h", max_concurrent_jobs=1024, memory_available_mb=available_mb, memory_margin_pct=margin
        )
        assert sizing.slots_for(host, worker_mb) == min(
            1024, workers_fit(available_mb * MIB, worker_mb, margin)
        ), (available_mb, margin, chunk)
