"""Every Prometheus object forecastd exports, registered on an injected registry.

Labels are bounded: ``model`` and ``detector`` come from the config, ``reason`` from the
fixed list in :mod:`service.io.decode`, ``partition`` from the input topic. No per-key
labels, ever.

Scores (MAE, MSE, RMSE, R², ``window="rolling"|"total"``) are not pushed: a collector
pools the sufficient statistics of every task this process owns at scrape time, so the
exported value is exact for the partitions held, and cheap to keep up to date.
``forecastd_absolute_error_total`` and ``forecastd_squared_error_total`` are plain
counters beside them, so PromQL can compute MAE over any range:
``rate(forecastd_absolute_error_total[5m]) / rate(forecastd_scored_total[5m])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.config import Settings
from service.io.decode import REASONS
from service.pipeline.intervals import CoverageStats
from service.pipeline.scoring import ScoreStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ScoreSource = Callable[[], Mapping[str, tuple[ScoreStats, ScoreStats]]]
"""Returns, per model name, (since-start stats, rolling stats) pooled over tasks."""


CoverageSource = Callable[[], Mapping[str, tuple[CoverageStats, CoverageStats]]]
"""Returns, per published model, (since-start, rolling) interval statistics."""


class Metrics:
    """The daemon's instruments. One instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry, settings: Settings) -> None:
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.consumed = Counter(
            "forecastd_messages_consumed", "Records read from the input topic.", registry=registry
        )
        self.invalid = Counter(
            "forecastd_invalid_messages",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.predictions = Counter(
            "forecastd_predictions", "Predictions made, by model.", ["model"], registry=registry
        )
        self.produced = Counter(
            "forecastd_predictions_produced",
            "Predictions acknowledged by the broker on the output topic, by model.",
            ["model"],
            registry=registry,
        )
        self.scored = Counter(
            "forecastd_scored",
            "Predictions scored against their true value, by model.",
            ["model"],
            registry=registry,
        )
        self.abs_error = Counter(
            "forecastd_absolute_error",
            "Sum of |y - y_hat| over scored predictions, by model.",
            ["model"],
            registry=registry,
        )
        self.sq_error = Counter(
            "forecastd_squared_error",
            "Sum of (y - y_hat)^2 over scored predictions, by model.",
            ["model"],
            registry=registry,
        )
        self.drift = Counter(
            "forecastd_drift_detections",
            "Drift detections on absolute residuals, by model and detector.",
            ["model", "detector"],
            registry=registry,
        )
        self.updates = Counter(
            "forecastd_model_updates",
            "Events the models learned from (what model_version counts), by model.",
            ["model"],
            registry=registry,
        )
        self.nonfinite = Counter(
            "forecastd_model_nonfinite",
            "Non-finite losses, gradients, parameters or inputs a model caught and recovered"
            " from (last good parameters restored), by model.",
            ["model"],
            registry=registry,
        )
        self.latency = Histogram(
            "forecastd_processing_latency_seconds",
            "Seconds from record consumed to its prediction acknowledged by the broker.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "forecastd_consumer_lag",
            "Records behind the partition's high watermark.",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned = Gauge(
            "forecastd_assigned_partitions", "Input partitions owned.", registry=registry
        )
        self.active_series = Gauge(
            "forecastd_active_series", "Series keys with a live window.", registry=registry
        )
        self.batches = Counter("forecastd_batches", "Batches processed.", registry=registry)
        self.loop_busy = Counter(
            "forecastd_loop_busy_seconds",
            "Seconds the processing loop spent outside its poll (processing, flushing,"
            " committing, checkpointing); its rate is how busy the loop is: 1 per worker"
            " when it never waits for records.",
            registry=registry,
        )
        self.commits = Counter("forecastd_commits", "Offset commits.", registry=registry)
        self.producer_renewals = Counter(
            "forecastd_producer_renewals",
            "Producers replaced because the broker failed some of a batch's outputs, which"
            " were then sent again on the new one (a broker that lost its state, or a"
            " delivery timeout).",
            registry=registry,
        )
        self.leads = Counter(
            "forecastd_ensemble_leader",
            "Predictions an ensemble published, by the member that led each.",
            ["model", "member"],
            registry=registry,
        )
        self.ignored_features = Counter(
            "forecastd_ignored_features",
            "Exogenous feature values ignored under schema.features: auto: names outside the"
            " list it fixed (first seen later, or not numbers in the first poll).",
            registry=registry,
        )
        self.evicted = Counter(
            "forecastd_evicted_series", "Keys evicted (idle TTL or max_keys).", registry=registry
        )
        # Learned state (service.runtime.checkpoint): no partition label, the age is the oldest
        # of the tasks this process owns.
        self.checkpoint_bytes = Histogram(
            "forecastd_checkpoint_bytes",
            "Size of one partition task's checkpoint, compressed.",
            buckets=tuple(float(4**i) for i in range(5, 15)),
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "forecastd_checkpoint_duration_seconds",
            "Time to write the checkpoints of one round and commit their offsets.",
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0),
            registry=registry,
        )
        self.checkpoint_age = Gauge(
            "forecastd_checkpoint_age_seconds",
            "Seconds since the oldest durable checkpoint of an owned partition task.",
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "forecastd_restore_duration_seconds",
            "Time to find, read and load one partition task's checkpoint.",
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0),
            registry=registry,
        )
        self.restores = Counter(
            "forecastd_restores",
            "Partition tasks assigned, by outcome: restored, none (no checkpoint yet), or"
            " retrained (the checkpoint's settings differ).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("restored", "none", "retrained"):
            self.restores.labels(outcome)
        self.restore_sources = Counter(
            "forecastd_restore_source",
            "Partition tasks restored, by where their checkpoint was read: local"
            " (state.local_dir) or changelog (the state topic).",
            ["source"],
            registry=registry,
        )
        for source in ("local", "changelog"):
            self.restore_sources.labels(source)
        self.local_state_errors = Counter(
            "forecastd_local_state_errors",
            "Local checkpoint files (state.local_dir) that could not be used (op=read: the"
            " state topic was read instead) or written (op=write).",
            ["op"],
            registry=registry,
        )
        for op in ("read", "write"):
            self.local_state_errors.labels(op)
        info = Gauge(
            "forecastd_model_info",
            "Configured models (value 1).",
            ["model", "kind", "primary"],
            registry=registry,
        )
        for reason in REASONS:  # present from the start, so rate() and alerts see 0, not nothing
            self.invalid.labels(reason)
        for model in settings.models:
            if model.kind == "ensemble":
                for member in settings.members(model):
                    self.leads.labels(model.name, member)
            info.labels(model.name, model.kind, str(model.primary).lower()).set(1)
            for detector in settings.drift.detectors:
                self.drift.labels(model.name, detector)
            for family in (self.predictions, self.scored, self.abs_error, self.sq_error):
                family.labels(model.name)
            self.updates.labels(model.name)
            self.nonfinite.labels(model.name)
            self.produced.labels(model.name)
        build = Gauge("forecastd_build_info", "Build (value 1).", ["version"], registry=registry)
        build.labels(_package_version()).set(1)

    def child(self, family: Counter, *labels: str) -> Any:
        """``family.labels(*labels)``, looked up once: every poll counts into the same
        few dozen children, and client_python's ``labels()`` validates its arguments
        and takes a lock on each call. Label values are bounded (module docstring), so
        is this cache."""
        key = (id(family), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def watch_scores(self, source: ScoreSource) -> None:
        """Export the pooled scores that ``source`` returns at each scrape."""
        self.registry.register(_ScoreCollector(source))

    def watch_coverage(self, source: CoverageSource) -> None:
        """Export the pooled interval coverage that ``source`` returns at each scrape."""
        self.registry.register(_CoverageCollector(source))


class _ScoreCollector(Collector):
    _FAMILIES = (
        ("forecastd_model_mae", "Mean absolute error", "mae"),
        ("forecastd_model_mse", "Mean squared error", "mse"),
        ("forecastd_model_rmse", "Root mean squared error", "rmse"),
        ("forecastd_model_r2", "Coefficient of determination", "r2"),
    )

    def __init__(self, source: ScoreSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        scores = self._source()
        for name, text, attr in self._FAMILIES:
            family = GaugeMetricFamily(
                name,
                f"{text} of scored predictions, by model; window=rolling|total.",
                labels=["model", "window"],
            )
            for model, (total, rolling) in scores.items():
                family.add_metric([model, "total"], getattr(total, attr))
                family.add_metric([model, "rolling"], getattr(rolling, attr))
            yield family


class _CoverageCollector(Collector):
    def __init__(self, source: CoverageSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        stats = self._source()
        coverage = GaugeMetricFamily(
            "forecastd_interval_coverage",
            "Fraction of scored predictions inside their published interval, by model;"
            " window=rolling|total.",
            labels=["model", "window"],
        )
        width = GaugeMetricFamily(
            "forecastd_interval_width",
            "Mean width (upper - lower) of the published intervals of scored predictions,"
            " by model; window=rolling|total.",
            labels=["model", "window"],
        )
        for model, (total, rolling) in stats.items():
            for window, part in (("total", total), ("rolling", rolling)):
                coverage.add_metric([model, window], part.coverage)
                width.add_metric([model, window], part.mean_width)
        yield coverage
        yield width


def _package_version() -> str:
    try:
        return version("forecastd")
    except PackageNotFoundError:
        return "unknown"
