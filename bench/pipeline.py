"""Where an event's time goes: the offline pipeline's cost per event, by ablation.

    python -m bench.pipeline                       # configs/demo.yaml on sp500
    python -m bench.pipeline --config configs/stocks.yaml --records 40000
    python -m bench.pipeline --no-ablate --set FORECASTD_KAFKA__MAX_POLL_RECORDS=33
    python -m bench.pipeline --no-ablate --keys 20 --partitions 16   # many partition tasks

Runs ``forecastd backtest``'s pipeline (decode, windows, features, every model,
scoring, drift, intervals, encode; no broker) on the same records several times:

* *plumbing*: the config with its models replaced by ``persistence`` and no drift
  detectors, the cost every event pays whatever the models;
* *drift detectors*: what the configured detectors add (on that single model);
* one row per configured model: what removing it from the full config saves, so each
  model's predict, learn, scoring and drift together;
* *full config*: all of it, the figure to compare with the transport's cost per event
  in ``python -m bench.throughput``;
* one row per ``--variant NAME=MODEL:JSON``: the full config with that model's params
  updated with the JSON object's, e.g. ``--variant 'wide=mlp:{"hidden": [128, 128]}'``:
  what a member's setting costs, measured in the same interleaved rounds as the
  config it changes (``bench.combiner`` says what it buys).

Each figure is the best of ``--repeats`` interleaved runs (the machine is shared and
noisy), in microseconds per event on one core; a difference of a microsecond or two
is within that noise. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.history import repeated_history, spread
from bench.specs import add_set_option, named_params, set_overrides
from service.config import Settings, load_settings
from service.records import RawRecord
from service.runtime.app import set_torch_threads
from service.tools import replay
from service.tools.backtest import run_backtest

ROOT = Path(__file__).resolve().parents[1]


def records_for(
    settings: Settings, dataset: str, count: int, partitions: int = 3, keys: int | None = None
) -> list[RawRecord]:
    """``count`` records of ``dataset`` (repeated, with increasing times), spread over
    ``keys`` keys if given, in ``partitions`` partitions as a keyed produce places them."""
    pairs = repeated_history(dataset, settings.schema_, count)
    if keys is not None:
        pairs = spread(pairs, keys)
    return replay.as_records(pairs, settings.kafka.input_topic, partitions=partitions)


def micros_per_event(settings: Settings, records: list[RawRecord], repeats: int) -> float:
    """Best of ``repeats`` runs, after a warm-up run, in µs per event."""
    return best_micros({"only": settings}, records, repeats)["only"]


def best_micros(
    variants: dict[str, Settings], records: list[RawRecord], repeats: int
) -> dict[str, float]:
    """Per variant, its best of ``repeats`` runs in µs per event. Runs are interleaved
    (each round runs every variant once), so a slow spell on a shared machine costs
    every variant a round rather than one variant all of them."""
    for settings in variants.values():
        run_backtest(records[: len(records) // 10], settings)  # warm up torch and imports
    best = dict.fromkeys(variants, 0.0)
    for _ in range(repeats):
        for name, settings in variants.items():
            best[name] = max(best[name], run_backtest(records, settings).events_per_s)
    return {name: 1e6 / rate for name, rate in best.items()}


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


def _with_params(name: str, params: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        models = [m for m in data["models"] if m["name"] == name]
        if not models:
            known = ", ".join(m["name"] for m in data["models"])
            raise SystemExit(f"--variant: the config has no model {name!r} (it has {known})")
        models[0]["params"] = {**(models[0].get("params") or {}), **params}

    return change


def _variant_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=MODEL:JSON`` as (name, model, params)."""
    return named_params(spec, "--variant", "MODEL", required=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=3, help="partition tasks")
    parser.add_argument("--keys", type=int, default=None, help="spread over this many keys")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--variant",
        type=_variant_spec,
        action="append",
        default=[],
        help="NAME=MODEL:JSON, the full config with MODEL's params updated (repeatable)",
    )
    parser.add_argument(
        "--ablate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the plumbing, detector and per-model rows (--no-ablate: full config and variants)",
    )
    add_set_option(parser, "the config, before any variant")
    args = parser.parse_args(argv)
    settings = load_settings(args.config, env=set_overrides(parser, args.set))
    set_torch_threads(settings.processing.torch_threads)
    records = records_for(settings, args.dataset, args.records, args.partitions, args.keys)
    ablate = args.ablate
    variants = {"full": settings}
    if ablate:
        variants["plumbing"] = variant(settings, _plumbing)
        variants["single"] = variant(settings, _only_persistence)
    if ablate and len(settings.models) > 1:
        for model in settings.models:
            variants[f"without {model.name}"] = variant(settings, _without(model.name))
    for name, model_name, params in args.variant:
        variants[f"variant {name}"] = variant(settings, _with_params(model_name, params))
    micros = best_micros(variants, records, args.repeats)
    full = micros["full"]
    rows: list[tuple[str, float]] = []
    if ablate:
        rows.append(("plumbing (persistence, no drift)", micros["plumbing"]))
        detectors = list(settings.drift.detectors)
        rows.append((f"drift detectors {detectors}", micros["single"] - micros["plumbing"]))
    if ablate and len(settings.models) > 1:
        rows += [
            (f"model {m.name} ({m.kind})", full - micros[f"without {m.name}"])
            for m in settings.models
        ]
    rows.append(("full config", full))
    rows += [
        (f"variant {name}: {model} {orjson.dumps(params).decode()}", micros[f"variant {name}"])
        for name, model, params in args.variant
    ]
    spread_over = f", {args.keys:,} keys" if args.keys else ""
    title = f"{args.config.name}, {args.dataset}{spread_over}, {len(records):,} events"
    table = Table(title=f"{title}, {args.partitions} partitions, offline")
    table.add_column("part")
    table.add_column("µs / event", justify="right")
    for part, cost in rows:
        table.add_row(part, f"{cost:.1f}")
    Console().print(table)
    Console().print(f"full config: {1e6 / full:,.0f} events/s on one core")


if __name__ == "__main__":
    main()
