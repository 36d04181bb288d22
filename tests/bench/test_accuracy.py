"""The accuracy claim of bench/accuracy.py, asserted (accuracy, never time).

On a nonlinear autoregressive series and on FriedmanDrift, replayed through the
daemon's own pipeline with a fixed seed, the MLP's prequential MAE after warm-up is at
least 15% below River linear's. (It was 20% when every model saw only window
statistics; the level, seasonal and calendar features added for time series are noise
to FriedmanDrift's independent rows, and cost the MLP a little more than the linear
model there.)
"""

from __future__ import annotations

import pytest

from bench.accuracy import CASES, MODELS, run_case

PAIR = [m for m in MODELS if m["name"] in {"linear", "mlp"}]


@pytest.mark.parametrize("case", ["nonlinear-ar", "friedman-drift"])
def test_mlp_beats_river_linear_clearly_on_nonlinear_streams(case: str) -> None:
    result = run_case(CASES[case], PAIR)
    mlp, linear = result.scores["mlp"], result.scores["linear"]
    assert mlp.n == linear.n > 1000
    assert mlp.mae <= 0.85 * linear.mae, (mlp.mae, linear.mae)


def test_persistence_is_hard_to_beat_on_prices() -> None:
    """Not every stream rewards a network: on daily prices the change is noise, and
    the MLP only matches the last value. The bench reports it; this keeps it honest."""
    models = [m for m in MODELS if m["name"] in {"last", "mlp"}]
    result = run_case(CASES["sp500"], models)
    assert result.scores["mlp"].mae == pytest.approx(result.scores["last"].mae, rel=0.1)
