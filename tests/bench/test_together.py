"""bench.together: one stream of several datasets, scored per dataset as each alone is."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import together
from bench.quality import ALL_CASES, run_case


def test_alone_is_what_bench_quality_scores() -> None:
    """A featureless series' MAE alone is bench.quality's default column, so the
    together/alone ratios are ratios of the figures the quality tables print."""
    frame = together.series_frame("nile", limit=1000)
    assert frame["key"].str.startswith("nile:").all()
    assert together.mae_by_dataset(frame)["nile"] == pytest.approx(
        run_case(ALL_CASES["nile"]).default_mae, rel=1e-12
    )


def test_interleaving_keeps_each_series_in_order_and_takes_turns() -> None:
    first = pd.DataFrame({"key": "a:x", "ts": [1, 2, 3], "y": [1.0, 2.0, 3.0]})
    second = pd.DataFrame({"key": "b:x", "ts": [7, 8], "y": [10.0, 20.0]})
    merged = together.interleaved([first, second])
    assert merged["y"].tolist() == [1.0, 10.0, 2.0, 20.0, 3.0]


def test_unlike_series_in_one_partition_are_scored_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two series in one stream: each is scored on its own keys, and they do share the
    partition's learned members: the monthly series with a growing yearly cycle is
    forecast otherwise than alone next to the annual flow (a little worse, the cost
    the README states)."""
    names = ("nile", "airline-passengers")
    frames = [together.series_frame(n, limit=1000) for n in names]
    alone = {n: together.mae_by_dataset(f)[n] for n, f in zip(names, frames, strict=True)}
    mixed = together.mae_by_dataset(together.interleaved(frames))
    assert set(mixed) == set(names)
    assert mixed["airline-passengers"] != pytest.approx(alone["airline-passengers"], rel=0.01)
    together.main(["--datasets", "nile,airline-passengers,diabetes"])
    out = capsys.readouterr().out
    assert "left out, tables (horizon 0): diabetes" in out
    assert "airline-passengers" in out


def test_a_table_alone_is_refused() -> None:
    with pytest.raises(SystemExit):
        together.main(["--datasets", "diabetes"])


def test_every_member_is_scored_apart_and_the_per_key_ones_lose_nothing() -> None:
    """``--members``: persistence, the seasonal naive and the EWMA keep no state across
    keys, so sharing a partition changes none of their forecasts; the ensemble's row
    is the primary's, as ``mae_by_dataset`` scores it."""
    names = ("nile", "airline-passengers")
    frames = [together.series_frame(n, limit=1000) for n in names]
    mixed = together.interleaved(frames)
    every = together.model_maes_by_dataset(mixed)
    primary = together.mae_by_dataset(mixed)
    alone = {
        name: together.model_maes_by_dataset(frame)[name]
        for name, frame in zip(names, frames, strict=True)
    }
    for name in names:
        for member in ("last", "seasonal", "ewma"):
            assert every[name][member] == pytest.approx(alone[name][member], rel=1e-12)
        assert every[name]["ensemble"] == pytest.approx(primary[name], rel=1e-12)
    # River's linear model is one fit for the task: beside the airline passengers it
    # learns a blend of the two series, and the Nile's forecasts suffer
    assert every["nile"]["linear"] > 1.1 * alone["nile"]["linear"]
