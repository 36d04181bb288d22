"""Over- and underfitting, visibly: on a nonlinear stream with noise, a large MLP
trained hard fits the rows it learned far better than new ones (overfit), a linear
model cannot beat the naive forecast (underfit), and a linear model with a huge
learning rate diverges (unstable); the report's words say so."""

from __future__ import annotations

import numpy as np
import orjson

from service.config import Settings
from service.tools import replay
from service.workbench import fitting
from service.workbench.collect import replay as run_replay


def nonlinear(n: int = 1600, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``y = sin(2 f0) + f1²/2 + noise``: no linear function of the features fits."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.3 * rng.standard_normal(n)
    return [
        (
            b"s",
            orjson.dumps(
                {
                    "key": "s",
                    "ts": 1_700_000_000_000 + i * 60_000,
                    "y": float(y[i]),
                    "x": {f"f{j}": float(x[i, j]) for j in range(8)},
                }
            ),
        )
        for i in range(n)
    ]


def test_verdicts_name_overfit_underfit_and_unstable_models() -> None:
    hard = {
        "hidden": [256, 256],
        "lr": 0.01,
        "learn_every": 4,
        "max_steps": 32,
        "replay_samples": 512,
    }
    settings = Settings.model_validate(
        {
            "kafka": {"max_poll_records": 50},
            "forecast": {"horizon": 0, "target": "level", "calendar": False},
            "models": [
                {"name": "big", "kind": "torch.mlp", "primary": True, "params": hard},
                {"name": "linear", "kind": "river.linear"},
                {
                    "name": "hot",
                    "kind": "river.linear",
                    "params": {"lr": 0.5, "clip_gradient": 1e3},
                },
            ],
        }
    )
    run = run_replay(replay.as_records(nonlinear(), "t"), settings)
    curves = fitting.curves(run)
    assert all(len(c.positions) >= 10 for c in curves.values())
    found = {v.model: v for v in fitting.verdicts(run, curves)}
    assert found["big"].verdict == "overfit"
    assert found["big"].seen < found["big"].unseen / fitting.OVERFIT_RATIO
    assert found["linear"].verdict == "underfit"
    assert found["hot"].verdict == "unstable"
    assert "weight_decay" in found["big"].sentence()
    assert "lower learning rate" in found["hot"].sentence()
