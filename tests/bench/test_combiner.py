"""bench.combiner: the replayed ensemble is the daemon's ensemble, within its stated
simplifications, so variants compared on it mean something."""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import pytest

from bench.combiner import (
    Forecasts,
    _member,
    default_members,
    departures,
    departures_table,
    forecasts,
    main,
    ratio_table,
    replayed_mae,
)
from bench.quality import ALL_CASES, Truth, default_settings, feature_columns
from models.ensemble import EnsembleParams
from service.config import Settings
from service.tools import datasets, replay
from service.tools.backtest import run_backtest


def _daemon_mae(dataset: str) -> float:
    case = ALL_CASES[dataset]
    frame = datasets.load(dataset)
    features = feature_columns(frame)
    settings = Settings.model_validate(default_settings(case.horizon, features))
    pairs = replay.encode(frame, replay.Columns(features=features), settings.schema_)
    records = replay.as_records(pairs, settings.kafka.input_topic)
    y_hat = np.full(len(records), np.nan)
    for value in run_backtest(records, settings).published:
        record = orjson.loads(value)
        y_hat[int(record["source"].rsplit(":", 1)[1])] = record["y_hat"]
    truth = Truth.of(frame["key"], frame["y"].to_numpy(dtype=float), case.horizon)
    return float(np.nanmean(np.abs(y_hat[truth.rows] - truth.y)))


@pytest.mark.parametrize("dataset", ["waterflow", "chick-weights"])
def test_the_replayed_default_is_the_daemons_ensemble(dataset: str) -> None:
    """Within 0.1%: on the growth curves (fifty keys of a dozen values) only if the
    replay, like the daemon, does not learn from a key's first value."""
    data = forecasts(dataset)
    members = default_members(data.horizon)
    replayed = replayed_mae(data, members, EnsembleParams())
    assert replayed == pytest.approx(_daemon_mae(dataset), rel=1e-3)


def test_a_head_replays_each_keys_first_events() -> None:
    """``--head``: the growth curves' first four values each, as ``bench.quality``
    scores them."""
    data = forecasts("chick-weights", head=4)
    sizes = datasets.load("chick-weights").groupby("key").size().clip(upper=4)
    assert sizes.max() == 4
    assert sizes.min() < 4  # a few chicks have fewer
    assert len(data.y) == sizes.sum()
    # each key's values but its last are scorable, and a fifth of 3 or fewer is none
    assert len(data.truth.rows) == (sizes - 1).sum()


def test_a_member_set_of_one_is_that_member() -> None:
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=300))
    truth = Truth(np.arange(299), y[1:])
    shifted = np.r_[y[1:], np.nan]  # the forecast made at event i is for event i + 1
    data = Forecasts(
        ("a", "b"), np.column_stack([shifted, shifted + 1.0]), ["k"] * 300, y, 1, truth
    )
    assert replayed_mae(data, ["b"], EnsembleParams()) == pytest.approx(1.0)
    assert replayed_mae(data, ["a", "b"], EnsembleParams()) < 0.2


def test_a_member_is_given_as_name_kind_and_params() -> None:
    assert _member('wide=torch.mlp:{"hidden": [128]}') == {
        "name": "wide",
        "kind": "torch.mlp",
        "params": {"hidden": [128]},
    }
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=KIND"):
        _member("torch.mlp")


def test_many_datasets_print_a_row_each_and_few_a_column_each() -> None:
    """36 datasets as columns did not fit any terminal: rich squeezed each to a few
    characters. With more datasets than runs, each dataset is a row."""
    runs = [("default", EnsembleParams()), ("other", EnsembleParams(eta=0.6))]
    ratios = [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]]
    wide = ratio_table(runs, ["a", "b", "c"], ratios)
    assert [str(c.header).split("\n")[0] for c in wide.columns] == ["dataset", "default", "other"]
    assert list(wide.columns[0].cells) == ["a", "b", "c", "geometric mean"]
    assert list(wide.columns[2].cells) == ["0.500", "2.000", "1.000", "1.000"]
    narrow = ratio_table(runs[:1] * 3, ["a"], [[0.9]] * 3)
    assert [c.header for c in narrow.columns][::2] == ["variant", "a"]
    assert list(narrow.columns[2].cells) == ["0.900"] * 3


def _walk_with_members(events: int, seed: int) -> Forecasts:
    """A random walk; ``half`` moves half the way to the next value, ``noise`` moves
    at random, ``same`` is the last value again."""
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.normal(size=events))
    truth = Truth(np.arange(events - 1), y[1:])
    last = y.copy()
    half = np.r_[y[:-1] + 0.5 * np.diff(y), np.nan]
    noise = y + rng.normal(size=events)
    levels = np.column_stack([last, half, noise, last])
    return Forecasts(("last", "half", "noise", "same"), levels, ["k"] * events, y, 1, truth)


def test_departures_find_what_a_member_knows_of_the_next_value() -> None:
    """The member that knows half of each move explains all of the last value's
    error (its scale is fitted with hindsight); noise explains about its count over
    the rows; the last value again is no column at all."""
    result = departures(_walk_with_members(2001, seed=1), "last")
    assert set(result.correlations) == {"half", "noise"}
    assert result.correlations["half"] == pytest.approx(1.0)
    assert abs(result.correlations["noise"]) < 0.1
    assert result.explained == pytest.approx(1.0)
    assert result.rows == 2000
    assert result.chance == pytest.approx(2 / 2000)


def test_departures_of_noise_alone_explain_about_chance() -> None:
    data = _walk_with_members(4001, seed=2)
    only_noise = Forecasts(
        ("last", "noise"), data.levels[:, [0, 2]], data.keys, data.y, 1, data.truth
    )
    result = departures(only_noise, "last")
    assert result.explained < 10 * result.chance
    table = departures_table([("walk", result)])
    assert [str(c.header) for c in table.columns] == [
        "dataset",
        "rows",
        "noise",
        "explained",
        "chance",
    ]
    assert list(table.columns[4].cells) == ["0.03%"]


def test_departures_run_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """On the Nile the smoothers' departures say where the flow goes next."""
    main(["--departures", "--datasets", "nile"])
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if "nile" in line)
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert cells[0] == "nile"
    explained = float(cells[-2].rstrip("%"))
    assert explained > 3 * float(cells[-1].rstrip("%"))


def test_departures_of_members_that_never_depart_explain_nothing() -> None:
    data = _walk_with_members(50, seed=3)
    again = Forecasts(("last", "same"), data.levels[:, [0, 3]], data.keys, data.y, 1, data.truth)
    result = departures(again, "last")
    assert (result.correlations, result.explained, result.chance) == ({}, 0.0, 0.0)
    flat = Forecasts(
        ("last", "half"),
        np.ones((50, 2)),
        data.keys,
        np.ones(50),
        1,
        Truth(np.arange(49), np.ones(49)),
    )
    assert departures(flat, "last").explained == 0.0
