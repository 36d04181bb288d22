"""Scores equal river.metrics on the same stream, cumulative and rolling, and pool exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from river import metrics, utils

from service.pipeline.scoring import Scorer, ScoreStats


def _river(y: np.ndarray, y_hat: np.ndarray, window: int | None) -> dict[str, float]:
    kinds: dict[str, Any] = {
        "mae": metrics.MAE,
        "mse": metrics.MSE,
        "rmse": metrics.RMSE,
        "r2": metrics.R2,
    }
    made: dict[str, Any] = {
        k: kind() if window is None else utils.Rolling(kind, window_size=window)
        for k, kind in kinds.items()
    }
    for truth, guess in zip(y, y_hat, strict=True):
        for metric in made.values():
            metric.update(float(truth), float(guess))
    return {k: m.get() for k, m in made.items()}


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_matches_river_metrics_on_a_random_stream(batch: int) -> None:
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(size=900)) + 50
    y_hat = y + rng.normal(scale=0.7, size=900)
    scorer = Scorer(window=100)
    for start in range(0, len(y), batch):
        scorer.update(y[start : start + batch], y_hat[start : start + batch])
    total, rolling = scorer.total, scorer.rolling()
    for stats, window in ((total, None), (rolling, 100)):
        expected = _river(y, y_hat, window)
        assert stats.mae == pytest.approx(expected["mae"], rel=1e-9)
        assert stats.mse == pytest.approx(expected["mse"], rel=1e-9)
        assert stats.rmse == pytest.approx(expected["rmse"], rel=1e-9)
        assert stats.r2 == pytest.approx(expected["r2"], rel=1e-6)


def test_pooled_stats_equal_stats_of_the_concatenation() -> None:
    rng = np.random.default_rng(2)
    parts = [
        (rng.normal(size=n) * s + m, rng.normal(size=n))
        for n, s, m in [(5, 1, 0), (50, 3, 10), (1, 1, 1)]
    ]
    pooled = ScoreStats.pool(ScoreStats.of(y, p) for y, p in parts)
    whole = ScoreStats.of(
        np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts])
    )
    for attribute in ("n", "mae", "mse", "rmse", "r2"):
        assert getattr(pooled, attribute) == pytest.approx(getattr(whole, attribute), rel=1e-12)


def test_r2_edge_cases_follow_river() -> None:
    assert ScoreStats.of(np.array([1.0]), np.array([0.0])).r2 == 0.0
    assert ScoreStats.of(np.array([2.0, 2.0]), np.array([1.0, 3.0])).r2 == 0.0
    assert ScoreStats().mae == 0.0
