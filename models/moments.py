"""Running mean and variance of a scalar stream, merged a batch at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import FloatArray

_EPS = 1e-12


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
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.count = total

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
