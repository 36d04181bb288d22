"""Predictions waiting for their true value: the rows a poll predicted, kept while any
of them waits, and the compaction that keeps quiet keys from pinning whole polls.

A task's :class:`PendingBook` numbers every predicted row (a poll's rows get the next
ids in order) and keeps, per key, the ids of its waiting predictions as a tuple of
ints, and each poll's arrays (:class:`Rows`) while any of its rows waits. Ints in
tuples, rather than a queue object and a reference per prediction, because the
garbage collector walks every container object on each full collection: with 100k
keys a deque and a tuple per key were most of what it walked, and full collections
land on whichever poll triggers them; a tuple of ints is untracked once the collector
has seen it. Rows are gathered with one fancy index per field (:class:`Gather`).
The book is part of a task's checkpoint (:mod:`service.runtime.snapshot`): a
prediction made before a checkpoint is still scored and learned after a restore.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain, islice
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import FeatureBatch, FloatArray

IntArray = npt.NDArray[np.intp]
COMPACT_EVERY = 64
"""Polls between checks of what waiting rows keep alive."""
_COMPACT_SLACK = 4096  # rows kept beyond twice the waiting ones before compacting


def _empty(*shape: int) -> FloatArray:
    return np.empty(shape)


@dataclass(eq=False, slots=True)
class Rows:
    """The rows one poll predicted (every model), kept while any waits for its truth.

    Pending predictions are row ids into these arrays (:class:`PendingBook`) rather
    than an object per event: a poll's rows are gathered with one fancy index each.
    ``outputs`` are in learning-target space, ``halves`` the published interval
    half-widths in key units (NaN: none). ``mature``: the row is learned from (its key
    had a change to size its unit); ``measured``: that unit was measured, not guessed
    (a row in a guessed unit is learned only if its value did not change);
    ``settled``: its key had enough values for its unit to judge outliers and calibrate
    intervals (see :mod:`service.pipeline.tasks`). ``exogenous``: the events' own
    features as they came, unscaled (``FeatureBatch.exogenous``), where a model of the
    task reads them (none, ``(n, 0)``, otherwise).
    """

    keys: list[str] = field(default_factory=list)
    slots: IntArray = field(default_factory=lambda: np.empty(0, np.intp))
    window: FloatArray = field(default_factory=lambda: _empty(0, 0))  # (n, W)
    x: FloatArray = field(default_factory=lambda: _empty(0, 0))  # (n, F)
    offset: FloatArray = field(default_factory=lambda: _empty(0))  # (n,)
    scale: FloatArray = field(default_factory=lambda: _empty(0))  # (n,)
    seasonal: FloatArray = field(default_factory=lambda: _empty(0))  # (n,)
    outputs: FloatArray = field(default_factory=lambda: _empty(0, 0))  # (n, models)
    halves: FloatArray = field(default_factory=lambda: _empty(0, 0))  # (n, models)
    mature: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    settled: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    measured: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    exogenous: FloatArray = field(default_factory=lambda: _empty(0, 0))  # (n, E)

    def __post_init__(self) -> None:
        """Rows built without their raw features have none (``E = 0``)."""
        if len(self.exogenous) != len(self.keys):
            self.exogenous = _empty(len(self.keys), 0)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Pickled rows; from before ``settled``, a mature row was a settled one; from
        before ``measured``, every row is learned as it was then."""
        _, fields = state
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if "settled" not in fields:
            self.settled = self.mature.copy()
        if "measured" not in fields:
            self.measured = np.ones(len(self.mature), np.bool_)
        if "exogenous" not in fields:  # as missing; PendingBook.widen gives them a width
            self.exogenous = _empty(len(self.mature), 0)

    def __len__(self) -> int:
        return len(self.keys)

    def slice(self, start: int, stop: int) -> Rows:
        """Rows ``start:stop`` (views of these arrays)."""
        return Rows(
            self.keys[start:stop],
            self.slots[start:stop],
            self.window[start:stop],
            self.x[start:stop],
            self.offset[start:stop],
            self.scale[start:stop],
            self.seasonal[start:stop],
            self.outputs[start:stop],
            self.halves[start:stop],
            self.mature[start:stop],
            self.settled[start:stop],
            self.measured[start:stop],
            self.exogenous[start:stop],
        )

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        """``parts``' rows, in order, as one set of arrays (new, unless there is one
        part): a checkpoint's pending polls, one copy of each field, where a gather
        would index the concatenation again."""
        if len(parts) == 1:
            return parts[0]
        return Rows(
            list(chain.from_iterable(part.keys for part in parts)),
            *(
                np.concatenate([getattr(part, column.name) for part in parts])
                for column in fields(cls)[1:]  # the arrays, after the keys
            ),
        )

    def levels(self, column: int) -> FloatArray:
        """Model ``column``'s outputs in the original scale."""
        out: FloatArray = self.offset + self.scale * self.outputs[:, column]
        return out

    def all_levels(self) -> FloatArray:
        """Every model's outputs in the original scale, ``(rows, models)``."""
        out: FloatArray = self.offset[:, None] + self.scale[:, None] * self.outputs
        return out

    def batch(self, names: Sequence[str]) -> FeatureBatch:
        return FeatureBatch(
            self.x,
            self.window,
            self.offset,
            self.keys,
            names,
            self.scale,
            self.seasonal,
            self.exogenous,
        )


class Gather:
    """Reads rows out of the few polls' arrays they live in, in the order asked: each
    poll's arrays are concatenated once and indexed once per field."""

    def __init__(self, sources: list[Rows], index: IntArray) -> None:
        self.sources = sources
        self.index = index
        keys = sources[0].keys if len(sources) == 1 else list(chain(*(r.keys for r in sources)))
        self.keys = [keys[i] for i in index.tolist()]

    def __call__(self, part: Callable[[Rows], npt.NDArray[np.generic]]) -> npt.NDArray[np.generic]:
        sources = self.sources
        whole = (
            part(sources[0]) if len(sources) == 1 else np.concatenate([part(r) for r in sources])
        )
        return whole[self.index]

    def floats(self, part: Callable[[Rows], FloatArray]) -> FloatArray:
        out: FloatArray = self(part).astype(np.float64, copy=False)
        return out

    def rows(self) -> Rows:
        """The gathered rows as one new set of arrays."""
        return Rows(
            list(self.keys),
            self(lambda r: r.slots).astype(np.intp, copy=False),
            self.floats(lambda r: r.window),
            self.floats(lambda r: r.x),
            self.floats(lambda r: r.offset),
            self.floats(lambda r: r.scale),
            self.floats(lambda r: r.seasonal),
            self.floats(lambda r: r.outputs),
            self.floats(lambda r: r.halves),
            self(lambda r: r.mature).astype(np.bool_, copy=False),
            self(lambda r: r.settled).astype(np.bool_, copy=False),
            self(lambda r: r.measured).astype(np.bool_, copy=False),
            self.floats(lambda r: r.exogenous),
        )


class PendingBook:
    """The waiting predictions of one task (module docstring).

    A poll: ids ``base + i`` for its ``i``-th predicted row (:attr:`base`), :meth:`push`
    per event (or, at horizon 0, the poll's own ids resolved at once), :meth:`add` of
    the filled rows, :meth:`live` to drop resolved ids of predictions never made,
    :meth:`gather` of the resolved ids, :meth:`release` of them. An id is never handed
    out twice, even when a poll raises before its rows are added (the processor then
    retries its events one by one): its predictions were never published, and a value
    that resolves one of them is simply not learned from it.
    """

    def __init__(self) -> None:
        self._queues: dict[str, tuple[int, ...]] = {}
        self._polls: dict[int, Rows] = {}  # by the id of their first row, in id order
        self._waiting: dict[int, int] = {}  # rows of each poll still waiting
        self._next = 0

    def __len__(self) -> int:
        """Predictions waiting for their truth."""
        return sum(map(len, self._queues.values()))

    @property
    def base(self) -> int:
        """The id the next poll's first predicted row gets."""
        return self._next

    def push(self, key: str, row: int, horizon: int) -> int | None:
        """``row`` waits for ``key``'s ``horizon``-th next value; returns the id of the
        prediction this value of ``key`` resolves, if one waited that long."""
        self._next = max(self._next, row + 1)
        queue = self._queues.get(key, ())
        if len(queue) >= horizon:
            self._queues[key] = (*queue[1:], row)
            return queue[0]
        self._queues[key] = (*queue, row)
        return None

    def add(self, rows: Rows, base: int) -> None:
        """The poll whose rows got ids from ``base`` (its :attr:`base`) on, filled."""
        if len(rows):
            self._polls[base] = rows
            self._waiting[base] = len(rows)
            self._next = max(self._next, base + len(rows))

    def live(self, ids: IntArray) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` are rows of an added poll still kept."""
        if not self._polls:
            return np.zeros(len(ids), dtype=np.bool_)
        bases = np.fromiter(self._polls, dtype=np.int64, count=len(self._polls))
        lengths = np.fromiter(map(len, self._polls.values()), np.int64, len(self._polls))
        which = np.searchsorted(bases, ids, side="right") - 1
        inside = ids - bases[which] < lengths[which]
        return (which >= 0) & inside

    def gather(self, ids: IntArray) -> Gather:
        """The rows of ``ids`` (of polls added and not released)."""
        bases = np.fromiter(self._polls, dtype=np.int64, count=len(self._polls))
        which = np.searchsorted(bases, ids, side="right") - 1
        used = np.unique(which)
        sources = [self._polls[int(bases[u])] for u in used]
        lengths = np.array([len(rows) for rows in sources], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        index = starts[np.searchsorted(used, which)] + (ids - bases[which])
        return Gather(sources, index.astype(np.intp))

    def release(self, ids: IntArray) -> None:
        """``ids`` no longer wait (resolved, or their key forgotten): a poll none of
        whose rows waits is dropped."""
        ids = ids[self.live(ids)]  # a failed poll's ids hold no row
        if not len(ids):
            return
        bases = np.fromiter(self._polls, dtype=np.int64, count=len(self._polls))
        which, counts = np.unique(np.searchsorted(bases, ids, side="right") - 1, return_counts=True)
        for base, count in zip(bases[which].tolist(), counts.tolist(), strict=True):
            left = self._waiting[base] - count
            if left > 0:
                self._waiting[base] = left
            else:
                del self._waiting[base], self._polls[base]

    def widen(self, width: int) -> None:
        """Give rows kept without their raw features (a checkpoint from before
        ``Rows.exogenous``) ``width`` missing ones, so that they gather with new rows."""
        for rows in self._polls.values():
            if rows.exogenous.shape[1] != width:
                rows.exogenous = np.full((len(rows), width), np.nan)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the waiting predictions of ``keys`` (evicted)."""
        dropped = [self._queues.pop(key, ()) for key in keys]
        self.release(np.fromiter(chain(*dropped), dtype=np.int64))

    def compact(self) -> None:
        """Copy the waiting rows out of the polls they came from, when those polls
        hold mostly resolved rows.

        A poll's arrays live while any of its rows waits; a key that goes quiet would
        otherwise keep its whole poll alive (on a stream with keys of very different
        rates, most polls). This bounds what is kept to about twice what waits.
        """
        waiting = len(self)
        if sum(map(len, self._polls.values())) <= 2 * waiting + _COMPACT_SLACK:
            return
        keys = list(self._queues)
        lengths = list(map(len, self._queues.values()))
        ids = np.fromiter(chain(*self._queues.values()), dtype=np.int64, count=waiting)
        alive = self.live(ids)  # a failed poll's ids hold no row: they are dropped
        rows = self.gather(ids[alive]).rows()
        fresh = np.full(len(ids), -1, dtype=np.int64)
        fresh[alive] = np.arange(self._next, self._next + int(alive.sum()))
        self._polls, self._waiting = {}, {}
        self.add(rows, self._next)
        renumbered = iter(fresh.tolist())
        queues = {key: tuple(islice(renumbered, n)) for key, n in zip(keys, lengths, strict=True)}
        self._queues = {
            key: queue if min(queue) >= 0 else tuple(i for i in queue if i >= 0)
            for key, queue in queues.items()
            if queue and max(queue) >= 0
        }

    def __getstate__(self) -> dict[str, Any]:
        """For a checkpoint: the queues as arrays (a tuple per key pickles slowly), and
        the polls' rows as one set of arrays with each poll's first id and length
        (with many keys, hundreds of small polls wait at once, and pickling each
        one's arrays on its own cost more than the rows)."""
        polls = list(self._polls.values())
        lengths = np.array([len(rows) for rows in polls], dtype=np.int64)
        merged = Rows.concat(polls) if polls else None
        return {
            "keys": list(self._queues),
            "lengths": np.fromiter(map(len, self._queues.values()), np.intp, len(self._queues)),
            "ids": np.fromiter(chain(*self._queues.values()), dtype=np.int64),
            "rows": merged,
            "bases": np.fromiter(self._polls, dtype=np.int64, count=len(self._polls)),
            "poll_lengths": lengths,
            "waiting": np.fromiter(self._waiting.values(), np.int64, len(self._waiting)),
            "next": self._next,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        ids = iter(state["ids"].tolist())
        self._queues = {
            key: tuple(islice(ids, n))
            for key, n in zip(state["keys"], state["lengths"].tolist(), strict=True)
        }
        merged: Rows | None = state["rows"]
        bases = state["bases"].tolist()
        lengths = state["poll_lengths"].tolist()
        starts = np.cumsum([0, *lengths])[:-1].tolist()
        self._polls = {
            base: merged.slice(start, start + length)
            for base, start, length in zip(bases, starts, lengths, strict=True)
            if merged is not None
        }
        self._waiting = dict(zip(bases, state["waiting"].tolist(), strict=True))
        self._next = state["next"]

    @classmethod
    def of_queues(cls, queues: dict[str, deque[tuple[Rows, int]]]) -> PendingBook:
        """The book of the per-key queues of ``(rows, index)`` that checkpoints held
        before this book existed."""
        book = cls()
        bases: dict[int, int] = {}
        for queue in queues.values():
            for rows, _ in queue:
                if id(rows) not in bases:
                    bases[id(rows)] = book._next
                    book._polls[book._next] = rows
                    book._waiting[book._next] = 0
                    book._next += len(rows)
        for key, queue in queues.items():
            book._queues[key] = tuple(bases[id(rows)] + row for rows, row in queue)
            for rows, _ in queue:
                book._waiting[bases[id(rows)]] += 1
        return book


def column_of(matrix: Callable[[Rows], FloatArray], column: int) -> Callable[[Rows], FloatArray]:
    """Reads one model's column of a per-model matrix (outputs, halves) of a poll."""

    def part(rows: Rows) -> FloatArray:
        out: FloatArray = matrix(rows)[:, column]
        return out

    return part
