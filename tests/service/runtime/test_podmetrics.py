"""The pod's /metrics: workers' own endpoints merged by the rules of service.runtime.podmetrics.

Two real HTTP endpoints serve two real registries; the collector scrapes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.health import HealthServer
from service.runtime.podmetrics import Endpoint, PodCollector


class _Worker:
    def __init__(self, consumed: int, mae: float, latencies: list[float]) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter("forecastd_messages_consumed", "c", registry=self.registry)
        self.consumed.inc(consumed)
        lag = Gauge("forecastd_consumer_lag", "l", ["partition"], registry=self.registry)
        lag.labels(str(consumed)).set(consumed * 10)
        Gauge("forecastd_model_mae", "m", ["model"], registry=self.registry).labels("x").set(mae)
        Gauge("forecastd_build_info", "b", ["version"], registry=self.registry).labels("1").set(1)
        latency = Histogram("forecastd_latency_seconds", "h", registry=self.registry)
        for value in latencies:
            latency.observe(value)
        self.server = HealthServer(self.registry, lambda: True, "127.0.0.1", 0).start()


@pytest.fixture
def workers() -> Iterator[list[_Worker]]:
    pair = [_Worker(3, 0.5, [0.001, 0.2]), _Worker(4, 1.5, [0.003])]
    yield pair
    for worker in pair:
        worker.server.stop()


def _samples(collector: PodCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_histograms_and_additive_gauges_are_summed(workers: list[_Worker]) -> None:
    endpoints = [Endpoint(i, w.server.port) for i, w in enumerate(workers)]
    got = _samples(PodCollector(lambda: endpoints))
    assert got[("forecastd_messages_consumed_total", ())] == 7
    assert got[("forecastd_latency_seconds_count", ())] == 3
    assert got[("forecastd_latency_seconds_bucket", (("le", "0.005"),))] == 2
    assert got[("forecastd_latency_seconds_sum", ())] == pytest.approx(0.204)
    assert got[("forecastd_consumer_lag", (("partition", "3"),))] == 30
    assert got[("forecastd_consumer_lag", (("partition", "4"),))] == 40
    # not additive: one series per worker; the same in every worker: once
    assert got[("forecastd_model_mae", (("model", "x"), ("worker", "0")))] == 0.5
    assert got[("forecastd_model_mae", (("model", "x"), ("worker", "1")))] == 1.5
    assert got[("forecastd_build_info", (("version", "1"),))] == 1
    assert got[("forecastd_worker_up", (("worker", "0"),))] == 1


def test_a_dead_workers_counts_stay_in_the_totals(workers: list[_Worker]) -> None:
    endpoints = [Endpoint(0, workers[0].server.port), Endpoint(1, workers[1].server.port)]
    collector = PodCollector(lambda: endpoints)
    assert _samples(collector)[("forecastd_messages_consumed_total", ())] == 7
    collector.retire(1)  # worker 1 died; its restart starts from zero
    endpoints[1] = Endpoint(1, None)
    got = _samples(collector)
    assert got[("forecastd_messages_consumed_total", ())] == 7
    assert got[("forecastd_latency_seconds_count", ())] == 3
    assert got[("forecastd_worker_up", (("worker", "1"),))] == 0
    assert ("forecastd_model_mae", (("model", "x"), ("worker", "1"))) not in got
    workers[0].consumed.inc(2)
    assert _samples(collector)[("forecastd_messages_consumed_total", ())] == 9
