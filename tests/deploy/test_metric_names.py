"""Every metric the rules and the dashboard read is one the daemon exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .metric_names import (
    CONTRACT,
    check_labels,
    check_names,
    exported_names,
    label_matchers_used,
    metric_names_used,
)
from .support import DASHBOARD, RULES

pytestmark = pytest.mark.deploy


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    used = metric_names_used(RULES, DASHBOARD)
    assert len(used) >= 15, sorted(used)
    missing = check_names(used, set(CONTRACT))
    assert missing == [], f"used in rules.yml or the dashboard but not exported: {missing}"


def test_label_matchers_fit_the_exported_labels() -> None:
    problems = check_labels(label_matchers_used(RULES, DASHBOARD), CONTRACT)
    assert problems == [], "\n".join(problems)


def test_check_names_reports_what_is_missing() -> None:
    used = metric_names_used(RULES)
    assert check_names(used | {"forecastd_typo_total"}, set(CONTRACT)) == ["forecastd_typo_total"]


def test_exported_names_reads_a_metrics_page() -> None:
    """A /metrics page written by prometheus_client, with the contract's metrics,
    yields exactly the contract's names (so a live daemon's page can replace it)."""
    registry = CollectorRegistry()
    for name, labels in CONTRACT.items():
        values = dict.fromkeys(sorted(labels - {"le"}), "x")
        if name.endswith("_seconds"):
            Histogram(name, "h", registry=registry).observe(0.1)
        elif name.endswith("_total"):
            counter = Counter(name.removesuffix("_total"), "c", sorted(values), registry=registry)
            (counter.labels(**values) if values else counter).inc()
        else:
            gauge = Gauge(name, "g", sorted(values), registry=registry)
            (gauge.labels(**values) if values else gauge).set(1)
    page = generate_latest(registry).decode()
    assert exported_names(page) == set(CONTRACT)
