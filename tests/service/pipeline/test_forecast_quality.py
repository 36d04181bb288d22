"""Forecast quality as behaviour: the whole pipeline (decode, tasks, features, models,
ensemble, intervals) on in-memory streams, with the built-in default models.

* the poll size changes no score (models work through a poll in event order);
* a random-walk key and a nonlinear-map key in one partition each get the ensemble
  close to their own best member, and so does a key that joins later, at another
  scale;
* keys whose scales differ 100x get intervals 100x apart, and both cover;
* a tabular stream with ``schema.features: auto`` learns from its ``x`` (with a
  category and missing values beside the numbers too), and a small table is forecast
  by a regression on it;
* after a regime switch the ensemble follows the new best member quickly;
* a panel of short growth curves, all starting together, is learned from each key's
  second value on;
* the seasonal naive follows a growing seasonal series;
* a backlog sent without event times (the broker's, a millisecond apart) is forecast
  as well as with them;
* a step series that starts flat near zero does not teach its first step in a guessed
  unit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import pytest

from models.ensemble import Hedge
from service.config import SchemaSettings, Settings
from service.pipeline import tasks
from service.records import RawRecord
from service.tools import datasets, replay
from service.tools.backtest import BacktestResult, run_backtest

HOUR_MS = 3_600_000
START_MS = 1_600_000_000_000  # 2020-09-13: in milliseconds, and not in the future


def _records(rows: list[tuple[str, int, float, dict[str, float] | None]]) -> list[RawRecord]:
    out = []
    for offset, (key, ts, y, x) in enumerate(rows):
        value: dict[str, Any] = {"key": key, "ts": START_MS + ts, "y": float(y)}
        if x is not None:
            value["x"] = {name: float(v) for name, v in x.items()}
        out.append(RawRecord("ticks", 0, offset, key.encode(), orjson.dumps(value)))
    return out


def _flat(value: bytes | None) -> bytes:
    """An input value with the fields of its ``x`` moved beside the target."""
    record = orjson.loads(value or b"")
    features = record.pop("x", {})
    return orjson.dumps({**record, **features})


def _settings(**sections: Any) -> Settings:
    return Settings.model_validate(sections)


def _publish_all(settings: Settings) -> Settings:
    """The same models, every one published, so per-key scores can be read back."""
    models = [m.model_copy(update={"publish": True}) for m in settings.models]
    return settings.model_copy(update={"models": tuple(models)})


def _per_key_mae(
    result: BacktestResult, records: list[RawRecord], horizon: int, skip: int
) -> dict[tuple[str, str], float]:
    """MAE per (model, key) from the published predictions, leaving out each key's
    first ``skip`` scored predictions."""
    values = {r.offset: orjson.loads(r.value or b"") for r in records}
    order: dict[str, list[int]] = defaultdict(list)
    for offset in sorted(values):
        order[values[offset]["key"]].append(offset)
    truth_of: dict[int, float] = {}
    for offsets in order.values():
        for i, offset in enumerate(offsets[: len(offsets) - horizon]):
            truth_of[offset] = values[offsets[i + horizon]]["y"]
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for raw in result.published:
        p = orjson.loads(raw)
        offset = int(p["source"].rsplit(":", 1)[1])
        if offset in truth_of:
            errors[(p["model"], p["key"])].append(abs(truth_of[offset] - p["y_hat"]))
    return {k: float(np.mean(v[skip:])) for k, v in errors.items()}


def _walk_and_map(events: int, seed: int = 3) -> list[RawRecord]:
    """Two keys, interleaved: a random walk (persistence is its best forecast) and a
    noisy nonlinear map ``y' = 2.5 sin(y)`` (a nonlinear model's)."""
    rng = np.random.default_rng(seed)
    walk, level = [], 100.0
    chaos, y = [], 0.5
    for _ in range(events):
        level += rng.normal()
        walk.append(level)
        y = 2.5 * np.sin(y) + rng.normal(0.0, 0.05)
        chaos.append(y)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(events):
        rows.append(("walk", i * HOUR_MS, walk[i], None))
        rows.append(("map", i * HOUR_MS, chaos[i], None))
    return _records(rows)


@pytest.mark.parametrize("models", ["default", "river"])
def test_the_poll_size_changes_no_score(models: str) -> None:
    records = _walk_and_map(300)
    chosen: dict[str, Any] = {}
    if models == "river":  # exact event-by-event learners only
        chosen = {
            "models": [
                {"name": "linear", "kind": "river.linear", "primary": True},
                {"name": "tree", "kind": "river.tree"},
            ]
        }
    maes = {}
    for poll in (1, 16, 1000):
        settings = _settings(kafka={"max_poll_records": poll}, **chosen)
        maes[poll] = {m: s.mae for m, s in run_backtest(records, settings).scores.items()}
    for model, mae in maes[1].items():
        for poll in (16, 1000):
            assert maes[poll][model] == pytest.approx(mae, rel=0.02), (model, poll)


def _intervals(result: BacktestResult) -> dict[str, tuple[float | None, float | None]]:
    published = (orjson.loads(raw) for raw in result.published)
    return {p["source"]: (p["lower"], p["upper"]) for p in published}


@pytest.mark.parametrize("horizon", [0, 1])
def test_the_poll_size_changes_no_interval(horizon: int) -> None:
    """A row predicted and resolved within one poll (every row at horizon 0, most of
    a backlog's) adapts its key's ACI level as one resolved in a later poll does."""
    records = _walk_and_map(300)
    exact = {"models": [{"name": "linear", "kind": "river.linear", "primary": True}]}
    runs = {}
    for poll in (1, 1000):
        settings = _settings(
            kafka={"max_poll_records": poll}, forecast={"horizon": horizon}, **exact
        )
        runs[poll] = _intervals(run_backtest(records, settings))
    assert runs[1].keys() == runs[1000].keys()
    bounded = [source for source, (lower, _) in runs[1].items() if lower is not None]
    assert len(bounded) > 400
    for source in bounded:
        assert runs[1000][source] == pytest.approx(runs[1][source], rel=1e-9), source


def test_the_poll_size_changes_not_when_a_drift_reshuffles_the_ensemble() -> None:
    """Real water flow: spiky, so members' detectors fire, and with a short rolling
    window some member's recent errors fall below its long-run ones, so the ensemble
    forgets its past (``drift.action: shrink``): at the same event whatever the poll
    size, since drift is judged per event, not per poll."""
    frame = datasets.load("waterflow")
    pairs = replay.encode(frame, replay.Columns(), SchemaSettings())
    records = replay.as_records(pairs, "ticks")
    shrinks: dict[int, list[tuple[int, int]]] = {1: [], 1000: []}
    maes = {}
    original = Hedge.drift
    for poll, log in shrinks.items():
        settings = _settings(
            kafka={"max_poll_records": poll},
            scoring={"rolling_window": 100},
            drift={"action": "shrink"},
        )

        def logged(
            self: Hedge, member: int, factor: float, log: list[tuple[int, int]] = log
        ) -> None:
            log.append((self.learned, member))
            original(self, member, factor)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Hedge, "drift", logged)
            maes[poll] = run_backtest(records, settings).scores["ensemble"].mae
    assert shrinks[1], "the stream must make the ensemble act on a drift"
    assert shrinks[1000] == shrinks[1]
    assert maes[1000] == pytest.approx(maes[1], rel=1e-3)


def test_each_key_gets_close_to_its_own_best_member() -> None:
    records = _walk_and_map(1500)
    settings = _publish_all(_settings())
    result = run_backtest(records, settings)
    mae = _per_key_mae(result, records, horizon=1, skip=300)
    members = [m.name for m in settings.models if m.kind != "ensemble"]
    for key in ("walk", "map"):
        best = min(mae[(m, key)] for m in members)
        assert mae[("ensemble", key)] <= 1.05 * best, (key, mae)
    # the two keys really do have different best members
    learned = ("linear", "mlp")
    assert mae[("last", "walk")] < 1.05 * min(mae[(m, "walk")] for m in members)
    assert min(mae[(m, "map")] for m in learned) < 0.5 * mae[("last", "map")]


def test_a_key_that_joins_keys_of_another_scale_gets_close_to_its_own_best_member() -> None:
    """A random walk in the thousands runs alone for 1,500 events, then a nonlinear map
    a hundred thousand times smaller joins its partition. The new key starts from the
    task's pooled weights (persistence in front); before, it also took the pool's
    running errors in the walk's units, so its losses barely moved its weights and
    its ensemble stayed about four times worse than its best member."""
    rng = np.random.default_rng(4)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    level, y = 1000.0, 0.5
    for i in range(2100):
        level += 10.0 * rng.normal()
        rows.append(("big", i * HOUR_MS, level, None))
        if i >= 1500:
            y = 2.5 * np.sin(y) + rng.normal(0.0, 0.05)
            rows.append(("small", i * HOUR_MS, 0.01 * y, None))
    records = _records(rows)
    settings = _publish_all(_settings())
    mae = _per_key_mae(run_backtest(records, settings), records, horizon=1, skip=200)
    members = [m.name for m in settings.models if m.kind != "ensemble"]
    best = min(mae[(m, "small")] for m in members)
    assert mae[("ensemble", "small")] <= 1.05 * best, mae
    assert mae[("last", "small")] > 5 * best  # the pool's favourite is no good here


def _opposite_drivers(events: int, keys: tuple[str, ...], seed: int = 5) -> list[RawRecord]:
    """Interleaved keys whose next value follows the event's feature ``x`` with
    opposite signs (``y' = 10 +- 2x``): one fit for both learns their blend, about no
    effect of ``x`` at all."""
    rng = np.random.default_rng(seed)
    driver = dict.fromkeys(keys, 0.0)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(events):
        for number, key in enumerate(keys):
            sign = 1.0 if number % 2 == 0 else -1.0
            y = 10.0 + sign * 2.0 * driver[key] + rng.normal(0.0, 0.1)
            driver[key] = float(rng.normal())
            rows.append((key, i * HOUR_MS, y, {"x": driver[key]}))
    return _records(rows)


def test_unlike_keys_in_one_partition_each_get_the_default_rls_of_their_own() -> None:
    """The default ``rls`` keeps a fit per key bucket: beside an unlike key, a key's
    forecasts are near those it gets alone, where one fit for both learns that the
    feature has no effect and is several times worse."""
    settings = _publish_all(_settings())
    together = _opposite_drivers(800, ("up", "down"))
    mae = _per_key_mae(run_backtest(together, settings), together, horizon=1, skip=100)
    for key in ("up", "down"):
        alone = [r for r in together if orjson.loads(r.value or b"")["key"] == key]
        alone = [r._replace(offset=i) for i, r in enumerate(alone)]
        own = _per_key_mae(run_backtest(alone, settings), alone, horizon=1, skip=100)
        assert mae[("rls", key)] < 1.2 * own[("rls", key)]
    shared = _settings(models=[{"name": "rls", "kind": "rls", "primary": True}])
    blend = _per_key_mae(run_backtest(together, shared), together, horizon=1, skip=100)
    for key in ("up", "down"):
        assert mae[("rls", key)] < 0.25 * blend[("rls", key)]


def _cycle_among_walks(hours: int, walks: int, seed: int = 6) -> list[RawRecord]:
    """An irregular daily profile (hourly, plus a little noise) interleaved with
    ``walks`` random walks, all in one partition."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(0.0, 1.0, 24)
    levels = [100.0] * walks
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(hours):
        hourly = 50.0 + 10.0 * profile[i % 24] + rng.normal(0.0, 0.3)
        rows.append(("cycle", i * HOUR_MS, hourly, None))
        for w in range(walks):
            levels[w] += rng.normal()
            rows.append((f"walk{w}", i * HOUR_MS, levels[w], None))
    return _records(rows)


def test_knn_finds_a_keys_cycle_among_the_rows_of_other_keys() -> None:
    """A daily profile shares its partition with three random walks. ``knn`` keeps
    rows per key bucket as well as the task's: the profile's neighbours are found
    among weeks of its own hours, within 1.3 of its error alone (1.41 with one window
    of 1,000 rows for every key, and twenty times the seasonal naive's error with a
    window of 100)."""
    settings = _publish_all(_settings())
    together = _cycle_among_walks(600, walks=3)
    alone = _cycle_among_walks(600, walks=0)
    mae = _per_key_mae(run_backtest(together, settings), together, horizon=1, skip=200)
    own = _per_key_mae(run_backtest(alone, settings), alone, horizon=1, skip=200)
    assert mae[("knn", "cycle")] < 1.3 * own[("knn", "cycle")], (mae, own)
    assert mae[("knn", "cycle")] < 2.0 * mae[("seasonal", "cycle")], mae


def test_intervals_follow_each_keys_scale_and_cover() -> None:
    rng = np.random.default_rng(5)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    small = big = 0.0
    for i in range(2500):
        small = 0.7 * small + rng.normal()
        big = 0.7 * big + rng.normal()
        rows.append(("small", i * HOUR_MS, small, None))
        rows.append(("big", i * HOUR_MS, 100.0 * big, None))
    records = _records(rows)
    result = run_backtest(records, _settings())
    values = [orjson.loads(r.value or b"") for r in records]
    truth = {i: values[i + 2]["y"] for i in range(len(values) - 2)}  # next of the same key
    widths: dict[str, list[float]] = defaultdict(list)
    covered: dict[str, list[bool]] = defaultdict(list)
    for raw in result.published:
        p = orjson.loads(raw)
        offset = int(p["source"].rsplit(":", 1)[1])
        if p["lower"] is None or offset not in truth or offset < 1000:
            continue
        widths[p["key"]].append(p["upper"] - p["lower"])
        covered[p["key"]].append(p["lower"] <= truth[offset] <= p["upper"])
    ratio = np.mean(widths["big"]) / np.mean(widths["small"])
    assert 70 < ratio < 140
    for key in ("small", "big"):
        assert np.mean(covered[key]) == pytest.approx(0.9, abs=0.04), key


@pytest.mark.parametrize("flat", [False, True], ids=["x", "flat"])
def test_a_tabular_stream_learns_from_its_features_without_listing_them(flat: bool) -> None:
    """Features in ``x``, or beside the target in a flat record
    (``schema.features_field: ""``)."""
    rng = np.random.default_rng(11)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(1500):
        a, b = rng.normal(), rng.normal()
        rows.append(("house", i * 1000, 3.0 * a - 2.0 * b + rng.normal(0, 0.1), {"a": a, "b": b}))
    schema = {"features_field": ""} if flat else {}
    settings = _settings(forecast={"horizon": 0}, schema=schema)
    assert settings.schema_.features == "auto"
    records = _records(rows)
    if flat:
        records = [r._replace(value=_flat(r.value)) for r in records]
        assert set(orjson.loads(records[0].value or b"")) == {"key", "ts", "y", "a", "b"}
    scores = run_backtest(records, settings, warmup=0.3).scores
    assert scores["ensemble"].mae < 0.2 * scores["last"].mae
    assert scores["linear"].mae < 0.2 * scores["last"].mae


def test_a_table_with_categories_and_missing_values_beside_its_numbers_is_learned() -> None:
    """What a data frame's rows look like as JSON: a category column beside the
    numbers (not an input, never a reason to drop the row) and now and then a missing
    number, written as ``null`` (imputed)."""
    rng = np.random.default_rng(12)
    records = []
    for i in range(1500):
        a, b = rng.normal(), rng.normal()
        x = {"a": a, "b": None if i % 7 == 3 else b, "colour": ["red", "blue"][i % 2]}
        y = 3.0 * a - 2.0 * b + rng.normal(0, 0.1)
        value = orjson.dumps({"key": "house", "ts": START_MS + i * 1000, "y": y, "x": x})
        records.append(RawRecord("ticks", 0, i, b"house", value))
    result = run_backtest(records, _settings(forecast={"horizon": 0}), warmup=0.3)
    assert result.dead_letters == 0
    assert result.scores["ensemble"].mae < 0.3 * result.scores["last"].mae


def test_a_small_table_is_forecast_by_a_regression_on_its_features() -> None:
    """A table of 400 rows whose value stands far from 0 and depends on its features
    through noise: at horizon 0 the default ensemble has a regression of the value on
    the features, and leans on it; without it, the members learn the change from an
    unrelated previous row, and the ensemble is clearly worse."""
    rng = np.random.default_rng(5)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(400):
        a, b, c = rng.normal(size=3)
        y = 500.0 + 40.0 * a - 25.0 * b + 10.0 * c + rng.normal(0, 30.0)
        rows.append(("row", i * 1000, y, {"a": a, "b": b, "c": c}))
    settings = _settings(forecast={"horizon": 0})
    assert "regression" in settings.members(settings.primary)
    scores = run_backtest(_records(rows), settings, warmup=0.3).scores
    without = settings.model_copy(
        update={"models": tuple(m for m in settings.models if m.name != "regression")}
    )
    before = run_backtest(_records(rows), without, warmup=0.3).scores
    assert scores["ensemble"].mae <= 1.05 * scores["regression"].mae
    assert scores["ensemble"].mae < 0.9 * before["ensemble"].mae


def test_a_table_whose_rows_come_sorted_is_regressed_on_its_raw_features() -> None:
    """Rows sorted by a feature (cars by model year): the pipeline scales each row
    with the statistics of the rows before it, and that scale moves all along. The
    tables' member reads the raw features the task keeps beside the scaled ones, so
    its fit stays the truth's; an ``rls`` on the scaled features, run beside it,
    holds its past rows in the scale of their day and drifts away."""
    rng = np.random.default_rng(13)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    years = np.sort(rng.uniform(1970.0, 1982.0, 400))
    for i, year in enumerate(years):
        weight = rng.normal(3000.0, 500.0)
        y = 1.5 * (year - 1970.0) - 0.01 * weight + 50.0 + rng.normal(0, 1.0)
        rows.append(("car", i * 1000, y, {"year": year, "weight": weight}))
    settings = _settings(forecast={"horizon": 0})
    scaled = {
        "name": "scaled",
        "kind": "rls",
        "params": {"inputs": "exogenous", "target": "level", "ridge": 1.0},
    }
    settings = Settings.model_validate(
        {
            **settings.model_dump(by_alias=True, exclude={"models"}),
            "models": [*(m.model_dump() for m in settings.models), scaled],
        }
    )
    scores = run_backtest(_records(rows), settings, warmup=0.3).scores
    assert scores["regression"].mae < 1.2  # the noise's MAE is 0.8
    assert scores["regression"].mae < 0.6 * scores["scaled"].mae
    assert scores["ensemble"].mae < 1.1 * scores["regression"].mae


def _beyond_reach(result: BacktestResult, values: list[float]) -> tuple[float, float]:
    """The farthest any published forecast of a table's row lies outside the range of
    the rows before it, in widths of that range (rows after the fourth), and the
    ensemble's MAE."""
    farthest = 0.0
    for raw in result.published:
        p = orjson.loads(raw)
        row = int(p["source"].rsplit(":", 1)[1])
        if row < 4:
            continue
        low, high = min(values[:row]), max(values[:row])
        width = high - low
        farthest = max(farthest, (low - p["y_hat"]) / width, (p["y_hat"] - high) / width)
    return farthest, result.scores["ensemble"].mae


def test_no_model_forecasts_far_beyond_what_its_key_has_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table of 30 rows whose fourth value is fifteen times the others': the members
    that learn the change from the previous row learned that jump and repeated it,
    scaled, at up to ten times the largest value seen, and the ensemble, its weights
    still near even, published a share of it. Every model's forecast now stays within
    the range of the key's earlier values widened by its width on each side
    (:func:`~service.pipeline.tasks.reach_bounds`); lifting the bound shows the
    stream does break it."""
    rng = np.random.default_rng(1)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(30):
        a, b = rng.normal(size=2)
        y = 600.0 if i == 3 else 40.0 + 15.0 * a + rng.normal(0, 5.0)
        rows.append(("row", i * 1000, y, {"a": a, "b": b}))
    values = [y for _, _, y, _ in rows]
    settings = _publish_all(_settings(forecast={"horizon": 0}))
    bounded, mae = _beyond_reach(run_backtest(_records(rows), settings), values)
    _lift_the_bounds(monkeypatch)
    unbounded, unbounded_mae = _beyond_reach(run_backtest(_records(rows), settings), values)
    assert unbounded > 3.0  # the stream does provoke forecasts far out
    assert bounded <= tasks.REACH + 1e-9
    assert mae < 0.8 * unbounded_mae


def test_a_series_that_never_went_below_zero_is_not_forecast_below_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hourly output that is 0 every night (solar power, a shop's sales): the models of
    its changes forecast a dip below the night's zeros as the evening falls; every
    forecast now stays at or above 0, and the ensemble's error falls with it."""
    rng = np.random.default_rng(2)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(24 * 30):
        hour = i % 24
        day = 10.0 * math.sin(2 * math.pi * (hour - 6) / 24) + rng.normal(0.0, 1.0)
        rows.append(("sun", i * HOUR_MS, max(0.0, day) if 6 < hour < 18 else 0.0, None))
    settings = _publish_all(_settings(forecast={"horizon": 1}))

    def below_zero(result: BacktestResult) -> int:
        """Forecasts below 0 after the key's fourth value (by more than the rounding of
        a level taken to a change in key units and back)."""
        made = (orjson.loads(raw) for raw in result.published)
        return sum(
            1 for p in made if int(p["source"].rsplit(":", 1)[1]) >= 4 and p["y_hat"] < -1e-12
        )

    floored = run_backtest(_records(rows), settings)
    _lift_the_bounds(monkeypatch)
    free = run_backtest(_records(rows), settings)
    assert below_zero(free) > 100  # the stream does provoke forecasts below 0
    assert below_zero(floored) == 0
    assert floored.scores["ensemble"].mae < 0.98 * free.scores["ensemble"].mae


def _lift_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """No bound on any model's output (as before :func:`~service.pipeline.tasks.reach_bounds`)."""

    def unbounded(
        histories: np.ndarray, offset: np.ndarray, scale: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(offset), np.nan), np.full(len(offset), np.nan)

    monkeypatch.setattr(tasks, "reach_bounds", unbounded)


def test_after_a_regime_switch_the_ensemble_follows_the_new_best_member() -> None:
    """A random walk, then a clean daily cycle: persistence leads, then seasonal."""
    rng = np.random.default_rng(2)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    level = 0.0
    for i in range(1600):
        if i < 800:
            level += rng.normal()
            y = level
        else:
            y = 10.0 * np.sin(2 * np.pi * i / 24) + rng.normal(0, 0.1)
        rows.append(("k", i * HOUR_MS, y, None))
    records = _records(rows)
    settings = _settings(
        forecast={"seasonal_periods": [24]},
        models=[
            {"name": "ensemble", "kind": "ensemble", "primary": True},
            {"name": "last", "kind": "persistence"},
            {"name": "seasonal", "kind": "seasonal_naive"},
        ],
    )
    result = run_backtest(records, settings)
    leaders = [orjson.loads(raw)["leader"] for raw in result.published]
    assert leaders[700:800].count("last") > 90
    switched = next(i for i in range(800, 1600) if leaders[i : i + 20].count("seasonal") == 20)
    assert switched - 800 < 100  # a tenth of the ensemble's memory


def _three_keys(events: int, poison_at: int | None) -> list[RawRecord]:
    rng = np.random.default_rng(9)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    state = dict.fromkeys("abc", 0.0)
    for i in range(events):
        for key in "abc":
            state[key] = 0.8 * state[key] + rng.normal()
            y = 1e300 if (key == "a" and i == poison_at) else 10.0 + state[key]
            rows.append((key, i * HOUR_MS, y, None))
    return _records(rows)


def test_one_absurd_value_poisons_neither_other_keys_nor_the_metrics() -> None:
    settings = _publish_all(_settings())
    clean = _three_keys(800, None)
    poisoned = _three_keys(800, 400)
    control = _per_key_mae(run_backtest(clean, settings), clean, 1, 200)
    result = run_backtest(poisoned, settings)
    hit = _per_key_mae(result, poisoned, 1, 200)
    assert result.dead_letters == 1  # the 1e300, as an outlier
    for key in ("b", "c"):
        assert hit[("ensemble", key)] == pytest.approx(control[("ensemble", key)], rel=0.05)
    for stats in result.scores.values():
        assert np.isfinite([stats.mae, stats.mse, stats.r2]).all()


def test_a_new_level_is_taken_after_a_few_outliers() -> None:
    rng = np.random.default_rng(4)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for i in range(600):
        level = 0.0 if i < 300 else 10_000.0
        rows.append(("k", i * HOUR_MS, level + rng.normal(), None))
    records = _records(rows)
    result = run_backtest(records, _settings())
    assert result.dead_letters == 3  # outlier_patience, then the new level is taken
    last = [orjson.loads(raw) for raw in result.published][-50:]
    assert all(abs(p["y_hat"] - 10_000.0) < 10 for p in last)


def _growth_panel(keys: int, values: int, seed: int = 7) -> list[RawRecord]:
    """``keys`` growth curves of ``values`` values each, every two days, all starting
    on the same day (a chick-weight panel): a start near 40, a rate and a bend of its
    own, noise."""
    rng = np.random.default_rng(seed)
    starts = rng.normal(40.0, 2.0, keys)
    rates = rng.uniform(4.0, 12.0, keys)
    bends = rng.uniform(0.0, 0.6, keys)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for t in range(values):
        for k in range(keys):
            y = starts[k] + rates[k] * t + bends[k] * t * t + rng.normal(0.0, 2.0)
            rows.append((f"chick-{k}", t * 48 * HOUR_MS, y, None))
    return _records(rows)


def test_a_panel_of_short_growth_curves_is_learned_from_the_start() -> None:
    """Twelve values per key: rows are learned from each key's second value, in units
    of its first change, and young keys weigh members by the task's pooled errors.
    Waiting for four values per key, as before, cost a third of each curve (and the
    ensemble's MAE was above half of persistence's)."""
    scores = run_backtest(_growth_panel(keys=40, values=12), _settings()).scores
    assert scores["ensemble"].mae < 0.45 * scores["last"].mae
    assert scores["linear"].mae < 0.45 * scores["last"].mae


def test_a_young_key_is_not_judged_an_outlier_by_its_first_change() -> None:
    """A key that barely moved once, then moves for real: a unit from one change is
    enough to scale a target, not to dead-letter the event."""
    rows: list[tuple[str, int, float, dict[str, float] | None]] = [
        ("k", 0, 100.0, None),
        ("k", HOUR_MS, 100.001, None),
        ("k", 2 * HOUR_MS, 150.0, None),
        ("k", 3 * HOUR_MS, 151.0, None),
    ]
    for poll in (1, 1000):  # judged by the stored unit, and within one poll
        result = run_backtest(_records(rows), _settings(kafka={"max_poll_records": poll}))
        assert result.dead_letters == 0, poll


def test_the_seasonal_naive_follows_a_growing_seasonal_series() -> None:
    """Twenty years of a monthly series growing by 2 a month around a yearly cycle (an
    airline's passengers): the value a year ago is 24 short of the trend, the same
    months' change is not."""
    rng = np.random.default_rng(8)
    rows: list[tuple[str, int, float, dict[str, float] | None]] = []
    for month in range(240):
        y = 100.0 + 2.0 * month + 20.0 * np.sin(2 * np.pi * month / 12) + rng.normal(0, 1)
        rows.append(("passengers", month * 24 * HOUR_MS, y, None))  # ts: not in the future
    scores = run_backtest(_records(rows), _settings(), warmup=0.4).scores
    assert scores["seasonal"].mae < 0.3 * scores["last"].mae
    assert scores["ensemble"].mae < 0.3 * scores["last"].mae


@pytest.mark.parametrize("name", ["airline-passengers", "elec-equip"])
def test_a_backlog_sent_without_event_times_is_forecast_as_well_as_with_them(name: str) -> None:
    """A monthly series as a backlog whose records carry no ``ts``: their event times
    are the broker's, a millisecond apart. Airline passengers: the calendar features
    of a cycle the key has not spanned were a disguised event counter, and the
    learned members took it for a trend (14% worse than with the months' dates before
    they waited for a quarter of their cycle). Electrical equipment: with no calendar
    period to propose the year, season detection found none, or the quarters inside
    it (86% worse before the peak's divisors were candidates)."""
    frame = datasets.load(name)
    settings = _settings()
    scores = []
    for time in ("ts", None):
        pairs = replay.encode(frame, replay.Columns(time=time), settings.schema_)
        records = [
            record._replace(timestamp_ms=START_MS + offset)
            for offset, record in enumerate(replay.as_records(pairs, "ticks"))
        ]
        scores.append(run_backtest(records, settings, warmup=0.2).scores["ensemble"].mae)
    with_dates, without = scores
    assert without < 1.03 * with_dates


def test_a_step_series_does_not_learn_its_first_step_in_a_guessed_unit() -> None:
    """A monthly index near zero, flat for a year, then one step and flat again (a
    quantised or administered value). Until the step the key's unit is a guess (1% of
    its level, a five-hundredth of the step), so the step would be a target of 500 units,
    clipped to 30: every learned member then predicted steps through the flat months
    after it, at several times persistence's error, and the ensemble paid for them.
    Rows in a guessed unit now teach only "no change"."""
    values = [0.01] * 12 + [0.06] * 60
    rows: list[tuple[str, int, float, dict[str, float] | None]] = [
        ("index", month * 31 * 24 * HOUR_MS, y, None) for month, y in enumerate(values)
    ]
    scores = run_backtest(_records(rows), _settings(), warmup=0.0).scores
    last = scores["last"].mae
    for member in ("linear", "rls", "mlp", "knn"):
        assert scores[member].mae <= 1.05 * last, (member, scores[member].mae / last)
    # the flat year tells no member apart, so the month after the step is forecast by
    # all of them, the slow EWMA and Holt's trend still far behind it: that one month
    # is most of the ensemble's excess (learned members predicting steps cost several
    # times persistence's error)
    assert scores["ensemble"].mae <= 1.2 * last
