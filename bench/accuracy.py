"""Prequential accuracy of every model kind, offline, through the daemon's pipeline.

Three streams: River's ``FriedmanDrift`` (regression, ``horizon: 0``, drifting), a
seeded nonlinear autoregressive series (four keys, ``horizon: 1``), and the S&P 500
prices (``horizon: 1``). Prints MAE and R² after warm-up (the first 20% of scored
predictions left out) for persistence, EWMA, River linear, River tree, ``torch.mlp``
and ``torch.attention``.

Usage: ``python -m bench.accuracy`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from service.config import Settings
from service.tools import replay
from service.tools.backtest import BacktestResult, run_backtest

WARMUP = 0.2

MODELS: list[dict[str, Any]] = [
    {"name": "last", "kind": "persistence"},
    {"name": "ewma", "kind": "ewma", "params": {"alpha": 0.5}},
    {"name": "linear", "kind": "river.linear"},
    {"name": "tree", "kind": "river.tree"},
    {"name": "mlp", "kind": "torch.mlp", "primary": True},
    {"name": "attention", "kind": "torch.attention"},
]


@dataclass(frozen=True)
class Case:
    """A stream and the forecasting setup it is scored under."""

    dataset: str
    settings: dict[str, Any]
    features: tuple[str, ...] = ()


CASES = {
    "friedman-drift": Case(
        "friedman-drift",
        {"forecast": {"horizon": 0, "target": "level", "window": 8, "lags": 4}},
        tuple(f"x{i}" for i in range(10)),
    ),
    "nonlinear-ar": Case(
        "nonlinear-ar", {"forecast": {"horizon": 1, "target": "level", "window": 8, "lags": 4}}
    ),
    "sp500": Case("sp500", {"forecast": {"horizon": 1, "target": "change", "window": 32}}),
}


def settings_for(case: Case, models: list[dict[str, Any]] | None = None) -> Settings:
    data = {
        **case.settings,
        "schema": {"features": list(case.features)},
        "kafka": {"max_poll_records": 100},
        "models": models or MODELS,
    }
    return Settings.model_validate(data)


def run_case(case: Case, models: list[dict[str, Any]] | None = None) -> BacktestResult:
    settings = settings_for(case, models)
    frame = replay.load_input(case.dataset)
    columns = replay.Columns(features=case.features)
    pairs = replay.encode(frame, columns, settings.schema_)
    records = replay.as_records(pairs, settings.kafka.input_topic)
    return run_backtest(records, settings, warmup=WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description="prequential MAE and R² per model")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"prequential scores after warm-up ({WARMUP:.0%} left out)")
    table.add_column("stream")
    table.add_column("model")
    for column in ("MAE", "R²", "MAE / linear"):
        table.add_column(column, justify="right")
    for name in args.cases:
        result = run_case(CASES[name])
        linear = result.scores["linear"].mae
        for model in MODELS:
            stats = result.scores[model["name"]]
            table.add_row(
                name,
                model["name"],
                f"{stats.mae:.4f}",
                f"{stats.r2:.4f}",
                f"{stats.mae / linear:.2f}",
            )
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
