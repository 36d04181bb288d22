"""Attributions find the features that matter: on a stream where two of eight
exogenous features drive the target, those two rank highest for the linear model
(weight x input), the MLP (integrated gradients) and the ensemble (its members'
attributions, weighted by their weights)."""

from __future__ import annotations

import numpy as np
import orjson

from service.config import Settings
from service.tools import replay
from service.workbench.collect import replay as run_replay
from service.workbench.explain import explain_run

FEATURES = [f"f{i}" for i in range(8)]
DRIVERS = {"f2", "f5"}


def synthetic(n: int = 2500, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """``y = 3 f2 - 2 f5 + noise`` with f0..f7 independent standard normals, one key."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES)))
    y = 3.0 * x[:, 2] - 2.0 * x[:, 5] + 0.1 * rng.standard_normal(n)
    start = 1_700_000_000_000
    return [
        (
            b"s",
            orjson.dumps(
                {
                    "key": "s",
                    "ts": start + i * 60_000,
                    "y": float(y[i]),
                    "x": dict(zip(FEATURES, x[i].tolist(), strict=True)),
                }
            ),
        )
        for i in range(n)
    ]


def test_the_two_features_that_matter_rank_highest() -> None:
    settings = Settings.model_validate(
        {
            "forecast": {"horizon": 0, "target": "level", "calendar": False},
            "models": [
                {"name": "ensemble", "kind": "ensemble", "primary": True},
                {"name": "last", "kind": "persistence"},
                {"name": "linear", "kind": "river.linear"},
                {"name": "mlp", "kind": "torch.mlp"},
            ],
        }
    )
    records = replay.as_records(synthetic(), settings.kafka.input_topic)
    run = run_replay(records, settings)
    found = explain_run(run)
    assert found["linear"].method == "weight x input"
    assert found["mlp"].method == "integrated gradients"
    assert found["last"].features == {}
    for model in ("linear", "mlp", "ensemble"):
        ranking = found[model].ranking()
        assert set(ranking[:2]) == DRIVERS, (model, ranking[:4])
        # ...clearly: together they carry most of the attribution
        assert sum(found[model].features[f] for f in DRIVERS) > 0.5, model
    members = found["ensemble"].members
    assert set(members) == {"last", "linear", "mlp"}
    assert abs(sum(members.values()) - 1.0) < 1e-9
    assert members["last"] < max(members["linear"], members["mlp"])
