"""One ``/metrics`` for a pod of workers: the parent scrapes each worker and merges.

Why an aggregating parent rather than client_python's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``): in that mode custom collectors do not work, and the
pooled scores and interval coverage (:mod:`service.runtime.metrics`) are custom collectors;
every gauge would need a ``multiprocess_mode``; the process and GC collectors go
away; and the per-process mmap files must be cleaned up after a worker dies. With a
parent that scrapes, each worker stays the same daemon a single process is, with its
own registry and its own port on the loopback interface, and the merge rules live
in one place:

* counters, histograms and summaries are summed sample by sample (``_created``: the
  earliest); the last scrape of a worker that died is kept and added to every later
  total (:meth:`PodCollector.retire`), so a restarted worker does not make the pod's
  counters go backwards (Prometheus would read that as a reset and over-count);
  increments between a dead worker's last scrape and its death are lost, as they are
  when a single-process pod dies;
* additive gauges (:data:`SUMMED_GAUGES`: lag per partition, partitions owned,
  active series, memory) are summed;
* gauges that say the same in every worker (``*_info``) are exported once;
* every other gauge (a model's rolling MAE, R², a process start time) has no
  meaningful sum, so it is exported per worker with a ``worker`` label, bounded by
  ``processing.workers``. The pod-wide MAE is exact from the counters:
  ``forecastd_absolute_error_total / forecastd_scored_total``.

A worker that does not answer within :data:`SCRAPE_TIMEOUT_S` is left out of that
scrape (its retired totals still count); ``forecastd_worker_up{worker}`` says which.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SCRAPE_TIMEOUT_S = 2.0
SUMMED_GAUGES = frozenset(
    {
        "forecastd_consumer_lag",
        "forecastd_assigned_partitions",
        "forecastd_active_series",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
    }
)
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where worker ``index`` serves its own metrics now (port None: not running)."""

    index: int
    port: int | None


def fetch(port: int, path: str, timeout: float = SCRAPE_TIMEOUT_S) -> tuple[int, str]:
    """GET ``path`` on a worker's loopback port: (status, body); status 0 when it did
    not answer."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


class PodCollector(Collector):
    """Merges the workers' own ``/metrics`` at each scrape (module docstring)."""

    def __init__(self, endpoints: Callable[[], Sequence[Endpoint]]) -> None:
        self._endpoints = endpoints
        self._last: dict[int, dict[SampleKey, float]] = {}  # per worker: summed samples
        self._retired: dict[SampleKey, float] = {}
        self._families: dict[str, tuple[str, str]] = {}  # name -> (type, help) ever seen

    def retire(self, index: int) -> None:
        """Worker ``index`` died: keep its last counted totals in the pod's."""
        for key, value in self._last.pop(index, {}).items():
            if not key[0].endswith("_created"):
                self._retired[key] = self._retired.get(key, 0.0) + value

    def collect(self) -> Iterator[Metric]:
        endpoints = list(self._endpoints())
        running = [e for e in endpoints if e.port is not None]
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            texts = dict(
                zip(
                    (e.index for e in running),
                    pool.map(lambda e: fetch(e.port or 0, "/metrics"), running),
                    strict=True,
                )
            )
        up = GaugeMetricFamily(
            "forecastd_worker_up",
            "1 when the worker is running and answered this scrape of the pod's /metrics,"
            " else 0 (pods of several workers only).",
            labels=["worker"],
        )
        merged: dict[str, Metric] = {}
        summed: dict[str, dict[SampleKey, float]] = {}
        for endpoint in endpoints:
            status, text = texts.get(endpoint.index, (0, ""))
            answered = status == 200
            up.add_metric([str(endpoint.index)], 1.0 if answered else 0.0)
            if answered:
                self._merge(endpoint.index, text, merged, summed)
        for (name, labels), value in self._retired.items():
            family = self._family_of(name)
            if family is None:
                continue
            summed.setdefault(family, {})
            summed[family][(name, labels)] = summed[family].get((name, labels), 0.0) + value
            if family not in merged:
                typ, doc = self._families[family]
                merged[family] = Metric(family, doc, typ)
        for name, metric in merged.items():
            for (sample, labels), value in summed.get(name, {}).items():
                metric.add_sample(sample, dict(labels), value)
            yield metric
        yield up

    def _merge(
        self,
        worker: int,
        text: str,
        merged: dict[str, Metric],
        summed: dict[str, dict[SampleKey, float]],
    ) -> None:
        counted: dict[SampleKey, float] = {}
        for family in text_string_to_metric_families(text):
            self._families[family.name] = (family.type, family.documentation)
            metric = merged.get(family.name)
            first = metric is None
            if metric is None:
                metric = Metric(family.name, family.documentation, family.type)
                merged[family.name] = metric
            additive = family.type in _SUMMED_TYPES or family.name in SUMMED_GAUGES
            totals = summed.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if additive:
                    if sample.name.endswith("_created"):
                        totals[key] = min(totals.get(key, sample.value), sample.value)
                    else:
                        totals[key] = totals.get(key, 0.0) + sample.value
                    if family.type in _SUMMED_TYPES:
                        counted[key] = sample.value
                elif family.name.endswith("_info"):
                    if first:
                        metric.add_sample(sample.name, sample.labels, sample.value)
                else:
                    labels = {**sample.labels, "worker": str(worker)}
                    metric.add_sample(sample.name, labels, sample.value)
        self._last[worker] = counted

    def _family_of(self, sample: str) -> str | None:
        """The family a retired sample belongs to (a worker's own families only)."""
        for suffix in ("_total", "_bucket", "_count", "_sum", ""):
            if suffix and not sample.endswith(suffix):
                continue
            name = sample[: len(sample) - len(suffix)] if suffix else sample
            if name in self._families:
                return name
        return None
