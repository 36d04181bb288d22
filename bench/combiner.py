"""What another ensemble would score: the combiner replayed on its members' forecasts.

    python -m bench.combiner                                 # the default, replayed
    python -m bench.combiner --member mlp_lr1=torch.mlp:'{"lr": 0.01}' \\
        --variant base=last,seasonal,ewma,linear,rls,mlp \\
        --variant more=last,seasonal,ewma,linear,rls,mlp,mlp_lr1
    python -m bench.combiner --eta 0.3,0.6 --share 0.003,0.01 --memory 300,1000
    python -m bench.combiner --share 0.001,0.021 --past-share 0,0.02 --past-memory 300
    python -m bench.combiner --prior-events 1,10,100
    python -m bench.combiner --eta-warmup 1,100,200,300
    python -m bench.combiner --departures --datasets sp500,nile

Members learn from the truth, never from the ensemble, so their forecasts do not
depend on how they are combined. This runs the built-in default for the dataset's
horizon (plus any ``--member``) once per dataset of :mod:`bench.quality`, every model
published, and then replays :class:`models.ensemble.Hedge` over those forecasts,
event by event in arrival order (each forecast combined before its truth is learned),
for every member set (``--variant``) and every ``eta``/``share``/``memory``/
``past_share``/``past_memory``/``prior_events``/``eta_warmup`` given (their product; a pair whose
shares add up to 1 or more is skipped). That takes seconds per variant where a run
of the daemon takes a minute, so the combiner's settings and the default member set
can be chosen on all datasets at once.

The replay judges members in the series' scale and learns the rows the daemon learns:
those predicted once their key's history held
:data:`~service.pipeline.tasks.MATURE_VALUES` values. Before that, the key's unit is a
guess; on a panel of short series, such as the growth curves, that is one row in a
dozen, and a replay that learned them scored variants there unlike the daemon. It
combines levels rather than learning targets (the same numbers: the weights sum to 1
and depend on errors only).
Left out: drift (``drift.action``), and the rare row whose key's unit is still a guess
(no move within its statistics span) and whose value changed, which the daemon leaves
unlearned (:func:`~service.pipeline.tasks.learnable`) and the replay learns. So the
first row, the default replayed, is within a fraction of a percent of
``bench.quality``'s *default* column; compare variants with that row.
Printed: each variant's MAE over the default variant's, per dataset (the first
:data:`bench.quality.WARMUP` of each key left out, as there), and their geometric mean;
a row per variant, or a row per dataset when there are more datasets than variants.
``--head N`` replays each key's first ``N`` events alone (``bench.quality --head``).

``--departures`` replays nothing: it asks how much any combination could gain over
the last value at all. A weighted average of the members is the last value plus the
same average of the members' departures from it, so the error it can take off the
last value's is what those departures say about the truth's. Per dataset, it prints
each member's uncentred correlation with the truth's departure (its square is the
share of the last value's squared error that member's departure, scaled with
hindsight, takes off), the share all of them together take off (least squares with
hindsight, any signs: more than any ensemble, which learns online and keeps its
weights positive), and the share that many columns of pure noise take off on average
(their count over the rows'), on the rows ``bench.quality`` scores.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.quality import (
    ALL_CASES,
    CASES,
    Truth,
    default_settings,
    feature_columns,
    geometric_mean,
    key_heads,
    positive_int,
)
from bench.specs import named_params
from models.ensemble import EnsembleParams, Hedge
from service.config import Settings, default_models
from service.pipeline.scoring import FloatArray
from service.pipeline.tasks import MATURE_VALUES
from service.tools import datasets, replay
from service.tools.backtest import run_backtest


@dataclass(frozen=True)
class Forecasts:
    """One dataset's member forecasts (levels, NaN where none), in arrival order."""

    names: tuple[str, ...]
    levels: FloatArray  # (events, members)
    keys: Sequence[str]
    y: FloatArray
    horizon: int
    truth: Truth


def forecasts(
    dataset: str, extra: Sequence[dict[str, Any]] = (), head: int | None = None
) -> Forecasts:
    """Run the default (and ``extra`` models) with every model published; on each
    key's first ``head`` events only, if given."""
    case = ALL_CASES[dataset]
    frame = datasets.load(dataset)
    if head is not None:
        frame = key_heads(frame, head)
    features = feature_columns(frame)
    data = default_settings(case.horizon, features)
    models = [*default_models(case.horizon), *extra]
    data["models"] = [{**m, "publish": True} for m in models]
    settings = Settings.model_validate(data)
    pairs = replay.encode(frame, replay.Columns(features=features), settings.schema_)
    records = replay.as_records(pairs, settings.kafka.input_topic)
    names = tuple(m.name for m in settings.models if m.kind != "ensemble")
    levels = np.full((len(records), len(names)), np.nan)
    column = {name: i for i, name in enumerate(names)}
    for value in run_backtest(records, settings).published:
        record = orjson.loads(value)
        if record["model"] in column and record["y_hat"] is not None:
            row = int(record["source"].rsplit(":", 1)[1])  # one partition: offset == row
            levels[row, column[record["model"]]] = float(record["y_hat"])
    y = frame["y"].to_numpy(dtype=float)
    truth = Truth.of(frame["key"], y, case.horizon)
    return Forecasts(names, levels, frame["key"].astype(str).tolist(), y, case.horizon, truth)


def replayed_mae(data: Forecasts, members: Sequence[str], params: EnsembleParams) -> float:
    """MAE of the ensemble of ``members`` with ``params``, replayed event by event."""
    columns = [data.names.index(m) for m in members]
    levels = data.levels[:, columns]
    slot_of: dict[str, int] = {}
    slots = [slot_of.setdefault(key, len(slot_of)) for key in data.keys]
    hedge = Hedge(len(members), params)
    hedge.ensure(len(slot_of))
    combined = np.full(len(slots), np.nan)
    waiting: dict[int, deque[int]] = {}
    rows = levels.tolist()
    # values in a row's history when it is predicted: with h >= 1 its own value is the
    # newest; with h = 0 it is predicted before its value is known
    values = [0] * len(slot_of)
    mature = [False] * len(slots)

    def predict(i: int) -> None:
        if np.isfinite(levels[i]).all():
            weights = hedge.weights(slots[i])
            combined[i] = sum(w * v for w, v in zip(weights, rows[i], strict=True))

    def learn(i: int, truth: float) -> None:
        if np.isfinite(combined[i]) and mature[i]:
            hedge._learn(slots[i], rows[i], truth)

    own = 1 if data.horizon > 0 else 0
    for i, slot in enumerate(slots):
        truth = float(data.y[i])
        mature[i] = values[slot] + own >= MATURE_VALUES
        values[slot] += 1
        if data.horizon == 0:  # predicted first, then resolved by its own value
            predict(i)
            learn(i, truth)
            continue
        queue = waiting.setdefault(slot, deque())
        if len(queue) >= data.horizon:  # this value resolves the key's oldest forecast
            learn(queue.popleft(), truth)
        predict(i)
        queue.append(i)
    errors = np.abs(combined[data.truth.rows] - data.truth.y)
    return float(np.nanmean(errors))


@dataclass(frozen=True)
class Departures:
    """What the members' departures from the last value say about the truth's."""

    correlations: dict[str, float]  # member: uncentred correlation (constant ones left out)
    explained: float  # share of the last value's squared error all of them take off
    chance: float  # the share as many columns of pure noise take off on average
    rows: int


def departures(data: Forecasts, persistence: str) -> Departures:
    """How much of ``persistence``'s squared error the other members' departures from
    its forecasts could explain, with hindsight (module docstring, ``--departures``)."""
    rows = data.truth.rows
    last = data.levels[rows, data.names.index(persistence)]
    others = [i for i, name in enumerate(data.names) if name != persistence]
    moves = data.levels[rows][:, others] - last[:, None]
    actual = data.truth.y - last
    usable = np.isfinite(moves).all(axis=1) & np.isfinite(actual)
    moves, actual = moves[usable], actual[usable]
    total = float(actual @ actual)
    count = int(usable.sum())
    if total <= 0.0:  # the last value was never wrong: nothing to explain
        return Departures({}, 0.0, 0.0, count)
    sizes = np.sqrt(np.einsum("ij,ij->j", moves, moves))
    moving = sizes > 1e-12 * (1.0 + np.abs(moves).max(initial=0.0))
    correlations = {
        data.names[others[j]]: float(moves[:, j] @ actual / (sizes[j] * math.sqrt(total)))
        for j in np.flatnonzero(moving)
    }
    columns = moves[:, moving]
    if not columns.shape[1]:
        return Departures(correlations, 0.0, 0.0, count)
    fit, *_ = np.linalg.lstsq(columns, actual, rcond=None)
    residual = actual - columns @ fit
    explained = 1.0 - float(residual @ residual) / total
    return Departures(correlations, explained, columns.shape[1] / count, count)


def departures_table(results: Sequence[tuple[str, Departures]]) -> Table:
    """One row per dataset: each member's correlation, then the shares."""
    members = list(dict.fromkeys(m for _, d in results for m in d.correlations))
    table = Table(
        title="members' departures from the last value against the truth's",
        caption="correlation: uncentred; explained: share of the last value's squared"
        " error that all departures take off, least squares with hindsight; chance: the"
        " share that as many columns of noise take off",
    )
    table.add_column("dataset")
    table.add_column("rows", justify="right")
    for member in members:
        table.add_column(member, justify="right")
    table.add_column("explained", justify="right")
    table.add_column("chance", justify="right")
    for name, d in results:
        cells = [f"{d.correlations[m]:+.3f}" if m in d.correlations else "" for m in members]
        table.add_row(name, f"{d.rows:,}", *cells, f"{d.explained:.2%}", f"{d.chance:.2%}")
    return table


def default_members(horizon: int) -> tuple[str, ...]:
    """The members of the built-in default ensemble at ``horizon``."""
    settings = Settings.model_validate({"forecast": {"horizon": horizon}})
    return settings.members(settings.primary)


def _persistence(horizon: int) -> str:
    """The name of the built-in default's last-value model at ``horizon``."""
    return str(next(m["name"] for m in default_models(horizon) if m["kind"] == "persistence"))


def _member(spec: str) -> dict[str, Any]:
    """``NAME=KIND[:JSON params]`` as a model entry."""
    name, kind, params = named_params(spec, "--member", "KIND", required=False)
    return {"name": name, "kind": kind, "params": params}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--datasets", default=",".join(CASES))
    parser.add_argument("--member", type=_member, action="append", default=[])
    parser.add_argument(
        "--head",
        type=positive_int,
        metavar="N",
        help="each key's first N events alone (every series as a short one)",
    )
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=member,member,... (repeatable)"
    )
    parser.add_argument(
        "--departures",
        action="store_true",
        help="what the members' departures from the last value explain (no replay)",
    )
    defaults = EnsembleParams()
    parser.add_argument("--eta", type=_floats, default=[defaults.eta])
    parser.add_argument("--share", type=_floats, default=[defaults.share])
    parser.add_argument("--memory", type=_floats, default=[float(defaults.memory)])
    parser.add_argument(
        "--past-share", type=_floats, default=[defaults.past_share], dest="past_share"
    )
    parser.add_argument(
        "--past-memory", type=_floats, default=[float(defaults.past_memory)], dest="past_memory"
    )
    parser.add_argument(
        "--prior-events", type=_floats, default=[float(defaults.prior_events)], dest="prior"
    )
    parser.add_argument(
        "--eta-warmup", type=_floats, default=[float(defaults.eta_warmup)], dest="eta_warmup"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    console = Console(width=max(Console().width, 200))
    if args.departures:  # no replay: no variants, no grid
        results = []
        for dataset in names:
            data = forecasts(dataset, args.member, args.head)
            results.append((dataset, departures(data, _persistence(data.horizon))))
        console.print(departures_table(results))
        return
    variants: dict[str, tuple[str, ...]] = {"default": ()}  # per dataset: its horizon's
    for spec in args.variant:
        name, _, members = spec.partition("=")
        variants[name] = tuple(m for m in members.split(",") if m)
    grid = [
        EnsembleParams(
            eta=eta,
            share=share,
            memory=int(memory),
            past_share=past,
            past_memory=int(past_memory),
            prior_events=int(prior),
            eta_warmup=int(warmup),
        )
        for eta, share, memory, past, past_memory, prior, warmup in itertools.product(
            args.eta,
            args.share,
            args.memory,
            args.past_share,
            args.past_memory,
            args.prior,
            args.eta_warmup,
        )
        if share + past < 1.0
    ]
    default_params = EnsembleParams()
    runs = [("default", default_params)] if default_params not in grid else []
    runs += [(name, params) for name in variants for params in grid]

    ratios: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    for dataset in names:
        data = forecasts(dataset, args.member, args.head)
        members = {**variants, "default": default_members(data.horizon)}
        base = replayed_mae(data, members["default"], default_params)
        for i, (variant, params) in enumerate(runs):
            ratios[i].append(replayed_mae(data, members[variant], params) / base)
    table = ratio_table(runs, names, [ratios[i] for i in range(len(runs))])
    console.print(table)


_SETTINGS = "eta / share / memory / past share / past memory / prior / eta warm-up"


def ratio_table(
    runs: Sequence[tuple[str, EnsembleParams]],
    datasets: Sequence[str],
    ratios: Sequence[list[float]],
) -> Table:
    """Each run's MAE ratio per dataset and their geometric mean, a row per run, or a
    row per dataset where there are more datasets than runs (36 datasets as columns
    do not fit any terminal)."""
    title = "ensemble MAE replayed, over the default's replayed MAE"
    settings = [
        f"{p.eta:g} / {p.share:g} / {p.memory} / {p.past_share:g} / {p.past_memory}"
        f" / {p.prior_events} / {p.eta_warmup}"
        for _, p in runs
    ]
    means = [f"{geometric_mean(r):.3f}" for r in ratios]
    if len(datasets) > len(runs):
        table = Table(title=title, caption=f"settings: {_SETTINGS}")
        table.add_column("dataset")
        for (variant, _), setting in zip(runs, settings, strict=True):
            table.add_column(f"{variant}\n{setting}", justify="right")
        for j, dataset in enumerate(datasets):
            table.add_row(dataset, *[f"{r[j]:.3f}" for r in ratios])
        table.add_section()
        table.add_row("geometric mean", *means)
        return table
    table = Table(title=title)
    table.add_column("variant")
    table.add_column(_SETTINGS)
    for dataset in datasets:
        table.add_column(dataset, justify="right")
    table.add_column("geometric mean", justify="right")
    for (variant, _), setting, row, mean in zip(runs, settings, ratios, means, strict=True):
        table.add_row(variant, setting, *[f"{r:.3f}" for r in row], mean)
    return table


if __name__ == "__main__":
    main()
