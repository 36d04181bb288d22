"""Partition task: horizon semantics, test-then-train order, out-of-order policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from models.base import FeatureBatch, FloatArray, Model
from models.ensemble import EnsembleParams
from models.rls import KeyedRLS
from service.config import Settings
from service.pipeline.features import FeaturePipeline
from service.pipeline.processor import build_prototypes
from service.pipeline.tasks import PartitionTask
from service.records import Event, Invalid, RawRecord


class Spy(Model):
    """Predicts a constant change and records every call, in order."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self._updates = 0

    @property
    def updates(self) -> int:
        return self._updates

    def predict(self, batch: FeatureBatch) -> FloatArray:
        self.log.append(("predict", batch.window.copy()))
        return 0.5 / batch.units  # a change of 0.5 in the original scale

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        self.log.append(("learn", (batch.window.copy(), target * batch.units)))  # as changes
        self._updates += 1

    def clone(self) -> Model:
        return Spy(self.log)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Stateless."""


@pytest.fixture(autouse=True)
def _learn_from_young_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests follow a few events of a key, whose unit is still a guess: let rows
    of young keys be learned, and their outputs and targets unclipped."""
    import service.pipeline.tasks as tasks

    monkeypatch.setattr(tasks, "MATURE_VALUES", 0)
    monkeypatch.setattr(
        tasks, "learnable", lambda mature, measured, target: mature & np.isfinite(target)
    )
    monkeypatch.setattr(tasks, "OUTPUT_LIMIT", float("inf"))


def _task(log: list[tuple[str, Any]], **forecast: Any) -> PartitionTask:
    settings = Settings.model_validate(
        {
            "forecast": {"window": 4, "lags": 2, "history": 4, "outliers": "accept", **forecast},
            "models": [{"name": "spy", "kind": "persistence", "primary": True}],
        }
    )
    pipeline = FeaturePipeline(2, settings.forecast.target, (), 4, settings.forecast.horizon)
    return PartitionTask("t", 0, settings, {"spy": Spy(log)}, pipeline)


def _events(values: list[float], key: str = "a", start: int = 0) -> list[Event]:
    return [
        Event(
            key, (start + i) * 1000, y, np.empty(0), RawRecord("t", 0, start + i, key.encode(), b"")
        )
        for i, y in enumerate(values)
    ]


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_horizon_two_scores_each_prediction_against_the_second_next_value(batch: int) -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=2)
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    events = _events(values)
    outputs = [task.process(events[i : i + batch]) for i in range(0, len(events), batch)]
    predictions = [p for out in outputs for p in out.predictions]
    assert [p.y_hat for p in predictions] == [v + 0.5 for v in values]
    assert [p.source for p in predictions] == [f"t:0:{i}" for i in range(5)]
    targets = np.concatenate([t for kind, (_, t) in (e for e in log if e[0] == "learn")])
    # Learned rows: predictions of events 0, 1, 2 against values 2 steps later, as changes.
    np.testing.assert_allclose(targets, [4.0 - 1.0, 7.0 - 2.0, 11.0 - 4.0])
    assert task.scores()["spy"][0].n == 3
    assert task.scores()["spy"][0].mae == pytest.approx(np.mean([2.5, 4.5, 6.5]))


def test_every_prediction_is_made_before_its_value_is_learned() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=1)
    events = _events([float(v) for v in range(10)])
    for i in range(0, 10, 3):
        task.process(events[i : i + 3])
    predicted_rows = 0
    for kind, payload in log:
        if kind == "predict":
            predicted_rows += len(payload)
        else:
            windows, _ = payload
            learned_lasts = windows[:, -1]
            # each learned row was predicted earlier: its window's last value is known
            assert learned_lasts.max() < predicted_rows


def test_horizon_zero_never_sees_its_own_target_and_seeds_new_keys() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=0)
    out = task.process(_events([10.0, 20.0, 30.0]))
    assert [p.source for p in out.predictions] == ["t:0:1", "t:0:2"]
    assert task.seeded_only == 1
    windows = np.concatenate([payload for kind, payload in log if kind == "predict"])
    assert windows[:, -1].tolist() == [10.0, 20.0]  # the previous value, never the event's own
    targets = np.concatenate([t for kind, (_, t) in (e for e in log if e[0] == "learn")])
    np.testing.assert_allclose(targets, [10.0, 10.0])
    # event by event: each row is predicted, then learned, before the next is predicted
    assert [kind for kind, _ in log] == ["predict", "learn", "predict", "learn"]
    assert task.scores()["spy"][0].n == 2


def test_horizon_zero_in_level_mode_predicts_from_the_first_event() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=0, target="level")
    out = task.process(_events([10.0, 20.0]))
    assert [p.y_hat for p in out.predictions] == [0.5, 0.5]


def test_out_of_order_events_are_rejected_and_do_not_touch_the_window() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=1)
    events = _events([1.0, 2.0])
    late = Event("a", -5, 99.0, np.empty(0), RawRecord("t", 0, 9, b"a", b""))
    out = task.process([*events, late])
    assert [i.reason for i in out.invalid] == ["out_of_order"]
    assert isinstance(out.invalid[0], Invalid)
    assert len(out.predictions) == 2
    later = task.process(_events([3.0], start=5))
    assert later.predictions[0].y_hat == 3.5


def test_out_of_order_accept_policy_processes_the_event() -> None:
    task = _task([], horizon=1, out_of_order="accept")
    late = Event("a", -5, 99.0, np.empty(0), RawRecord("t", 0, 9, b"a", b""))
    out = task.process([*_events([1.0]), late])
    assert not out.invalid
    assert len(out.predictions) == 2


def test_keys_do_not_share_windows() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=1)
    mixed = [
        e
        for pair in zip(_events([1.0, 2.0], "a"), _events([100.0, 200.0], "b"), strict=True)
        for e in pair
    ]
    out = task.process(mixed)
    assert {p.key: p.y_hat for p in out.predictions} == {"a": 2.5, "b": 200.5}
    assert task.active_series == 2


def _quiet_keys(task: PartitionTask, batches: int) -> set[int]:
    """Each batch brings a new key once (then it goes quiet) and a busy key; returns
    the first row ids of the batches whose rows are kept alive by waiting predictions."""
    for index in range(batches):
        events = _events([float(index)], key=f"quiet-{index}", start=index)
        busy = _events([float(index)] * 5, key="busy", start=5 * index)
        task.process(events + busy)  # 6 rows, of which 1 (or 2) still wait afterwards
    return set(task._pending._polls)


@pytest.mark.parametrize("compact_every", [64, 10**9])
def test_quiet_keys_do_not_keep_old_batches_alive(
    monkeypatch: pytest.MonkeyPatch, compact_every: int
) -> None:
    """Waiting rows are copied out of mostly resolved batches every 64 batches; the
    quiet keys' predictions are then scored and learned exactly as without that."""
    import service.pipeline.pending as pending
    import service.pipeline.tasks as tasks

    monkeypatch.setattr(pending, "_COMPACT_SLACK", 0)
    monkeypatch.setattr(tasks, "COMPACT_EVERY", compact_every)
    log: list[tuple[str, Any]] = []
    task = _task(log)
    live = _quiet_keys(task, 200)
    if compact_every == 64:
        assert len(live) <= 200 - 192 + 1  # one copy, plus the batches since
    else:
        assert len(live) == 200  # the behaviour compaction exists to bound
    returning = [e for i in range(200) for e in _events([i + 0.5], f"quiet-{i}", start=1000 + i)]
    start = len(log)
    task.process(returning)
    learned = [payload for kind, payload in log[start:] if kind == "learn"]
    window = np.concatenate([w for w, _ in learned])
    target = np.concatenate([t for _, t in learned])
    expected = [[np.nan, np.nan, np.nan, float(i)] for i in range(200)]
    np.testing.assert_array_equal(window, np.array(expected))  # rows from the copies too
    np.testing.assert_allclose(target, [0.5] * 200)


def test_a_poll_returns_its_counts_and_the_next_starts_from_zero() -> None:
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=1)
    first = task.process(_events([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert first.counts.predictions["spy"] == 6
    assert first.counts.scored["spy"] == 5  # the last prediction waits for its truth
    errors = [abs(p.y_hat - y) for p, y in zip(first.predictions, [2.0, 3, 4, 5, 6], strict=False)]
    assert first.counts.abs_error["spy"] == pytest.approx(sum(errors))
    second = task.process(_events([7.0], start=6))
    assert second.counts.predictions["spy"] == 1
    assert second.counts.scored["spy"] == 1
    assert task.forget("a").evicted == 1


def test_a_poll_that_raises_before_its_rows_exist_leaves_later_polls_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The prediction a failed poll never made is not scored against the next value,
    and its id is not handed to the next poll's rows (the processor retries a failed
    poll's events one by one on the same task)."""
    log: list[tuple[str, Any]] = []
    task = _task(log, horizon=1)
    task.process(_events([1.0, 2.0, 3.0]))
    fill = task._fill

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug between the pushes and the rows")

    monkeypatch.setattr(task, "_fill", broken)
    with pytest.raises(RuntimeError):
        task.process(_events([4.0], start=3))
    monkeypatch.setattr(task, "_fill", fill)
    task.take_counts()
    out = task.process(_events([5.0, 6.0], start=4))
    assert len(out.predictions) == 2
    # 5.0 resolves the failed poll's prediction (never made: not scored), 6.0 the 5.0's
    assert out.counts.scored["spy"] == 1
    assert out.counts.abs_error["spy"] == pytest.approx(abs(6.0 - out.predictions[0].y_hat))
    assert task.pending_predictions == 1


def _small_task(
    models: list[dict[str, Any]], prototypes: dict[str, Model] | None = None
) -> PartitionTask:
    """A task over windows of 4 with ``models`` (built from the settings unless
    ``prototypes`` are given)."""
    settings = Settings.model_validate(
        {"forecast": {"window": 4, "lags": 2, "history": 4, "outliers": "accept"}, "models": models}
    )
    pipeline = FeaturePipeline(2, settings.forecast.target, (), 4, settings.forecast.horizon)
    if prototypes is None:
        prototypes = build_prototypes(settings, pipeline)
    return PartitionTask("t", 0, settings, prototypes, pipeline)


def _ensemble_task(params: dict[str, Any]) -> PartitionTask:
    ensemble = {"name": "ensemble", "kind": "ensemble", "primary": True, "params": params}
    members = [{"name": "a", "kind": "persistence"}, {"name": "b", "kind": "persistence"}]
    return _small_task([ensemble, *members], {"a": Spy([]), "b": Spy([])})


def test_a_restored_ensemble_learns_on_with_the_configured_params() -> None:
    """The checkpoint brings what the weights learned; the settings say how they learn
    on (a default changed by an upgrade does not change the settings' fingerprint)."""
    old = _ensemble_task({"share": 0.01, "past_share": 0.0})
    old.process(_events([1.0, 2.0, 3.0, 4.0, 5.0]))
    new = _ensemble_task({})
    new.load_state(old.state())
    hedge = new.state()["models"][0]["hedge"]
    assert hedge is old.state()["models"][0]["hedge"]  # the learned weights themselves
    assert (hedge.share, hedge.past_share) == (EnsembleParams().share, EnsembleParams().past_share)
    assert hedge.learned > 0


def _rls_task(buckets: int) -> PartitionTask:
    rls = {"name": "rls", "kind": "rls", "primary": True, "params": {"key_buckets": buckets}}
    return _small_task([rls])


def test_a_restored_shared_rls_goes_on_as_every_key_buckets_start() -> None:
    """A checkpoint of one rls fit restores into settings that ask for key buckets
    (the fingerprint leaves key_buckets out): the fit is kept as where each bucket
    starts, and the published version goes on counting."""
    old = _rls_task(1)
    old.process(_events([1.0, 2.0, 4.0, 3.0, 5.0, 4.0, 6.0]))
    shared = old.state()["models"][0]["model"]
    new = _rls_task(128)
    new.load_state(old.state())
    model = new.state()["models"][0]["model"]
    assert isinstance(model, KeyedRLS)
    assert model.updates == shared.updates > 0
    # no bucket learned yet: each would start from (a copy of) the restored fit
    assert np.array_equal(model.most_learned().weights, shared.weights)


@pytest.mark.parametrize(("kind", "width"), [("ridge", 2), ("rls", 0)])
def test_rows_keep_their_raw_features_only_for_a_model_that_reads_them(
    kind: str, width: int
) -> None:
    """A pending row keeps its event's raw features (8 B each, in memory and in the
    checkpoint) only in a task with a model that reads them, such as ``ridge``."""
    settings = Settings.model_validate(
        {
            "schema": {"features": ["p", "q"]},
            "forecast": {"window": 4, "lags": 2, "history": 4, "outliers": "accept"},
            "models": [{"name": "m", "kind": kind, "primary": True}],
        }
    )
    pipeline = FeaturePipeline(2, settings.forecast.target, ("p", "q"), 4, 1)
    task = PartitionTask("t", 0, settings, build_prototypes(settings, pipeline), pipeline)
    events = [
        Event(
            "a", i * 1000, float(i % 3), np.array([i * 10.0, -1.0]), RawRecord("t", 0, i, b"a", b"")
        )
        for i in range(6)
    ]
    task.process(events)
    polls = list(task.state()["pending"]._polls.values())
    assert polls
    assert {rows.exogenous.shape[1] for rows in polls} == {width}
    if width:
        assert polls[-1].exogenous[-1].tolist() == [50.0, -1.0]
