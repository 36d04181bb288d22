"""A task's counts reach the metrics registry through one call, and add up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.config import Settings
from service.pipeline.counts import TaskCounts
from service.runtime.metrics import Metrics


def _counts(model: str, predictions: int, abs_error: float) -> TaskCounts:
    counts = TaskCounts()
    counts.predictions[model] += predictions
    counts.abs_error[model] += abs_error
    counts.leads[("ensemble", model)] += predictions
    counts.evicted += 1
    return counts


def test_counts_add_up_and_are_recorded_once() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, Settings())
    total = _counts("last", 3, 1.5)
    total.add(_counts("last", 2, 0.5))
    total.record(metrics)
    value = registry.get_sample_value
    assert value("forecastd_predictions_total", {"model": "last"}) == 5
    assert value("forecastd_absolute_error_total", {"model": "last"}) == 2.0
    assert value("forecastd_ensemble_leader_total", {"model": "ensemble", "member": "last"}) == 5
    assert value("forecastd_evicted_series_total") == 2


def test_polls_recorded_one_after_another_add_up() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, Settings())
    _counts("last", 3, 1.5).record(metrics)
    _counts("last", 4, 2.0).record(metrics)
    _counts("ewma", 1, 0.25).record(metrics)
    value = registry.get_sample_value
    assert value("forecastd_predictions_total", {"model": "last"}) == 7
    assert value("forecastd_absolute_error_total", {"model": "last"}) == 3.5
    assert value("forecastd_predictions_total", {"model": "ewma"}) == 1
    assert metrics.child(metrics.predictions, "last") is metrics.predictions.labels("last")
