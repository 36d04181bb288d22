"""What sharing a partition costs: several series in one topic against each alone.

    python -m bench.together                          # the default suite's series
    python -m bench.together --suite fresh --limit 3000
    python -m bench.together --datasets ppg,co2-weekly,sp500
    python -m bench.together --suite outside --members   # and every member's ratio

A partition task's learned members ``river.linear`` and ``torch.mlp`` are one model
for all of the task's keys (the default ``rls`` keeps a fit per hash bucket of the
key, :class:`models.rls.KeyedRLS`, and ``knn`` a window per bucket beside the task's,
:class:`models.knn.KeyedKNN`): the features are in each key's own units, so a
panel of alike series teaches one model more than each series alone would. A topic
often carries unlike series too (sensors of different kinds, a dashboard's
metrics), and then one model learns a blend. This runs the built-in
defaults (``forecast.horizon: 1``, as :mod:`bench.quality`) on each dataset's last
``--limit`` events alone, then on all of them in one partition, the i-th events of
every dataset arriving together (keys prefixed with the dataset's name, so that no
two datasets share a key), and prints per dataset the MAE of the published forecasts
together over alone, scored as :mod:`bench.quality` scores them (the first
:data:`~bench.quality.WARMUP` of each key left out). Exogenous features are left out
(the datasets' differ, and ``schema.features: auto`` takes the first events' names),
and so are tables (``horizon: 0``).

``--members`` runs both again with every model published and prints each member's
ratio too: whether a dataset loses because its members forecast it worse beside the
others (a shared learned model learning a blend) or because the ensemble combines them
worse (its per-key weights).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.quality import (
    ALL_CASES,
    SUITES,
    Truth,
    default_settings,
    geometric_mean,
    published,
)
from service.config import Settings
from service.tools import datasets, replay
from service.tools.backtest import run_backtest


def series_frame(name: str, limit: int) -> pd.DataFrame:
    """Dataset ``name``'s last ``limit`` events (key, time and value only), its keys
    prefixed ``name:``."""
    frame = datasets.load(name).tail(limit)
    keys = name + ":" + frame["key"].astype(str)
    return pd.DataFrame({"key": keys, "ts": frame["ts"], "y": frame["y"]}).reset_index(drop=True)


def interleaved(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One stream of ``frames``: their i-th events together, in the order given."""
    merged = pd.concat([f.assign(_position=np.arange(len(f))) for f in frames], ignore_index=True)
    return merged.sort_values("_position", kind="stable").drop(columns="_position")


def mae_by_dataset(frame: pd.DataFrame) -> dict[str, float]:
    """The default's MAE per dataset (the prefix of the keys) over one backtest of
    ``frame``, scored as :mod:`bench.quality` scores it."""
    primary = Settings.model_validate(default_settings(1, ())).primary.name
    return {name: maes[primary] for name, maes in _maes(frame, every_model=False).items()}


def model_maes_by_dataset(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Every model's MAE per dataset over one backtest of ``frame`` with every model
    published, scored as :func:`mae_by_dataset` scores the primary."""
    return _maes(frame, every_model=True)


def _maes(frame: pd.DataFrame, every_model: bool) -> dict[str, dict[str, float]]:
    """Per dataset (the prefix of the keys), the MAE of the primary, or of every model
    (then all published), over one backtest of ``frame`` with the built-in defaults."""
    frame = frame.reset_index(drop=True)
    y = frame["y"].to_numpy(dtype=float)
    truth = Truth.of(frame["key"], y, 1)
    settings = Settings.model_validate(default_settings(1, ()))
    scored = [settings.primary]
    if every_model:
        scored = [m.model_copy(update={"publish": True}) for m in settings.models]
        settings = settings.model_copy(update={"models": tuple(scored)})
    pairs = replay.encode(frame, replay.Columns(), settings.schema_)
    records = replay.as_records(pairs, settings.kafka.input_topic)
    result = run_backtest(records, settings)
    if result.dead_letters:
        raise RuntimeError(f"{result.dead_letters} events dead-lettered: fix the loader")
    dataset = frame["key"].str.split(":", n=1).str[0].to_numpy()[truth.rows]
    out: dict[str, dict[str, float]] = {name: {} for name in dict.fromkeys(dataset)}
    for model in scored:
        y_hat = published(result.published, model.name, len(records))[0][truth.rows]
        errors = np.abs(y_hat - truth.y)
        for name in out:
            out[name][model.name] = float(np.mean(errors[dataset == name]))
    return out


def _members_table(names: list[str], frames: list[pd.DataFrame]) -> Table:
    """Each model's MAE together over alone, per dataset."""
    alone = {
        name: model_maes_by_dataset(frame)[name] for name, frame in zip(names, frames, strict=True)
    }
    together = model_maes_by_dataset(interleaved(frames))
    models = list(next(iter(alone.values())))
    out = Table(title="every model's MAE together over alone")
    out.add_column("dataset")
    for model in models:
        out.add_column(model, justify="right")
    for name in names:
        out.add_row(name, *[f"{together[name][m] / alone[name][m]:.3f}" for m in models])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", choices=tuple(SUITES), default="default")
    parser.add_argument("--datasets", help=f"comma-separated, of: {', '.join(ALL_CASES)}")
    parser.add_argument("--limit", type=int, default=3000, help="each dataset's last events")
    parser.add_argument(
        "--members", action="store_true", help="every member's ratio too (runs twice as long)"
    )
    args = parser.parse_args(argv)
    if args.limit < 10:
        parser.error("--limit must be at least 10")
    names = [n for n in (args.datasets or ",".join(SUITES[args.suite])).split(",") if n]
    unknown = [name for name in names if name not in ALL_CASES]
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from {', '.join(ALL_CASES)}")
    console = Console(width=max(Console().width, 120))
    tables = [name for name in names if ALL_CASES[name].horizon == 0]
    if tables:
        console.print(f"left out, tables (horizon 0): {', '.join(tables)}")
    names = [name for name in names if name not in tables]
    if not names:
        parser.error("no dataset with horizon >= 1 to run together")
    started = time.perf_counter()
    frames = [series_frame(name, args.limit) for name in names]
    alone = {name: mae_by_dataset(frame)[name] for name, frame in zip(names, frames, strict=True)}
    together = mae_by_dataset(interleaved(frames))
    out = Table(title=f"the defaults' MAE, {len(names)} datasets in one partition over each alone")
    for column in ("dataset", "events", "alone", "together", "together / alone"):
        out.add_column(column, justify="left" if column == "dataset" else "right")
    ratios = []
    for name, frame in zip(names, frames, strict=True):
        ratio = together[name] / alone[name]
        ratios.append(ratio)
        out.add_row(
            name, f"{len(frame):,}", f"{alone[name]:.4g}", f"{together[name]:.4g}", f"{ratio:.3f}"
        )
    out.add_section()
    out.add_row("geometric mean", "", "", "", f"{geometric_mean(ratios):.3f}")
    console.print(out)
    if args.members:
        console.print(_members_table(names, frames))
    worst = max(ratios) if ratios else math.nan
    console.print(
        f"{time.perf_counter() - started:.0f} s in all; the most a dataset lost: {worst:.3f}"
    )


if __name__ == "__main__":
    main()
