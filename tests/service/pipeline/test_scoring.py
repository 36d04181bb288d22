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


def test_mae_before_together_is_each_scorers() -> None:
    """Each row: the MAE of everything its scorer scored before it, the batch's earlier
    rows included; 0 where nothing was; one scorer alone gives the same."""
    rng = np.random.default_rng(3)
    scorers = [Scorer(window=50) for _ in range(4)]
    for i, scorer in enumerate(scorers[1:]):  # the first has scored nothing yet
        scorer.update(rng.normal(size=7 * (i + 1)), rng.normal(size=7 * (i + 1)))
    errors = np.abs(rng.normal(size=(4, 9)))
    together = Scorer.mae_before_together(scorers, errors)
    for scorer, row, got in zip(scorers, errors, together, strict=True):
        np.testing.assert_array_equal(got, scorer.mae_before(row))
        total = scorer.total
        expected = [
            (total.sum_abs + row[:j].sum()) / (total.n + j) if total.n + j else 0.0
            for j in range(len(row))
        ]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert together[0, 0] == 0.0
    assert together[0, 1] > 0.0


def test_update_together_is_each_scorers_update() -> None:
    rng = np.random.default_rng(4)
    together = [Scorer(window=6) for _ in range(3)]
    alone = [Scorer(window=6) for _ in range(3)]
    for size in (4, 1, 9, 0, 5):  # batches shorter and longer than the window
        truth = rng.normal(size=size) * 10
        predicted = rng.normal(size=(size, 3)) * 10
        batches = Scorer.update_together(together, truth, predicted)
        for i, scorer in enumerate(alone):
            scorer.update(truth, predicted[:, i])
            assert batches[i].n == size
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(
                [a.total.sum_abs, a.total.sum_sq, a.total.y_mean, a.total.y_m2],
                [b.total.sum_abs, b.total.sum_sq, b.total.y_mean, b.total.y_m2],
                rtol=1e-12,
            )
            assert a.total.n == b.total.n
            np.testing.assert_array_equal(a.recent_errors(), b.recent_errors())
            assert a.rolling() == b.rolling()
