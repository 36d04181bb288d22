"""Rows a torch model learns from, and the bounded replay buffer that keeps recent ones.

Mixing a sample of recent rows into every optimizer step guards an online network
against catastrophic forgetting when a partition's mix of keys or regimes shifts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import FloatArray

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

ROW_FIELDS = ("x", "dev", "key", "target")


@dataclass(frozen=True, slots=True)
class Rows:
    """Learnable rows, as stored in the pending set and the replay buffer.

    Attributes:
        x: ``(n, F)`` features.
        dev: ``(n, W)`` window minus its newest value, NaN where missing (``W`` is 0 for
            networks that ignore the window, so they store nothing).
        key: ``(n,)`` hashed key bucket (0 without a key embedding).
        target: ``(n,)`` learning target, original scale.
    """

    x: F32
    dev: F32
    key: I64
    target: FloatArray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, rows: npt.NDArray[np.intp]) -> Rows:
        return Rows(self.x[rows], self.dev[rows], self.key[rows], self.target[rows])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return Rows(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.dev for p in parts]),
            np.concatenate([p.key for p in parts]),
            np.concatenate([p.target for p in parts]),
        )

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).copy() for name in ROW_FIELDS}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Rows:
        return Rows(
            np.array(state["x"], dtype=np.float32),
            np.array(state["dev"], dtype=np.float32),
            np.array(state["key"], dtype=np.int64),
            np.array(state["target"], dtype=np.float64),
        )

    @staticmethod
    def empty(n_features: int, width: int) -> Rows:
        return Rows(
            np.zeros((0, n_features), np.float32),
            np.zeros((0, width), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float64),
        )


class ReplayBuffer:
    """Ring buffer of the last ``capacity`` learned rows; uniform sampling."""

    def __init__(self, capacity: int, n_features: int, width: int) -> None:
        self.capacity = capacity
        self._rows = Rows(
            np.zeros((capacity, n_features), np.float32),
            np.zeros((capacity, width), np.float32),
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.float64),
        )
        self._size = 0
        self._pos = 0  # next slot to write

    def __len__(self) -> int:
        return self._size

    def add(self, rows: Rows) -> None:
        n = len(rows)
        if self.capacity == 0 or n == 0:
            return
        if n > self.capacity:
            rows = rows.take(np.arange(n - self.capacity, n))
            n = self.capacity
        slots = (self._pos + np.arange(n)) % self.capacity
        for name in ROW_FIELDS:
            getattr(self._rows, name)[slots] = getattr(rows, name)
        self._pos = int((self._pos + n) % self.capacity)
        self._size = min(self.capacity, self._size + n)

    def sample(self, rng: np.random.Generator, k: int) -> Rows:
        """``k`` rows drawn uniformly with replacement (needs a non-empty buffer)."""
        return self._rows.take(rng.integers(0, self._size, size=k))

    def state_dict(self) -> dict[str, Any]:
        live = self._rows.take(np.arange(self._size))
        return {"rows": live.state_dict(), "pos": self._pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rows = Rows.from_state(state["rows"])
        size = len(rows)
        if size > self.capacity or rows.x.shape[1:] != self._rows.x.shape[1:]:
            raise ValueError(
                f"replay state holds {size} rows of shape {rows.x.shape[1:]}, "
                f"buffer holds {self.capacity} of shape {self._rows.x.shape[1:]}"
            )
        if rows.dev.shape[1:] != self._rows.dev.shape[1:]:
            raise ValueError("replay state has another window width")
        for name in ROW_FIELDS:
            getattr(self._rows, name)[:size] = getattr(rows, name)
        self._size = size
        self._pos = int(state["pos"])
