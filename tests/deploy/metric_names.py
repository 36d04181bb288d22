"""Which ``forecastd_*`` metrics the rules and the dashboard use, and which the daemon exports.

Names are compared as a PromQL query writes them, with one normalisation: the sample
suffixes ``_bucket``, ``_sum`` and ``_count``, which the Prometheus data model reserves
for the series of a histogram or summary, are removed, so that
``forecastd_processing_latency_seconds_bucket`` counts as a use of the histogram
``forecastd_processing_latency_seconds``. Counters keep ``_total``: that is the name
of the series a query reads.

>>> sorted(names_in_expr('histogram_quantile(0.9, sum by (le) '
...                      '(rate(forecastd_processing_latency_seconds_bucket[5m])))'))
['forecastd_processing_latency_seconds']
>>> sorted(names_in_expr('forecastd:model_mae:rate5m > forecastd_model_mae{model="forecastd_x"}'))
['forecastd_model_mae']
>>> check_names({"forecastd_a_total", "forecastd_b"}, {"forecastd_a_total"})
['forecastd_b']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.io.decode import REASONS

_REASONS = frozenset(REASONS)

CONTRACT: Mapping[str, frozenset[str]] = {
    # name as queried -> its labels (besides the target labels Prometheus adds)
    "forecastd_messages_consumed_total": frozenset(),
    "forecastd_invalid_messages_total": frozenset({"reason"}),
    "forecastd_predictions_total": frozenset({"model"}),
    "forecastd_predictions_produced_total": frozenset({"model"}),
    "forecastd_scored_total": frozenset({"model"}),
    "forecastd_absolute_error_total": frozenset({"model"}),
    "forecastd_squared_error_total": frozenset({"model"}),
    "forecastd_model_mae": frozenset({"model", "window"}),
    "forecastd_model_mse": frozenset({"model", "window"}),
    "forecastd_model_rmse": frozenset({"model", "window"}),
    "forecastd_model_r2": frozenset({"model", "window"}),
    "forecastd_model_info": frozenset({"model", "kind", "primary"}),
    "forecastd_drift_detections_total": frozenset({"model", "detector"}),
    "forecastd_model_updates_total": frozenset({"model"}),
    "forecastd_processing_latency_seconds": frozenset({"le"}),
    "forecastd_consumer_lag": frozenset({"topic", "partition"}),
    "forecastd_assigned_partitions": frozenset(),
    "forecastd_active_series": frozenset(),
    "forecastd_batches_total": frozenset(),
    "forecastd_loop_busy_seconds_total": frozenset(),
    "forecastd_commits_total": frozenset(),
    "forecastd_producer_renewals_total": frozenset(),
    "forecastd_evicted_series_total": frozenset(),
    "forecastd_build_info": frozenset({"version"}),
    "forecastd_checkpoint_bytes": frozenset({"le"}),
    "forecastd_checkpoint_duration_seconds": frozenset({"le"}),
    "forecastd_checkpoint_age_seconds": frozenset(),
    "forecastd_restore_duration_seconds": frozenset({"le"}),
    "forecastd_restores_total": frozenset({"outcome"}),
    # a pod's supervisor (processing.workers > 1)
    "forecastd_workers": frozenset(),
    "forecastd_worker_up": frozenset({"worker"}),
    "forecastd_worker_restarts_total": frozenset(),
}
"""The metrics the daemon exports (the contract), until the names come from a live daemon."""

POD_ONLY = frozenset(
    {"forecastd_workers", "forecastd_worker_up", "forecastd_worker_restarts_total"}
)
"""Exported by a pod's supervisor (``processing.workers`` > 1) only, never by a
single-process daemon: tests/integration/test_workers.py checks them on a live pod."""

LABEL_VALUES: Mapping[str, frozenset[str]] = {
    "window": frozenset({"rolling", "total"}),
    "primary": frozenset({"true", "false"}),
    "detector": frozenset({"adwin", "page_hinkley"}),
    "reason": _REASONS,
    "outcome": frozenset({"restored", "none", "retrained"}),
}
"""Labels with a closed set of values; a literal ``label="value"`` matcher must use one."""

TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service"})
"""Labels Prometheus attaches to every scraped series (static config or Operator)."""

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
# A PromQL identifier not preceded by an identifier character or a Grafana `$`.
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:$])[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(forecastd_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(
    r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
)


def normalise(name: str) -> str:
    """``name`` without a histogram/summary sample suffix (at most one, at the end)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def names_in_expr(expr: str) -> set[str]:
    """The ``forecastd_*`` metric names a PromQL expression reads, normalised.

    String literals and comments are ignored, and so are recording-rule names
    (``forecastd:...``): an identifier with a colon is not an exported metric.
    """
    code = _COMMENT.sub("", _STRING.sub('""', expr))
    return {
        normalise(token)
        for token in _IDENTIFIER.findall(code)
        if token.startswith("forecastd_") and ":" not in token
    }


def rule_expressions(rules: Mapping[str, Any]) -> Iterator[str]:
    """Every ``expr`` of a Prometheus rule file (``{"groups": [...]}``)."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield str(rule["expr"])


def dashboard_expressions(dashboard: Mapping[str, Any]) -> Iterator[str]:
    """Every PromQL query of a Grafana dashboard: panel targets (rows included) and
    template variable queries."""

    def panels(items: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        yield str(query.get("query", "") if isinstance(query, dict) else query or "")


def expressions(path: Path) -> list[str]:
    """The PromQL expressions in a rule file (YAML) or a Grafana dashboard (JSON)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return list(dashboard_expressions(json.loads(text)))
    return list(rule_expressions(yaml.safe_load(text)))


def metric_names_used(*paths: Path) -> set[str]:
    """Every ``forecastd_*`` metric read by the rule files and dashboards ``paths``."""
    return {name for path in paths for expr in expressions(path) for name in names_in_expr(expr)}


def label_matchers_used(*paths: Path) -> set[tuple[str, str, str, str]]:
    """``(metric, label, operator, value)`` for every matcher in a ``forecastd_*{...}``
    selector of ``paths``; ``metric`` is normalised, ``value`` unquoted."""
    found = set()
    for path in paths:
        for expr in expressions(path):
            for metric, body in _SELECTOR.findall(_COMMENT.sub("", expr)):
                for label, operator, quoted in _MATCHER.findall(body):
                    found.add((normalise(metric), label, operator, quoted[1:-1]))
    return found


def check_names(used: set[str], exported: set[str]) -> list[str]:
    """The names in ``used`` that ``exported`` lacks, sorted: empty when all is well."""
    return sorted(used - exported)


def check_labels(
    matchers: set[tuple[str, str, str, str]], contract: Mapping[str, frozenset[str]]
) -> list[str]:
    """Problems with the label matchers: labels a metric does not have, and literal
    values outside a closed set (:data:`LABEL_VALUES`). Unknown metrics are left to
    :func:`check_names`."""
    problems = []
    for metric, label, operator, value in sorted(matchers):
        if metric not in contract:
            continue
        if label not in contract[metric] | TARGET_LABELS:
            problems.append(f"{metric}: no label {label!r}")
        elif operator == "=" and label in LABEL_VALUES and value not in LABEL_VALUES[label]:
            problems.append(
                f"{metric}: {label}={value!r} is not one of {sorted(LABEL_VALUES[label])}"
            )
    return problems


def exported_names(exposition: str) -> set[str]:
    """The names a ``/metrics`` page (Prometheus text format) lets queries read, in the
    form :func:`metric_names_used` returns: histogram and summary families by family
    name, everything else by sample name (``..._total`` for counters), without the
    ``_created`` timestamps."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        if family.type in {"histogram", "summary", "gaugehistogram"}:
            names.add(family.name)
            continue
        names.update(s.name for s in family.samples if not s.name.endswith("_created"))
    return names
