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
    forecasts,
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
