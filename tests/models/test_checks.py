"""The conformance suite itself: it passes a good model and catches each broken one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from models.base import FeatureBatch, FloatArray, Model, ModelContext
from models.checks import (
    ConformanceError,
    Stream,
    check_clone_is_fresh,
    check_learn_does_not_mutate_input,
    check_output_shape_and_finite,
    check_predict_is_pure,
    check_seeded_determinism,
    check_state_dict_round_trip,
    run_all,
    synthetic_batches,
)

CONTEXT = ModelContext(feature_names=("a", "b"), window=5, horizon=1)
STREAM = list(synthetic_batches(CONTEXT, n_batches=4, batch_size=16, seed=0))


class MeanModel(Model):
    """A correct learning model: predicts the running mean of the targets."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self._updates = 0

    @property
    def updates(self) -> int:
        return self._updates

    def predict(self, batch: FeatureBatch) -> FloatArray:
        mean = self.total / self.count if self.count else 0.0
        return np.full(len(batch), mean)

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        self.total += float(target.sum())
        self.count += len(target)
        self._updates += 1

    def clone(self) -> Model:
        return type(self)()

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "updates": self._updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total, self.count = state["total"], state["count"]
        self._updates = state["updates"]


class NaNOutput(MeanModel):
    def predict(self, batch: FeatureBatch) -> FloatArray:
        return np.full(len(batch), np.nan)


class WrongShape(MeanModel):
    def predict(self, batch: FeatureBatch) -> FloatArray:
        return np.zeros((len(batch), 1))


class LearnsWhilePredicting(MeanModel):
    def predict(self, batch: FeatureBatch) -> FloatArray:
        out = super().predict(batch)
        self.total += 1.0
        return out


class ScalesInPlace(MeanModel):
    def predict(self, batch: FeatureBatch) -> FloatArray:
        np.multiply(batch.x, 1.0001, out=batch.x)
        return super().predict(batch)


class ClipsTargetInPlace(MeanModel):
    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        np.clip(target, -1.0, 1.0, out=target)
        super().learn(batch, target)


class Unseeded(MeanModel):
    def predict(self, batch: FeatureBatch) -> FloatArray:
        return super().predict(batch) + np.random.default_rng().normal()


class ForgetsCount(MeanModel):
    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "updates": self._updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total, self._updates = state["total"], state["updates"]


class UnpicklableState(MeanModel):
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "model": self}


class SharedClone(MeanModel):
    def clone(self) -> Model:
        return self


def test_a_correct_model_passes() -> None:
    run_all(MeanModel, STREAM)


@pytest.mark.parametrize(
    ("model", "check", "message"),
    [
        (NaNOutput, check_output_shape_and_finite, "non-finite"),
        (WrongShape, check_output_shape_and_finite, "expected float64"),
        (LearnsWhilePredicting, check_predict_is_pure, "different outputs"),
        (ScalesInPlace, check_predict_is_pure, "modified batch.x"),
        (ClipsTargetInPlace, check_learn_does_not_mutate_input, "modified the target"),
        (Unseeded, check_seeded_determinism, "disagree"),
        (ForgetsCount, check_state_dict_round_trip, "predicts differently"),
        (UnpicklableState, check_state_dict_round_trip, "not a plain value"),
        (SharedClone, check_clone_is_fresh, "updates"),
    ],
)
def test_a_broken_model_is_caught(
    model: Callable[[], Model], check: Callable[[Callable[[], Model], Stream], None], message: str
) -> None:
    with pytest.raises(ConformanceError, match=message):
        check(model, STREAM)


def test_run_all_needs_two_batches() -> None:
    with pytest.raises(ValueError, match="at least two"):
        run_all(MeanModel, STREAM[:1])


def test_synthetic_batches_look_like_the_feature_pipeline() -> None:
    context = ModelContext(feature_names=("a", "b", "c"), window=6, horizon=1)
    stream = list(synthetic_batches(context, n_batches=20, batch_size=16, seed=5))
    assert len(stream) == 20
    for batch, target in stream:
        assert batch.x.shape == (16, 3)
        assert batch.window.shape == (16, 6)
        assert list(batch.feature_names) == ["a", "b", "c"]
        assert np.all(np.isfinite(batch.x))
        assert np.all(np.isfinite(target))
        has_history = np.isfinite(batch.last)
        # offset is the last observed value, 0 for a key's first event
        np.testing.assert_array_equal(batch.offset[has_history], batch.last[has_history])
        np.testing.assert_array_equal(batch.offset[~has_history], 0.0)
        # NaN padding only at the start of a window
        finite = np.isfinite(batch.window)
        assert np.all(np.diff(finite.astype(int), axis=1) >= 0)
    windows = np.concatenate([batch.window for batch, _ in stream])
    assert np.isnan(windows).any(), "expected young keys with padded windows"
    assert np.isfinite(windows).all(axis=1).any(), "expected keys with full windows"


def test_synthetic_batches_are_reproducible() -> None:
    first = list(synthetic_batches(CONTEXT, n_batches=3, batch_size=8, seed=9))
    second = list(synthetic_batches(CONTEXT, n_batches=3, batch_size=8, seed=9))
    for (a, ta), (b, tb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.window, b.window)
        np.testing.assert_array_equal(ta, tb)
        assert a.keys == b.keys
