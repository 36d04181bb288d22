"""Every registered model kind passes the conformance suite of ``models.checks``."""

from __future__ import annotations

from typing import Any

import pytest

from models import registry
from models.base import ModelContext
from models.checks import run_all, synthetic_batches
from models.river import MANY_MIN_ROWS

CONTEXT = ModelContext(feature_names=("lag1", "diff1", "temp"), window=8, horizon=1, seed=7)
STREAM = list(synthetic_batches(CONTEXT, n_batches=6, batch_size=24, seed=3))
# Batches large enough for RiverModel's predict_many path.
BIG_STREAM = list(synthetic_batches(CONTEXT, n_batches=3, batch_size=MANY_MIN_ROWS, seed=4))

# Params for kinds that have required params; every other kind runs on its defaults,
# so a newly registered kind is covered without touching this file.
REQUIRED_PARAMS: dict[str, dict[str, Any]] = {
    "river.custom": {"estimator": "linear_model.PARegressor"},
}

# Non-default configurations that take other code paths.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("river.custom", {"estimator": "tree.HoeffdingAdaptiveTreeRegressor", "scale": False}),
    ("river.custom", {"estimator": "linear_model.BayesianLinearRegression", "mini_batch": True}),
    ("knn", {"aggregate": "median", "window": 7, "neighbors": 3}),
    ("rls", {"key_buckets": 8}),
    ("rls", {"key_buckets": 8, "target": "level"}),
]


# The ensemble is no model of its own: its task combines other models' outputs
# (tests/service/test_ensemble.py checks it).
@pytest.mark.parametrize("kind", [k for k in registry.kinds() if k != "ensemble"])
def test_every_registered_kind_conforms(kind: str) -> None:
    params = REQUIRED_PARAMS.get(kind, {})
    run_all(lambda: registry.build(kind, params, CONTEXT), STREAM)


@pytest.mark.parametrize(("kind", "params"), VARIANTS)
def test_variants_conform(kind: str, params: dict[str, Any]) -> None:
    run_all(lambda: registry.build(kind, params, CONTEXT), STREAM)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("river.linear", {}),
        ("rls", {}),
        ("river.custom", {"estimator": "linear_model.LinearRegression", "mini_batch": True}),
    ],
)
def test_linear_conforms_on_big_batches(kind: str, params: dict[str, Any]) -> None:
    run_all(lambda: registry.build(kind, params, CONTEXT), BIG_STREAM)
