"""bench/quality.py: the reference loop is prequential, the harness runs end to end.

Numbers, not claims: no threshold on any dataset's ratio here (the defaults change),
only that what the bench prints is computed on the right events, from the right
predictions, and is finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import quality
from bench.quality_reference import LAGS, Events, inputs, prequential, suite
from service.config import SchemaSettings


class Oracle:
    """Returns what it learned for exactly these inputs (else 0) and logs every call:
    a loop that learned a value before predicting it would let it answer perfectly."""

    def __init__(self, log: list[tuple[str, float]]) -> None:
        self.memory: dict[frozenset[tuple[str, float]], float] = {}
        self.log = log

    def predict_one(self, x: dict[str, float]) -> float:
        self.log.append(("predict", x["lag0"]))
        return self.memory.get(frozenset(x.items()), 0.0)

    def learn_one(self, x: dict[str, float], y: float) -> None:
        self.log.append(("learn", y))
        self.memory[frozenset(x.items())] = y


def _two_keys(n: int = 12) -> Events:
    keys = ["a", "b"] * n
    y = np.array([100.0 * (i % 2) + i + 1 for i in range(2 * n)])  # all distinct
    return Events(keys, y, np.empty((2 * n, 0)))


@pytest.mark.parametrize("horizon", [0, 1, 3])
def test_reference_predicts_each_value_before_learning_it(horizon: int) -> None:
    events = _two_keys()
    log: list[tuple[str, float]] = []
    predicted = prequential(events, horizon, {"oracle": lambda: Oracle(log)}, ("level",))
    by_key = {k: [i for i, key in enumerate(events.keys) if key == k] for k in ("a", "b")}
    for rows in by_key.values():
        for position in range(len(rows) - horizon):
            made_at, due_at = rows[position], rows[position + horizon]
            truth = events.y[due_at]
            # had the oracle learned (inputs, truth) before predicting, it would be exact
            assert predicted["oracle", "level"][made_at] != truth
            # the value is learned once, after the event that revealed it made its own
            # prediction; that event's newest input is the value itself (horizon >= 1)
            # or, for horizon 0, the key's previous value (0 before any)
            previous = events.y[rows[position - 1]] if position else 0.0
            newest = truth if horizon else previous
            learned = [i for i, (kind, v) in enumerate(log) if kind == "learn" and v == truth]
            revealing = log.index(("predict", newest))
            assert len(learned) == 1
            assert learned[0] > revealing


def test_horizon_zero_inputs_never_hold_the_target() -> None:
    events = _two_keys(4)
    log: list[tuple[str, float]] = []
    prequential(events, 0, {"oracle": lambda: Oracle(log)}, ("level",))
    predicted_lag0 = [v for kind, v in log if kind == "predict"]
    assert not set(predicted_lag0) & {float(v) for v in events.y[-2:]}  # last values unseen


def test_inputs_are_lags_then_features_and_change_is_relative() -> None:
    x, base = inputs([1.0, 2.0, 4.0], {"temp": 3.0}, "change")
    assert base == 4.0
    assert [x[f"lag{i}"] for i in range(LAGS)] == [0.0, -2.0, -3.0] + [-3.0] * (LAGS - 3)
    assert x["temp"] == 3.0
    level, base = inputs([1.0, 2.0], {}, "level")
    assert base == 0.0
    assert [level[f"lag{i}"] for i in range(LAGS)] == [2.0] + [1.0] * (LAGS - 1)
    empty, _ = inputs([], {}, "level")
    assert empty == {f"lag{i}": 0.0 for i in range(LAGS)}


def test_every_suite_model_runs_on_a_small_stream() -> None:
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=60))
    events = Events(["k"] * 60, y, rng.normal(size=(60, 2)), ("f0", "f1"))
    predicted = prequential(events, 1, suite())
    assert len(predicted) == 2 * len(suite())
    for values in predicted.values():
        assert np.isfinite(values[10:]).all()


def test_truth_leaves_out_the_start_of_each_key() -> None:
    keys = pd.Series(["a"] * 10 + ["b"] * 5)
    y = np.arange(15.0)
    truth = quality.Truth.of(keys, y, horizon=1)
    # a: 9 scorable, first int(0.2 * 9) = 1 left out; b: 4 scorable, none left out
    assert truth.rows.tolist() == [*range(1, 9), *range(10, 14)]
    assert truth.y.tolist() == [*range(2, 10), *range(11, 15)]


def test_features_are_named_only_while_the_default_does_not_discover_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    explicit = quality.default_settings(1, ("temp",))
    assert explicit["forecast"] == {"horizon": 1}
    assert "models" not in explicit
    if not isinstance(SchemaSettings().features, str):
        assert explicit["schema"] == {"features": ["temp"]}

    class Auto:
        features = "auto"

    monkeypatch.setattr(quality, "SchemaSettings", Auto)
    assert "schema" not in quality.default_settings(1, ("temp",))


@pytest.mark.parametrize(("name", "limit"), [("boston-housing", None), ("co2-weekly", 600)])
def test_one_dataset_end_to_end(name: str, limit: int | None) -> None:
    result = quality.run_case(quality.CASES[name], limit=limit)
    assert result.scored > 0.7 * result.events
    assert result.default_predicted == result.scored
    for value in (result.default_mae, result.persistence_mae, result.river_mae, result.ratio):
        assert math.isfinite(value)
        assert value > 0
    assert 0.0 <= result.coverage <= 1.0
    assert result.with_interval > 0
    assert result.ratio == pytest.approx(
        result.default_mae / min(result.persistence_mae, result.river_mae)
    )


def test_main_filters_datasets_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.json"
    quality.main(["--datasets", "diabetes", "--json", str(out), "--markdown"])
    assert "| `diabetes` | tabular" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert [d["dataset"] for d in payload["datasets"]] == ["diabetes"]
    assert payload["geometric_mean_ratio"] == pytest.approx(payload["datasets"][0]["ratio"])
    with pytest.raises(SystemExit):
        quality.main(["--datasets", "nope"])


def test_without_event_times_every_record_is_forecast_and_the_reference_is_the_same() -> None:
    """``--no-event-times``: nothing dead-lettered (``run_case`` raises if anything
    is), every scorable row predicted, and the reference, which never sees time,
    scores as with them."""
    case = quality.SHORT_CASES["elnino"]
    with_times = quality.run_case(case, limit=240)
    without = quality.run_case(case, limit=240, event_times=False)
    assert without.default_predicted == without.scored == with_times.scored
    assert without.river_mae == with_times.river_mae
    assert without.persistence_mae == with_times.persistence_mae


def test_geometric_mean() -> None:
    assert quality.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)


def test_short_suite_runs_its_own_datasets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--suite short`` runs the short series (seconds), and none of the default suite."""
    out = tmp_path / "short.json"
    quality.main(["--suite", "short", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert [d["dataset"] for d in payload["datasets"]] == list(quality.SHORT_CASES)
    assert set(quality.SHORT_CASES).isdisjoint(quality.CASES)
    assert set(quality.OUTSIDE_CASES).isdisjoint(set(quality.CASES) | set(quality.SHORT_CASES))
    earlier = set(quality.CASES) | set(quality.SHORT_CASES) | set(quality.OUTSIDE_CASES)
    assert set(quality.FRESH_CASES).isdisjoint(earlier)
    assert set(quality.SMALL_CASES).isdisjoint(earlier | set(quality.FRESH_CASES))
    before = earlier | set(quality.FRESH_CASES) | set(quality.SMALL_CASES)
    assert set(quality.LATER_CASES).isdisjoint(before)
    for result in payload["datasets"]:
        assert result["default_predicted"] == result["scored"] > 0
        # the README's table: at worst a hair behind the last value
        assert result["default_mae"] < 1.05 * result["persistence_mae"]
        # and within the held-out check's bound of the reference on every series
        assert result["ratio"] <= 1.10, result["dataset"]
    # and the held-out check's bound on the whole (without the knn member, it is above)
    assert payload["geometric_mean_ratio"] <= 0.95
    capsys.readouterr()


def test_head_scores_each_key_as_if_it_had_started_n_events_ago(tmp_path: Path) -> None:
    """``--head N``: each key's first N events alone, a panel's keys each their own."""
    out = tmp_path / "head.json"
    quality.main(["--datasets", "nile,danish-macro", "--head", "30", "--json", str(out)])
    nile, danish = json.loads(out.read_text())["datasets"]
    assert (nile["events"], nile["keys"]) == (30, 1)
    assert (danish["events"], danish["keys"]) == (5 * 30, 5)
    # per key: 29 scorable (horizon 1), the first fifth of them (5) left out
    assert (nile["scored"], danish["scored"]) == (24, 5 * 24)
    with pytest.raises(SystemExit):
        quality.main(["--datasets", "nile", "--head", "0"])


@pytest.mark.parametrize("name", ["diabetes", "sunspots-yearly"])
def test_intervals_of_a_few_hundred_events_cover_within_three_points(name: str) -> None:
    """A few hundred scored events are enough for ACI to bring coverage to within 3
    points of the 90% asked (its step at 0.005 left both more than 3 points under)."""
    result = quality.run_case(quality.ALL_CASES[name])
    assert result.with_interval > 0.9 * result.scored
    assert result.coverage == pytest.approx(result.nominal, abs=0.03)


def test_set_overrides_the_defaults_and_persistence_alike() -> None:
    """``--set`` reaches the runs it names: learning levels changes the default's MAE
    (its learned members), not persistence's (the last value either way)."""
    case = quality.ALL_CASES["shampoo"]
    plain = quality.run_case(case)
    level = quality.run_case(case, overrides={"FORECASTD_FORECAST__TARGET": "level"})
    assert level.default_mae != plain.default_mae
    assert level.persistence_mae == plain.persistence_mae
    with pytest.raises(SystemExit):
        quality.main(["--datasets", "shampoo", "--set", "FORECASTD_FORECAST__TARGET"])
