"""Reports built once per session for the workbench tests (each replay takes seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.records import RawRecord
from service.tools import replay
from service.workbench.report import Report, build

DEFAULT_MODELS: list[dict[str, Any]] = [
    {"name": "ensemble", "kind": "ensemble", "primary": True},
    {"name": "last", "kind": "persistence"},
    {"name": "ewma", "kind": "ewma", "params": {"alpha": 0.5}},
    {"name": "linear", "kind": "river.linear"},
    {"name": "mlp", "kind": "torch.mlp"},
]

# (dataset, rows used, config): short replays; small polls give learning curves points.
CASES: dict[str, tuple[int, dict[str, Any]]] = {
    "sp500": (2000, {"kafka": {"max_poll_records": 100}, "models": DEFAULT_MODELS}),
    "waterflow": (0, {"kafka": {"max_poll_records": 50}, "models": DEFAULT_MODELS}),
    "diabetes": (
        0,
        {
            "kafka": {"max_poll_records": 25},
            "forecast": {"horizon": 0, "target": "level"},
            "models": [*DEFAULT_MODELS[:1], *DEFAULT_MODELS[2:]],
        },
    ),
}


@dataclass
class Built:
    settings: Settings
    records: list[RawRecord]
    report: Report
    folder: Path


def records_of(name: str, rows: int, settings: Settings) -> list[RawRecord]:
    frame = replay.load_input(name)
    if rows:
        frame = frame.head(rows)
    pairs = replay.encode(frame, replay.Columns(), settings.schema_)
    return replay.as_records(pairs, settings.kafka.input_topic)


@pytest.fixture(scope="session")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    built = {}
    for name, (rows, config) in CASES.items():
        settings = Settings.model_validate(config)
        records = records_of(name, rows, settings)
        folder = tmp_path_factory.mktemp(f"report-{name}")
        built[name] = Built(settings, records, build(records, settings, folder, 0.2, name), folder)
    return built
