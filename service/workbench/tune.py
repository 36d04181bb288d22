"""``forecastd tune SOURCE -c CONFIG --trials N --out tuned.yaml``: Optuna search.

The replay is split in time: the first part (``1 - holdout``) is where trials are
scored, the rest is held back. A trial is the config with the sampled values, replayed
through the daemon's pipeline (:class:`~service.pipeline.processor.Processor` under
:func:`service.runtime.app.run_loop`) over the first part; its objective is the primary
model's prequential MAE after a warm-up of :data:`WARMUP` of the part. Intermediate
errors are reported about ten times per trial so that Optuna's median pruner stops
hopeless trials early: so every replay here (trials and re-scoring alike) reads
polls of at most a tenth of the tuning part. Poll size changes no model's numbers
except the ensemble's with ``drift.action: shrink`` (a drift acts at the end of its
poll), and it is the same for every config compared. The first trial is the
starting config (a value outside the space, such as an L2 of 0 where the search is on
a log scale, is clipped into it).

The best config and the starting config are then replayed over the whole stream and
scored on the held-back part only (models keep learning through the tuning part, as
they would live): the two held-back errors are printed beside the tuning errors, so
a config that only fits the tuning part shows. The tuned config is written when it
beats the starting config on the tuning part and is no worse on the held-back part;
otherwise the starting config is written back with a comment saying why: a tuned
config that does not hold up on data it was not tuned on is not an improvement.

Trials are built from the config file alone (``FORECASTD_*`` environment overrides,
which usually say where the broker is, are not written into the tuned file).

Trials run in parallel processes (``--jobs``, default one per core, at most one per
trial), sharing one Optuna journal file; with ``--jobs 1`` and a fixed ``--seed`` a
run is reproducible.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from service.config import Settings, _read_yaml, _validate_model_params
from service.errors import ConfigError
from service.io.sinks import ListSink
from service.io.sources import ListSource
from service.pipeline.processor import Processor
from service.pipeline.scoring import FloatArray, ScoreStats
from service.records import RawRecord
from service.runtime.app import run_loop, set_torch_threads
from service.runtime.metrics import Metrics

WARMUP = 0.2
REPORTS = 10

Path_ = tuple[str | int, ...]


# -- the search space ---------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One tunable value: where it lives in the config and how to sample it."""

    path: Path_
    kind: str  # "int", "float", "log", "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return ".".join(str(p) for p in self.path)


_MODEL_SPACE: dict[str, list[tuple[str, str, float, float, tuple[Any, ...]]]] = {
    "river.linear": [("lr", "log", 1e-4, 0.1, ()), ("l2", "log", 1e-7, 0.1, ())],
    "river.tree": [("grace_period", "int", 20, 400, ()), ("max_depth", "int", 3, 16, ())],
    "river.forest": [("n_models", "int", 3, 10, ())],
    "ewma": [("alpha", "float", 0.05, 0.95, ())],
    "holt": [
        ("alpha", "float", 0.05, 0.95, ()),
        ("beta", "float", 0.01, 0.5, ()),
        ("damping", "float", 0.8, 1.0, ()),
    ],
    "ridge": [("ridge", "log", 0.1, 30.0, ()), ("memory", "int", 50, 5000, ())],
    "torch.mlp": [
        ("lr", "log", 1e-4, 3e-2, ()),
        ("weight_decay", "log", 1e-7, 1e-2, ()),
        ("dropout", "float", 0.0, 0.4, ()),
        ("hidden", "choice", 0, 0, ("32", "64", "32,32", "64,64", "128,64")),
    ],
    "torch.attention": [
        ("lr", "log", 1e-4, 3e-2, ()),
        ("weight_decay", "log", 1e-7, 1e-2, ()),
        ("dropout", "float", 0.0, 0.4, ()),
        ("width", "choice", 0, 0, (8, 16, 32)),
    ],
    "ensemble": [
        ("eta", "log", 0.05, 3.0, ()),
        ("memory", "int", 50, 5000, ()),
        ("share", "log", 1e-4, 0.05, ()),
        ("past_share", "log", 1e-3, 0.1, ()),
        ("eta_warmup", "int", 1, 1000, ()),
    ],
}
"""Per model kind: (param, distribution, low, high, choices). ``hidden`` choices are
comma-separated widths (Optuna's categorical values must be plain scalars)."""


def search_space(settings: Settings) -> list[Dimension]:
    """The declared space for this config's models, plus the forecast settings."""
    dims = [
        Dimension(("forecast", "window"), "int", 8, 128),
        Dimension(("forecast", "lags"), "int", 1, 32),
    ]
    if settings.forecast.seasonal_periods:
        dims.append(
            Dimension(("forecast", "seasonal_periods"), "choice", choices=("set", "detect"))
        )
    for index, model in enumerate(settings.models):
        for param, kind, low, high, choices in _MODEL_SPACE.get(model.kind, []):
            dims.append(Dimension(("models", index, "params", param), kind, low, high, choices))
    return dims


def _sample(trial: Any, dims: list[Dimension], base: Settings) -> dict[Path_, Any]:
    values: dict[Path_, Any] = {}
    for dim in dims:
        if dim.path == ("forecast", "lags"):
            window = int(values.get(("forecast", "window"), base.forecast.window))
            value: Any = trial.suggest_int(dim.name, 1, max(1, min(int(dim.high), window - 1)))
        elif dim.kind == "int":
            value = trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.high > 100)
        elif dim.kind == "float":
            value = trial.suggest_float(dim.name, dim.low, dim.high)
        elif dim.kind == "log":
            value = trial.suggest_float(dim.name, dim.low, dim.high, log=True)
        else:
            value = trial.suggest_categorical(dim.name, list(dim.choices))
        values[dim.path] = value
    return values


def _as_config(path: Path_, value: Any, base: Settings) -> Any:
    if path[-1] == "hidden":
        return [int(w) for w in str(value).split(",")]
    if path == ("forecast", "seasonal_periods"):
        return list(base.forecast.seasonal_periods) if value == "set" else []
    return value


def starting_values(dims: list[Dimension], settings: Settings) -> dict[str, Any]:
    """The starting config's value of each dimension (its first trial), clipped into
    the space where it lies outside."""
    resolved = settings.model_dump(mode="json", by_alias=True)
    out: dict[str, Any] = {}
    for dim in dims:
        node: Any = resolved
        for part in dim.path:
            node = node[int(part)] if isinstance(node, list) else node.get(part)
            if node is None:
                break
        if node is None and dim.path[-2:-1] == ("params",):
            model = settings.models[int(dim.path[1])]
            node = _kind_default(model.kind, str(dim.path[-1]))
        if dim.path[-1] == "hidden" and node is not None:
            node = ",".join(str(w) for w in node)
            node = node if node in dim.choices else dim.choices[0]
        elif dim.path == ("forecast", "seasonal_periods"):
            node = "set"
        elif dim.kind == "choice":
            node = node if node in dim.choices else dim.choices[0]
        elif node is not None:
            node = min(max(node, dim.low), dim.high)
            if dim.kind == "int":
                node = int(node)
        if dim.path == ("forecast", "lags"):
            node = min(int(node), int(out.get("forecast.window", settings.forecast.window)) - 1)
        if node is not None:
            out[dim.name] = node
    return out


def _kind_default(kind: str, param: str) -> Any:
    from models import registry

    return getattr(registry.validate_params(kind, {}), param, None)


def apply(data: dict[str, Any], values: dict[Path_, Any], base: Settings) -> dict[str, Any]:
    """``data`` (a config as YAML data) with ``values`` set; models listed explicitly."""
    out = copy.deepcopy(data)
    if "models" not in out:
        out["models"] = [
            m.model_dump(mode="json", exclude_defaults=True) | {"name": m.name, "kind": m.kind}
            for m in base.models
        ]
    for path, value in values.items():
        node: Any = out
        for part in path[:-1]:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        node[path[-1]] = _as_config(path, value, base)
    return out


def validated(data: dict[str, Any]) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"tuned config is invalid: {exc}") from exc
    _validate_model_params(settings)
    return settings


# -- scoring ------------------------------------------------------------------------


class _Primary:
    """Collects the primary model's scored pairs, in order, tagged by phase."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.phase = 0
        self.truth: list[list[FloatArray]] = [[], []]
        self.predicted: list[list[FloatArray]] = [[], []]

    def __call__(self, model: str, y_true: FloatArray, y_hat: FloatArray) -> None:
        if model == self.model:
            self.truth[self.phase].append(y_true.copy())
            self.predicted[self.phase].append(y_hat.copy())

    def mae(self, phase: int, warmup: float = 0.0) -> float:
        if not self.truth[phase]:
            return math.inf
        y = np.concatenate(self.truth[phase])
        p = np.concatenate(self.predicted[phase])
        skip = int(warmup * len(y))
        stats = ScoreStats.of(y[skip:], p[skip:])
        return stats.mae if stats.n else math.inf


def score(
    records: Sequence[RawRecord], settings: Settings, split: int, trial: Any = None
) -> tuple[float, float]:
    """(MAE on the tuning part after warm-up, MAE on the held-back part) of the
    primary model; with ``trial``, only the tuning part is replayed and intermediate
    errors are reported to it (raising ``optuna.TrialPruned`` when it says so)."""
    primary = _Primary(settings.primary.name)
    metrics = Metrics(CollectorRegistry(), settings)
    sink = ListSink()
    processor = Processor(settings, sink, metrics, on_scored=primary)
    every = max(1, split // REPORTS)
    first = _Counting(records[:split], processor, every)
    reported = [0]

    def check() -> bool:
        if trial is None or first.position < reported[0] + every:
            return False
        reported[0] = first.position
        value = primary.mae(0, WARMUP)
        if math.isfinite(value):
            trial.report(value, first.position // every)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
        return False

    run_loop(settings, first, sink, processor, metrics, check)
    if trial is not None:
        return primary.mae(0, WARMUP), math.nan
    primary.phase = 1
    rest = _Counting(records[split:], processor, every)
    run_loop(settings, rest, sink, processor, metrics, lambda: False)
    return primary.mae(0, WARMUP), primary.mae(1)


class _Counting(ListSource):
    """Polls of at most ``cap`` records (so a trial can report between them), counted."""

    def __init__(self, records: Sequence[RawRecord], processor: Processor, cap: int) -> None:
        super().__init__(records, processor)
        self.position = 0
        self._cap = cap

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        batch = super().poll(min(max_records, self._cap), timeout_s)
        self.position += len(batch)
        return batch


# -- the study ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    storage: str
    study: str
    records: Sequence[RawRecord]
    data: dict[str, Any]
    split: int
    trials: int
    timeout: float | None
    seed: int
    torch_threads: int | None


def _objective(job: _Job, base: Settings, dims: list[Dimension]) -> Any:
    def objective(trial: Any) -> float:
        values = _sample(trial, dims, base)
        try:
            settings = validated(apply(job.data, values, base))
        except ConfigError:
            import optuna

            raise optuna.TrialPruned() from None  # an impossible combination
        value, _ = score(job.records, settings, job.split, trial)
        return value

    return objective


def _work(job: _Job) -> None:
    """One worker process: run its share of trials against the shared journal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_torch_threads(job.torch_threads)
    base = validated(job.data)
    study = optuna.load_study(
        study_name=job.study,
        storage=_storage(job.storage),
        sampler=optuna.samplers.TPESampler(seed=job.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    study.optimize(
        _objective(job, base, search_space(base)), n_trials=job.trials, timeout=job.timeout
    )


def _storage(path: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path))


def tune(records: Sequence[RawRecord], settings: Settings, args: argparse.Namespace) -> int:
    """Run the study, re-score, print the comparison, write the config (module doc)."""
    import optuna
    from rich.console import Console
    from rich.table import Table

    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (got {args.holdout})")
    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {args.trials})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_torch_threads(settings.processing.torch_threads)
    data = _read_yaml(Path(args.config)) if args.config else {}
    data = apply(data, {}, settings)
    split = int(len(records) * (1 - args.holdout))
    if split < 50 or len(records) - split < 20:
        raise ConfigError(f"{len(records)} records are too few to tune on and hold back")
    dims = search_space(settings)
    jobs = args.jobs or (os.cpu_count() or 1)
    jobs = max(1, min(jobs, args.trials))
    console = Console()
    with tempfile.TemporaryDirectory() as scratch:
        journal = str(Path(scratch) / "journal.log")
        study = optuna.create_study(
            study_name="forecastd", storage=_storage(journal), direction="minimize"
        )
        study.enqueue_trial(starting_values(dims, settings))
        shares = [args.trials // jobs + (1 if i < args.trials % jobs else 0) for i in range(jobs)]
        work = [
            _Job(journal, "forecastd", records, data, split, n, args.timeout, args.seed + i,
                 settings.processing.torch_threads)
            for i, n in enumerate(shares)
        ]  # fmt: skip
        if jobs == 1:
            _work(work[0])
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(jobs) as pool:
                pool.map(_work, work)
        study = optuna.load_study(study_name="forecastd", storage=_storage(journal))
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        if not finished:
            raise ConfigError("no trial completed: raise --trials or --timeout")
        best = study.best_trial
        trials = len(study.trials)
    tuned_data = apply(data, _values_of(best.params, dims), settings)
    tuned = validated(tuned_data)
    default_fit, default_held = score(records, validated(data), split)
    tuned_fit, tuned_held = score(records, tuned, split)
    table = Table(title=f"tune: primary model {settings.primary.name!r}, MAE")
    for column in (
        "config",
        f"tuning part ({split} records)",
        f"held back ({len(records) - split})",
    ):
        table.add_column(column, justify="right")
    table.add_row("starting config", f"{default_fit:.5g}", f"{default_held:.5g}")
    table.add_row(f"best of {len(finished)} trials", f"{tuned_fit:.5g}", f"{tuned_held:.5g}")
    console.print(table)
    console.print(f"{trials} trials, {pruned} pruned, {jobs} process(es)")
    header = [
        f"# forecastd tune {args.source}: {len(finished)} trials, seed {args.seed}",
        f"# primary MAE, tuning part / held back: starting {default_fit:.6g} / {default_held:.6g},"
        f" tuned {tuned_fit:.6g} / {tuned_held:.6g}",
    ]
    chosen = tuned_data
    if tuned_fit > default_fit:
        chosen = data
        why = "no trial beat the starting config on the tuning part"
    elif tuned_held > default_held:
        chosen = data
        why = "the tuned config did worse on the held-back part"
    if chosen is data:
        header.append(f"# {why}: starting config kept")
        console.print(f"{why}: wrote the starting config")
    validated(chosen)
    Path(args.out).write_text("\n".join(header) + "\n" + yaml.safe_dump(chosen, sort_keys=False))
    console.print(f"wrote {args.out}")
    return 0


def _values_of(params: dict[str, Any], dims: list[Dimension]) -> dict[Path_, Any]:
    return {dim.path: params[dim.name] for dim in dims if dim.name in params}
