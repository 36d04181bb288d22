"""Figures and error analysis from the scored predictions of a replay.

Everything here is a function of :attr:`WorkbenchRun.frame` (what ``predictions.parquet``
holds), so anyone can recompute a report's numbers from its parquet file. Definitions
match :class:`service.pipeline.scoring.ScoreStats`, the daemon's own: R² is ``1 - SSE/SST`` and
0 with fewer than two values or a constant truth. MAPE is the mean of ``|e| / |y|``
over rows whose truth is not 0, and ``null`` when every truth is 0 (undefined);
``mape_rows`` says how many rows it covers. Coverage is the share of rows with an
interval whose truth lies inside it (``null`` before the daemon published intervals).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from service.pipeline.scoring import ScoreStats

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

DAY_MS = 86_400_000
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def figures(part: pd.DataFrame) -> dict[str, Any]:
    """MAE, MSE, RMSE, R², MAPE and interval coverage of some scored predictions."""
    y = part["y_true"].to_numpy(np.float64)
    y_hat = part["y_hat"].to_numpy(np.float64)
    stats = ScoreStats.of(y, y_hat)
    err = np.abs(y - y_hat)
    nonzero = y != 0
    lower = part["lower"].to_numpy(np.float64)
    upper = part["upper"].to_numpy(np.float64)
    has = np.isfinite(lower) & np.isfinite(upper)
    return {
        "n": stats.n,
        "mae": stats.mae,
        "mse": stats.mse,
        "rmse": stats.rmse,
        "r2": stats.r2,
        "mape": float(np.mean(err[nonzero] / np.abs(y[nonzero]))) if nonzero.any() else None,
        "mape_rows": int(nonzero.sum()),
        "coverage": float(np.mean((y[has] >= lower[has]) & (y[has] <= upper[has])))
        if has.any()
        else None,
        "interval_rows": int(has.sum()),
    }


def after_warmup(frame: pd.DataFrame, warmup: float) -> pd.DataFrame:
    """Per model, the scored predictions after the first ``warmup`` (a fraction < 1 of
    the model's scored predictions, or a count), in the order they were scored: the
    rule of ``forecastd backtest --warmup``."""
    parts = []
    for _, part in frame.groupby("model", sort=False):
        part = part.sort_values("position", kind="stable")
        skip = int(warmup * len(part)) if warmup < 1 else int(warmup)
        parts.append(part.iloc[skip:])
    if not parts:
        return frame.iloc[0:0]
    return pd.concat(parts, ignore_index=True)


def metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """Per model: overall figures and figures per key."""
    out: dict[str, Any] = {}
    for model, part in frame.groupby("model", sort=False):
        out[str(model)] = {
            "overall": figures(part),
            "keys": {str(k): figures(p) for k, p in part.groupby("key", sort=True)},
        }
    return out


def rolling_mae(part: pd.DataFrame, points: int = 200) -> tuple[FloatArray, FloatArray]:
    """(replay position, mean absolute error over a centred window) for plotting."""
    part = part.sort_values("position", kind="stable")
    err = np.abs(part["y_true"].to_numpy() - part["y_hat"].to_numpy())
    span = max(5, len(err) // 40)
    smooth = pd.Series(err).rolling(span, min_periods=1).mean().to_numpy()
    step = max(1, len(err) // points)
    return part["position"].to_numpy(np.float64)[::step], smooth[::step]


def _times_allow(ts: pd.Series) -> tuple[bool, bool]:
    """Whether hour-of-day and day-of-week breakdowns mean something: a few events per
    cycle (median spacing) and at least two cycles of history."""
    values = np.sort(ts.to_numpy(np.int64))
    if len(values) < 3:
        return False, False
    gaps = np.diff(values)
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        return False, False
    spacing = float(np.median(gaps))
    span = float(values[-1] - values[0])
    hourly = spacing <= DAY_MS / 4 and span >= 2 * DAY_MS
    weekly = spacing <= 7 * DAY_MS / 4 and span >= 14 * DAY_MS
    return hourly, weekly


def _table(part: pd.DataFrame, by: pd.Series) -> list[dict[str, Any]]:
    err = (part["y_true"] - part["y_hat"]).abs()
    grouped = err.groupby(by.to_numpy(), sort=True)
    return [{"group": str(g), "n": len(v), "mae": float(v.mean())} for g, v in grouped if len(v)]


def residual_acf(part: pd.DataFrame, lags: int = 10) -> list[float]:
    """Autocorrelation of the residuals at lags 1..``lags``, within each key (keys
    pooled, weighted by their length): structure the model leaves on the table."""
    sums = np.zeros(lags)
    weight = 0.0
    for _, series in part.sort_values("position", kind="stable").groupby("key", sort=False):
        r = (series["y_true"] - series["y_hat"]).to_numpy(np.float64)
        if len(r) <= lags + 2:
            continue
        r = r - r.mean()
        denominator = float(np.dot(r, r))
        if denominator == 0.0:
            continue
        sums += np.array([np.dot(r[:-k], r[k:]) / denominator for k in range(1, lags + 1)]) * len(r)
        weight += len(r)
    return (sums / weight).tolist() if weight else []


def error_analysis(frame: pd.DataFrame, model: str, periods: int = 20) -> dict[str, Any]:
    """Where one model's errors come from (by key, time, magnitude; autocorrelation)."""
    part = frame[frame["model"] == model]
    if part.empty:
        return {}
    hourly, weekly = _times_allow(part["target_ts"])
    when = pd.to_datetime(part["target_ts"], unit="ms", utc=True)
    out: dict[str, Any] = {"model": model}
    if hourly:
        out["by_hour"] = _table(part, when.dt.hour.map("{:02d}:00 UTC".format))
    if weekly:
        out["by_weekday"] = _table(part, when.dt.day_of_week.map(dict(enumerate(_DAYS))))
    magnitude = part["y_true"].abs()
    if magnitude.nunique() >= 5:
        bins = pd.qcut(magnitude, 5, duplicates="drop")
        labels = bins.map(lambda b: f"|y| {b.left:.4g} to {b.right:.4g}").astype(str)
        out["by_magnitude"] = _table(part, labels)
    by_key = _table(part, part["key"])
    out["worst_keys"] = sorted(by_key, key=lambda r: -r["mae"])[:5]
    order = part.sort_values("position", kind="stable")
    chunk = np.minimum(np.arange(len(order)) * periods // max(1, len(order)), periods - 1)
    rows: list[dict[str, Any]] = []
    for number, (_, piece) in enumerate(order.groupby(chunk, sort=True)):
        start = pd.Timestamp(int(piece["target_ts"].min()), unit="ms", tz="UTC")
        stop = pd.Timestamp(int(piece["target_ts"].max()), unit="ms", tz="UTC")
        rows.append(
            {
                "period": number,
                "from": start.isoformat(),
                "to": stop.isoformat(),
                "n": len(piece),
                "mae": float((piece["y_true"] - piece["y_hat"]).abs().mean()),
            }
        )
    out["worst_periods"] = sorted(rows, key=lambda r: -r["mae"])[:3]
    acf = residual_acf(part)
    out["residual_acf"] = acf
    n = len(part)
    bound = 2.0 / math.sqrt(max(n / max(1, part["key"].nunique()), 1.0))
    out["acf_bound"] = bound
    out["structure_left"] = bool(acf and abs(acf[0]) > bound)
    return out
