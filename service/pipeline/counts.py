"""What one poll of a partition task did, counted for the processor to record.

A partition task holds no metrics registry: it adds up what it did in a
:class:`TaskCounts` and returns it with its outputs, and the processor records it
(:meth:`TaskCounts.record`). So a task is tested without a registry, and the metrics
are written in one place.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.runtime.metrics import Metrics


@dataclass(slots=True)
class TaskCounts:
    """Counts of one poll (or one eviction), per model name where a metric has one.

    The label values are model, member and detector names from the config: bounded.
    """

    updates: Counter[str] = field(default_factory=Counter)
    nonfinite: Counter[str] = field(default_factory=Counter)
    predictions: Counter[str] = field(default_factory=Counter)
    scored: Counter[str] = field(default_factory=Counter)
    abs_error: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    sq_error: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    drifts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(model, detector) -> drifts confirmed."""
    leads: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(ensemble, member) -> predictions the member led."""
    evicted: int = 0

    def add(self, other: TaskCounts) -> None:
        """Add ``other``'s counts to these."""
        self.updates.update(other.updates)
        self.nonfinite.update(other.nonfinite)
        self.predictions.update(other.predictions)
        self.scored.update(other.scored)
        for mine, theirs in ((self.abs_error, other.abs_error), (self.sq_error, other.sq_error)):
            for model, amount in theirs.items():
                mine[model] += amount
        self.drifts.update(other.drifts)
        self.leads.update(other.leads)
        self.evicted += other.evicted

    def record(self, metrics: Metrics) -> None:
        """Add these counts to the process's metrics."""
        per_model: tuple[tuple[Mapping[str, float], Any], ...] = (
            (self.updates, metrics.updates),
            (self.nonfinite, metrics.nonfinite),
            (self.predictions, metrics.predictions),
            (self.scored, metrics.scored),
            (self.abs_error, metrics.abs_error),
            (self.sq_error, metrics.sq_error),
        )
        child = metrics.child
        for counts, family in per_model:
            for model, amount in counts.items():
                if amount:
                    child(family, model).inc(amount)
        for (model, detector), amount in self.drifts.items():
            child(metrics.drift, model, detector).inc(amount)
        for (model, member), amount in self.leads.items():
            child(metrics.leads, model, member).inc(amount)
        if self.evicted:
            metrics.evicted.inc(self.evicted)
