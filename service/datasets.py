"""Real data shipped inside installed packages, as long-format frames.

Each loader returns a DataFrame with columns ``key``, ``ts`` (UTC timestamps), ``y`` and
optional feature columns, sorted by time: one row per event, as it would arrive.

* ``sp500``: ten S&P 500 stocks, daily, Feb 2013 - Feb 2018 (River's ``SP500Stocks``,
  12,570 events). River ships daily simple returns; ``y`` is the price index rebuilt
  from them (100 on the first day), a level-drifting series like the prices users
  forecast.
* ``sp500-returns``: the same stocks, ``y`` is the daily return in percent.
* ``waterflow``: hourly water flow through a pipe (River's ``WaterFlow``, 1,268 events).
* ``chick-weights``: 50 chicks weighed every few days, feature ``diet`` (578 events).
* ``trump-approval``: approval rating with five pollsters as features (1,001 events;
  made for ``horizon: 0`` regression).

Synthetic, seeded (for accuracy benchmarks and tests):

* ``nonlinear-ar``: four keys of the chaotic logistic map with noise,
  ``y_t = 3.7 y_{t-1} (1 - y_{t-1}) + e``, ``e ~ N(0, 0.01²)``, kept in (0, 1): a
  stationary series that no linear model of its lags fits.
* ``friedman-drift``: River's ``FriedmanDrift`` (12,000 events, ten features, the target a nonlinear
  function of five; the function changes at 1/3 and 2/3 of the stream), one key.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from service.errors import DatasetError


def _river_csv(name: str) -> str:
    from importlib.resources import files

    return str(files("river.datasets").joinpath(name))


def _sp500_frame() -> pd.DataFrame:
    wide = pd.read_csv(_river_csv("sp500.csv.gz"), parse_dates=["date"])
    wide = wide.drop(columns=["next_day_return"])
    long = wide.melt(id_vars="date", var_name="key", value_name="ret")
    return long.rename(columns={"date": "ts"})


def sp500_prices() -> pd.DataFrame:
    frame = _sp500_frame().sort_values(["key", "ts"])
    frame["y"] = frame.groupby("key")["ret"].transform(lambda r: 100 * (1 + r / 100).cumprod())
    return _finish(frame.drop(columns="ret"))


def sp500_returns() -> pd.DataFrame:
    return _finish(_sp500_frame().rename(columns={"ret": "y"}))


def waterflow() -> pd.DataFrame:
    frame = pd.read_csv(_river_csv("water-flow.csv"), parse_dates=["Time"])
    frame = frame.rename(columns={"Time": "ts", "Water flow [l/s]": "y"})
    frame["key"] = "pipe"
    return _finish(frame[["key", "ts", "y"]])


def chick_weights() -> pd.DataFrame:
    frame = pd.read_csv(_river_csv("chick-weights.csv"))
    start = pd.Timestamp("2020-01-01", tz="UTC")
    return _finish(
        pd.DataFrame(
            {
                "key": "chick-" + frame["chick"].astype(str),
                "ts": start + pd.to_timedelta(frame["time"], unit="D"),
                "y": frame["weight"].astype(float),
                "diet": frame["diet"].astype(float),
            }
        )
    )


def trump_approval() -> pd.DataFrame:
    frame = pd.read_csv(_river_csv("trump_approval.csv.gz"))
    days = frame["ordinal_date"] - 719163  # proleptic ordinal of 1970-01-01
    ts = pd.to_datetime(days, unit="D", utc=True)
    features = frame.drop(columns=["ordinal_date", "five_thirty_eight"])
    return _finish(
        pd.DataFrame({"key": "approval", "ts": ts, "y": frame["five_thirty_eight"], **features})
    )


def nonlinear_ar(events_per_key: int = 2500, keys: int = 4, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for index in range(keys):
        y = [float(rng.uniform(0.1, 0.9))]
        for _ in range(events_per_key):
            following = 3.7 * y[-1] * (1.0 - y[-1]) + rng.normal(0.0, 0.01)
            y.append(float(np.clip(following, 0.001, 0.999)))
        for step, value in enumerate(y[1:]):
            rows.append((f"ar-{index}", start + pd.Timedelta(seconds=step), float(value)))
    return _finish(pd.DataFrame(rows, columns=["key", "ts", "y"]))


def friedman_drift(events: int = 12000, seed: int = 42) -> pd.DataFrame:
    from river.datasets import synth

    stream = synth.FriedmanDrift(
        drift_type="gra", position=(events // 3, 2 * events // 3), seed=seed
    )
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for step, (x, y) in enumerate(stream.take(events)):
        rows.append({"key": "friedman", "ts": start + pd.Timedelta(seconds=step), "y": y, **x})
    frame = pd.DataFrame(rows)
    return _finish(frame.rename(columns={i: f"x{i}" for i in range(10)}))


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.sort_values(["ts", "key"], kind="stable").reset_index(drop=True)


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "sp500": sp500_prices,
    "sp500-returns": sp500_returns,
    "waterflow": waterflow,
    "chick-weights": chick_weights,
    "trump-approval": trump_approval,
    "nonlinear-ar": nonlinear_ar,
    "friedman-drift": friedman_drift,
}


def load(name: str) -> pd.DataFrame:
    """The bundled dataset ``name``; raises DatasetError listing the known names."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        ) from None
    return loader()
