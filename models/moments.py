"""Running mean and variance, merged a batch at a time: :func:`merge_moments`, the one
place the pooling formula is written (the scaler in :mod:`service.pipeline.features` and the
scores in :mod:`service.pipeline.scoring` use it too), and :class:`Moments` for a scalar stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from models.base import FloatArray

_EPS = 1e-12

M = TypeVar("M", float, FloatArray)


def merge_moments(count_a: M, mean_a: M, m2_a: M, count_b: M, mean_b: M, m2_b: M) -> tuple[M, M, M]:
    """Count, mean and sum of squared deviations of two sets pooled (Chan, Golub and
    LeVeque's parallel update): exact, and stable where adding sums of squares is not.

    Elementwise on arrays (one column per feature); a pooled count of 0 gives zero
    moments rather than a division by zero.

    >>> merge_moments(2.0, 2.0, 2.0, 1.0, 5.0, 0.0)  # {1, 3} and {5}: mean 3, m2 8
    (3.0, 3.0, 8.0)
    """
    total = count_a + count_b
    safe = np.maximum(total, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * count_b / safe
    m2 = m2_a + m2_b + delta * delta * count_a * count_b / safe
    if isinstance(total, float):
        return total, float(mean), float(m2)
    return total, mean, m2


@dataclass(slots=True)
class Moments:
    """Running count, mean and sum of squared deviations (Chan et al.'s batch merge)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: FloatArray) -> None:
        n_b = float(values.size)
        if n_b == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        self.count, self.mean, self.m2 = merge_moments(
            self.count, self.mean, self.m2, n_b, mean_b, m2_b
        )

    @property
    def std(self) -> float:
        """Standard deviation, or 1 while undefined or degenerate (no scaling then)."""
        var = self.m2 / self.count if self.count > 0 else 0.0
        return float(np.sqrt(var)) if var > _EPS else 1.0

    @property
    def rms(self) -> float:
        """Root mean square (the scale of values centred at 0 by construction), or 1."""
        square = self.m2 / self.count + self.mean * self.mean if self.count > 0 else 0.0
        return float(np.sqrt(square)) if square > _EPS else 1.0

    def finite(self) -> bool:
        return bool(np.isfinite(self.count) and np.isfinite(self.mean) and np.isfinite(self.m2))

    def copy(self) -> Moments:
        return Moments(self.count, self.mean, self.m2)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Moments:
        return Moments(float(state["count"]), float(state["mean"]), float(state["m2"]))
