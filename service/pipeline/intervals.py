"""Prediction intervals: per-key scaled split conformal, with adaptive conformal
inference, worked through in event order.

Each resolved prediction gives a *normalised score*: its absolute error (in the key's
units, see :mod:`service.pipeline.features`) divided by the key's own running error scale (an
exponentially weighted mean absolute error, memory :data:`SCALE_MEMORY` events, which
a new key takes from its task). A task keeps its last ``pool`` scores, sorted. The
interval of a new prediction is ``y_hat ± q * scale_key * unit``, where ``q`` is the
``1 - alpha_key`` quantile of the pooled scores: keys of different scales and
difficulties get widths of their own from one shared calibration set (locally
weighted conformal prediction, Lei et al., 2018).

Adaptive conformal inference (Gibbs & Candès, "Adaptive conformal inference under
distribution shift", NeurIPS 2021) keeps the coverage honest under drift: after each
resolved prediction of a key, ``alpha_key += gamma * (alpha - miss)``, where ``miss`` is
1 if the interval that was published missed. A key whose intervals miss too often
widens them, one that covers too often narrows them; over any stretch of a key's
events the miss rate is within ``(max(alpha_key) + gamma) / (gamma * T)`` of the
target, whatever the data do.

Everything is updated row by row in event order (the sorted pool with ``bisect``), so
intervals, like predictions, do not depend on how records were batched.
"""

from __future__ import annotations

import bisect
import math
import operator
import pickle
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

SCALE_MEMORY = 50
GAMMA = 0.02
"""ACI's step. Its guarantee, a miss rate within ``(1 + GAMMA) / (GAMMA * T)`` of the
target over ``T`` events, is loose for a short series at Gibbs & Candès's 0.005; a
larger step corrects a series of a few hundred events within it, and long series
cover as well with either (README, "Forecast quality")."""


_BLOCKS = ("_scale", "_alpha", "_known")
""":class:`Intervals`' per-slot state, one value per slot."""


def _doubles(value: array[float] | list[float] | bytes | bytearray | memoryview) -> array[float]:
    """A block of doubles from what a pickle gave back (see
    :meth:`Intervals.__setstate__`)."""
    if isinstance(value, array):
        return value
    if isinstance(value, list):
        return array("d", value)
    block = array("d")
    block.frombytes(value)
    return block


def _unset() -> Intervals:
    """An :class:`Intervals` for a pickle to fill (:meth:`Intervals.__setstate__`)."""
    return Intervals.__new__(Intervals)


class Intervals:
    """Interval state of one published model in one task (slots as the task's).

    The per-slot state is kept in ``array.array`` and ``bytearray`` blocks, not
    lists: read and written one slot at a time as fast as a list, and a checkpoint
    writes each block's memory as it is (:meth:`__reduce_ex__`), where a list of a
    hundred thousand floats was pickled float by float, three lists for every model
    of a task: with many keys, a large share of what the loop waited for while a
    checkpoint pickled.
    """

    def __init__(self, coverage: float, min_samples: int, pool: int) -> None:
        self.alpha = 1.0 - coverage
        self.min_samples = min_samples
        self._pool_size = max(pool, min_samples)
        self._sorted: list[float] = []
        self._order: deque[float] = deque()
        self._decay = math.exp(-1.0 / SCALE_MEMORY)
        self._scale = array("d")
        self._alpha = array("d")
        self._known = bytearray()
        self._pool_scale = 0.0

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        """Pickled as its attributes; with protocol 5 (a checkpoint's,
        :mod:`service.runtime.snapshot`) the blocks go as pickle buffers, which a
        pickler with a buffer callback keeps out of band: not copied into the stream,
        whose copies and growth cost a many-key checkpoint more than the blocks."""
        state = dict(self.__dict__)
        if operator.index(protocol) >= 5:
            for name in _BLOCKS:
                state[name] = pickle.PickleBuffer(state[name])
        return _unset, (), state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Blocks as pickled (an array, or the bytes of a pickle buffer), or as a
        checkpoint from before the blocks kept them (lists)."""
        self.__dict__.update(state)
        self._scale, self._alpha = _doubles(state["_scale"]), _doubles(state["_alpha"])
        known = state["_known"]
        self._known = known if type(known) is bytearray else bytearray(known)

    def ensure(self, capacity: int) -> None:
        """Room for ``capacity`` slots."""
        missing = capacity - len(self._known)
        if missing > 0:
            self._scale.extend(array("d", bytes(8 * missing)))
            self._alpha.extend(array("d", [self.alpha]) * missing)
            self._known.extend(bytes(missing))

    def reset(self, slots: Sequence[int]) -> None:
        """Evicted keys' slots start again from the task's scale."""
        for slot in slots:
            self._known[slot] = 0

    def run(
        self,
        predict_slots: IntArray,
        learn_slots: IntArray,
        learn_errors: FloatArray,
        learn_halves: FloatArray,
        before: IntArray,
        learn_predicted: IntArray | None = None,
    ) -> FloatArray:
        """Half-widths (key units) of the intervals of the predict rows, NaN while the
        task has fewer than ``min_samples`` scores; learning, in event order, from the
        resolved rows' absolute errors and the half-widths they were published with
        (NaN: none). ``learn_predicted``: for each resolved row predicted in this same
        run, its index among the predict rows (-1 for one predicted earlier); its
        half-width is then the one computed here, so that ACI does not depend on
        where polls begin and end."""
        n = len(predict_slots)
        halves = [math.nan] * n
        slots = predict_slots.tolist()
        done = 0
        errors, published = learn_errors.tolist(), learn_halves.tolist()
        same = [-1] * len(errors) if learn_predicted is None else learn_predicted.tolist()
        for j, (slot, stop) in enumerate(zip(learn_slots.tolist(), before.tolist(), strict=True)):
            while done < stop:
                halves[done] = self._half(slots[done])
                done += 1
            half = halves[same[j]] if same[j] >= 0 else published[j]
            self._learn(slot, errors[j], half)
        while done < n:
            halves[done] = self._half(slots[done])
            done += 1
        return np.asarray(halves, dtype=np.float64)

    def _half(self, slot: int) -> float:
        count = len(self._sorted)
        if count < self.min_samples:
            return math.nan
        self._birth(slot)
        level = 1.0 - self._alpha[slot]
        rank = min(count - 1, max(0, math.ceil(level * (count + 1)) - 1))
        scale = self._scale[slot] or self._pool_scale
        return self._sorted[rank] * scale

    def _birth(self, slot: int) -> None:
        if not self._known[slot]:
            self._known[slot] = 1
            self._scale[slot] = self._pool_scale
            self._alpha[slot] = self.alpha

    def _learn(self, slot: int, error: float, half: float) -> None:
        self._birth(slot)
        if not math.isfinite(error):
            return
        if math.isfinite(half):
            miss = 1.0 if error > half else 0.0
            alpha = self._alpha[slot] + GAMMA * (self.alpha - miss)
            self._alpha[slot] = min(max(alpha, 0.0), 1.0)
        scale = self._scale[slot] or self._pool_scale
        if scale > 0:
            self._add(error / scale)
        decay = self._decay
        self._scale[slot] = error if scale <= 0 else decay * scale + (1 - decay) * error
        pool = self._pool_scale
        self._pool_scale = error if pool <= 0 else decay * pool + (1 - decay) * error

    def _add(self, score: float) -> None:
        bisect.insort(self._sorted, score)
        self._order.append(score)
        if len(self._order) > self._pool_size:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]


@dataclass(frozen=True, slots=True)
class CoverageStats:
    """Scored predictions that had an interval, how many it covered, summed width;
    merged across tasks as :class:`~service.pipeline.scoring.ScoreStats` are."""

    n: int = 0
    covered: int = 0
    width: float = 0.0

    def merge(self, other: CoverageStats) -> CoverageStats:
        return CoverageStats(
            self.n + other.n, self.covered + other.covered, self.width + other.width
        )

    @property
    def coverage(self) -> float:
        return self.covered / self.n if self.n else 0.0

    @property
    def mean_width(self) -> float:
        return self.width / self.n if self.n else 0.0


class Coverage:
    """Empirical coverage and mean width of one model's published intervals in one
    task: since start, and over the last ``window`` scored predictions that had one."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.total_n = 0
        self.total_covered = 0
        self.total_width = 0.0
        self._covered: deque[bool] = deque(maxlen=window)
        self._width: deque[float] = deque(maxlen=window)

    def update(self, covered: npt.NDArray[np.bool_], width: FloatArray) -> None:
        self.total_n += len(covered)
        self.total_covered += int(covered.sum())
        self.total_width += float(width.sum())
        self._covered.extend(covered.tolist())
        self._width.extend(width.tolist())

    def rolling(self) -> CoverageStats:
        """Over the rolling window."""
        return CoverageStats(len(self._covered), sum(self._covered), float(sum(self._width)))

    def total(self) -> CoverageStats:
        """Since start."""
        return CoverageStats(self.total_n, self.total_covered, self.total_width)
