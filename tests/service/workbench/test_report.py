"""The report folder: its figures recompute from its own parquet file, and they are
the daemon's own scores (the same replay through ``forecastd backtest``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.config import Settings
from service.tools import replay
from service.tools.backtest import run_backtest
from service.workbench.analysis import DAY_MS
from service.workbench.report import build
from tests.service.workbench.conftest import CASES, Built, records_of

FILES = ("metrics.json", "predictions.parquet", "index.html")


def _recompute(part: pd.DataFrame) -> dict[str, Any]:
    """MAE, MSE, RMSE, R², MAPE, coverage written out by hand from the definitions."""
    y = part["y_true"].to_numpy()
    e = y - part["y_hat"].to_numpy()
    sst = float(np.sum((y - y.mean()) ** 2))
    nz = y != 0
    has = part["lower"].notna() & part["upper"].notna()
    inside = (part["y_true"] >= part["lower"]) & (part["y_true"] <= part["upper"])
    return {
        "n": len(y),
        "mae": float(np.mean(np.abs(e))),
        "mse": float(np.mean(e**2)),
        "rmse": math.sqrt(float(np.mean(e**2))),
        "r2": 1 - float(np.sum(e**2)) / sst if sst > 0 and len(y) > 1 else 0.0,
        "mape": float(np.mean(np.abs(e[nz]) / np.abs(y[nz]))) if nz.any() else None,
        "coverage": float(inside[has].mean()) if has.any() else None,
    }


def _close(reported: dict[str, Any], mine: dict[str, Any]) -> None:
    for name, value in mine.items():
        if value is None:
            assert reported[name] is None, name
        else:
            assert reported[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("name", list(CASES))
def test_metrics_json_recomputes_from_predictions_parquet(
    reports: dict[str, Built], name: str
) -> None:
    built = reports[name]
    for file in FILES:
        assert (built.folder / file).stat().st_size > 0
    document = json.loads((built.folder / "metrics.json").read_text())
    frame = pd.read_parquet(built.folder / "predictions.parquet")
    scored = frame[~frame["warmup"]]
    models = {m.name for m in built.settings.models}
    assert set(document["models"]) == models
    for model in models:
        part = scored[scored["model"] == model]
        assert len(part) > 100
        _close(document["models"][model]["overall"], _recompute(part))
        keys = document["models"][model]["keys"]
        assert set(keys) == set(part["key"].astype(str))
        for key, mine in part.groupby("key"):
            _close(keys[str(key)], _recompute(mine))
    primary = document["models"][built.settings.primary.name]["overall"]
    assert 0.5 < primary["coverage"] < 1.0  # the daemon's 90% intervals were joined
    assert all(document["consistent_with_daemon_scores"].values())


def test_report_scores_are_forecastd_backtests(reports: dict[str, Built]) -> None:
    """The same replay through ``forecastd backtest``'s own function gives the report's
    numbers: the probes and the publishing change nothing the daemon computes."""
    built = reports["waterflow"]
    plain = run_backtest(built.records, built.settings, warmup=0.2)
    reported = built.report.run.as_backtest(0.2).scores
    document = json.loads((built.folder / "metrics.json").read_text())
    for model, stats in plain.scores.items():
        assert reported[model].n == stats.n
        assert reported[model].mae == pytest.approx(stats.mae, rel=1e-12)
        assert reported[model].rmse == pytest.approx(stats.rmse, rel=1e-12)
        assert document["models"][model]["overall"]["mae"] == pytest.approx(stats.mae, rel=1e-9)
        assert document["models"][model]["overall"]["r2"] == pytest.approx(stats.r2, rel=1e-9)


def test_every_prediction_comes_with_its_truth(reports: dict[str, Built]) -> None:
    """horizon 1: the truth is the key's next value, whose time follows the prediction's."""
    frame = pd.read_parquet(reports["sp500"].folder / "predictions.parquet")
    assert (frame["target_ts"] > frame["ts"]).all()
    sample = frame[(frame["model"] == "last")]
    assert (sample["y_hat"] == sample["y_last"]).all()  # persistence predicts the last value


def test_report_explains_fit_and_errors_in_words(reports: dict[str, Built]) -> None:
    built = reports["waterflow"]
    document = json.loads((built.folder / "metrics.json").read_text())
    fit = {v["model"]: v for v in document["fit"]}
    assert set(fit) == {"linear", "mlp"}  # the models that learn
    assert all(v["verdict"] in {"unstable", "overfit", "underfit", "fits"} for v in fit.values())
    page = (built.folder / "index.html").read_text()
    for model, verdict in fit.items():
        assert f"{model}: {verdict['verdict']}" in page
    errors = document["errors"]["ensemble"]
    span = built.report.run.frame["target_ts"]
    assert span.max() - span.min() > 14 * DAY_MS  # hourly data over weeks: both tables
    assert len(errors["by_hour"]) == 24
    assert len(errors["by_weekday"]) == 7
    assert len(errors["residual_acf"]) == 10
    assert "Worst periods" in page
    assert document["explanations"]["ensemble"]["members"]


def test_tabular_data_has_no_calendar_tables(reports: dict[str, Built]) -> None:
    """diabetes rows are one second apart: hour-of-day would mean nothing."""
    document = json.loads((reports["diabetes"].folder / "metrics.json").read_text())
    errors = document["errors"]["ensemble"]
    assert "by_hour" not in errors
    assert "by_weekday" not in errors
    assert errors["by_magnitude"]


def test_clipped_truths_are_the_ones_the_daemon_scored(tmp_path: Path) -> None:
    """With ``forecast.outliers: clip`` the daemon scores a clipped value; the report
    keeps the truths the tasks scored, so its figures are still the daemon's."""
    settings = Settings.model_validate(
        {
            "forecast": {"outliers": "clip", "outlier_threshold": 2},
            "models": [
                {"name": "last", "kind": "persistence", "primary": True},
                {"name": "ewma", "kind": "ewma"},
            ],
        }
    )
    records = records_of("waterflow", 0, settings)
    report = build(records, settings, tmp_path, 0.0, "waterflow")
    plain = run_backtest(records, settings, warmup=0.0)
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert all(document["consistent_with_daemon_scores"].values())
    for model, stats in plain.scores.items():
        assert document["models"][model]["overall"]["mae"] == pytest.approx(stats.mae, rel=1e-9)
    joined = report.run.frame
    clipped = joined[joined["model"] == "last"]
    raw = replay.load_input("waterflow")["y"].to_numpy()
    assert not np.isin(clipped["y_true"].to_numpy(), raw).all()  # some truths were clipped
