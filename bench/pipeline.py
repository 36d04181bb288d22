"""Where an event's time goes: the offline pipeline's cost per event, by ablation.

    python -m bench.pipeline                       # configs/demo.yaml on sp500
    python -m bench.pipeline --config configs/stocks.yaml --records 40000

Runs ``forecastd backtest``'s pipeline (decode, windows, features, every model,
scoring, drift, intervals, encode; no broker) on the same records several times:

* *plumbing*: the config with its models replaced by ``persistence`` and no drift
  detectors, the cost every event pays whatever the models;
* *drift detectors*: what the configured detectors add (on that single model);
* one row per configured model: what removing it from the full config saves, so each
  model's predict, learn, scoring and drift together;
* *full config*: all of it, the figure to compare with the transport's cost per event
  in ``python -m bench.throughput``.

Each figure is the best of ``--repeats`` runs (the machine is shared and noisy), in
microseconds per event on one core. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from service import replay
from service.app import set_torch_threads
from service.backtest import run_backtest
from service.config import Settings, load_settings
from service.records import RawRecord

ROOT = Path(__file__).resolve().parents[1]


def records_for(settings: Settings, dataset: str, count: int) -> list[RawRecord]:
    """``count`` records of ``dataset`` (repeated, with increasing times), 3 partitions."""
    frame = replay.load_input(dataset)
    pairs = replay.encode(frame, replay.Columns(), settings.schema_)
    pairs = (pairs * (count // len(pairs) + 1))[:count]
    timed = [
        (key, orjson.dumps({**orjson.loads(value), "ts": 1_700_000_000_000 + index}))
        for index, (key, value) in enumerate(pairs)
    ]
    return replay.as_records(timed, settings.kafka.input_topic, partitions=3)


def micros_per_event(settings: Settings, records: list[RawRecord], repeats: int) -> float:
    run_backtest(records[: len(records) // 10], settings)  # warm up torch and imports
    best = max(run_backtest(records, settings).events_per_s for _ in range(repeats))
    return 1e6 / best


def variant(settings: Settings, change: Callable[[dict[str, Any]], None]) -> Settings:
    """``settings`` with ``change`` applied to its plain-data form, validated again."""
    data = settings.model_dump(by_alias=True)
    change(data)
    return Settings.model_validate(data)


def _plumbing(data: dict[str, Any]) -> None:
    data["models"] = [{"name": "last", "kind": "persistence", "primary": True}]
    data["drift"]["detectors"] = []


def _only_persistence(data: dict[str, Any]) -> None:
    data["models"] = [{"name": "last", "kind": "persistence", "primary": True}]


def _without(name: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        kept = [m for m in data["models"] if m["name"] != name]
        if not any(m.get("primary") for m in kept):
            kept[0]["primary"] = True
        data["models"] = kept

    return change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings(args.config, env={})
    set_torch_threads(settings.processing.torch_threads)
    records = records_for(settings, args.dataset, args.records)
    plumbing = micros_per_event(variant(settings, _plumbing), records, args.repeats)
    single = micros_per_event(variant(settings, _only_persistence), records, args.repeats)
    full = micros_per_event(settings, records, args.repeats)
    rows = [("plumbing (persistence, no drift)", plumbing)]
    rows.append((f"drift detectors {list(settings.drift.detectors)}", single - plumbing))
    if len(settings.models) > 1:
        for model in settings.models:
            without = micros_per_event(
                variant(settings, _without(model.name)), records, args.repeats
            )
            rows.append((f"model {model.name} ({model.kind})", full - without))
    rows.append(("full config", full))
    table = Table(title=f"{args.config.name}, {args.dataset}, {len(records):,} events, offline")
    table.add_column("part")
    table.add_column("µs / event", justify="right")
    for part, micros in rows:
        table.add_row(part, f"{micros:.1f}")
    Console().print(table)
    Console().print(f"full config: {1e6 / full:,.0f} events/s on one core")


if __name__ == "__main__":
    main()
