"""Predictions waiting for their true value: the rows a poll predicted, shared by
reference, and the compaction that keeps quiet keys from pinning whole polls.

A task keeps, per key, a queue of :data:`Ref` ``(rows, index)`` into the arrays of the
poll that made the prediction (:class:`Rows`); a poll's rows are gathered with one
fancy index per field (:class:`Gather`). They are part of a task's checkpoint
(:mod:`service.runtime.snapshot`): a prediction made before a checkpoint is still scored and
learned after a restore. Pickle keeps the sharing (one ``Rows`` referenced by many
refs is stored once), so a checkpoint is as small as the live structure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
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

    Pending predictions are references ``(rows, index)`` into these arrays rather than
    an object per event: a poll's rows are gathered with one fancy index each.
    ``outputs`` are in learning-target space, ``halves`` the published interval
    half-widths in key units (NaN: none).
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

    def __len__(self) -> int:
        return len(self.keys)

    def levels(self, column: int) -> FloatArray:
        """Model ``column``'s outputs in the original scale."""
        out: FloatArray = self.offset + self.scale * self.outputs[:, column]
        return out

    def batch(self, names: Sequence[str]) -> FeatureBatch:
        return FeatureBatch(
            self.x, self.window, self.offset, self.keys, names, self.scale, self.seasonal
        )


Ref = tuple[Rows, int]


class Gather:
    """Reads referenced rows out of the few polls' arrays they live in, in ``refs``
    order: each poll's arrays are concatenated once and indexed once per field."""

    def __init__(self, refs: list[Ref]) -> None:
        self.sources = list(dict.fromkeys(rows for rows, _ in refs))
        starts, start = {}, 0
        for rows in self.sources:
            starts[id(rows)] = start
            start += len(rows)
        self.index = np.fromiter((starts[id(rows)] + row for rows, row in refs), np.intp, len(refs))
        self.keys = [rows.keys[row] for rows, row in refs]

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
        """The referenced rows as one new set of arrays."""
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
        )


def compact(pending: dict[str, deque[Ref]]) -> None:
    """Copy the waiting rows out of the polls they came from, when those polls hold
    mostly resolved rows.

    A poll's arrays live while any of its rows waits; a key that goes quiet would
    otherwise keep its whole poll alive (on a stream with keys of very different
    rates, most polls). This bounds what is kept to about twice what waits.
    """
    refs = [ref for queue in pending.values() for ref in queue]
    kept = sum(len(rows) for rows in {id(r): r for r, _ in refs}.values())
    if kept <= 2 * len(refs) + _COMPACT_SLACK:
        return
    rows = Gather(refs).rows()
    index = 0
    for queue in pending.values():
        for position in range(len(queue)):
            queue[position] = (rows, index)
            index += 1


def pack(pending: dict[str, deque[Ref]]) -> dict[str, Any]:
    """``pending`` as a few arrays, for a checkpoint: pickling a queue and a tuple per
    waiting prediction took most of a checkpoint's time with many keys. The polls'
    arrays (:class:`Rows`) are stored once each, as before."""
    refs = [ref for queue in pending.values() for ref in queue]
    polls, rows = zip(*refs, strict=True) if refs else ((), ())
    ids = np.fromiter(map(id, polls), dtype=np.int64, count=len(polls))
    _, first, source = np.unique(ids, return_index=True, return_inverse=True)
    return {
        "keys": list(pending),
        "lengths": np.fromiter(map(len, pending.values()), dtype=np.intp, count=len(pending)),
        "sources": [polls[i] for i in first],
        "source": source.astype(np.intp),
        "row": np.array(rows, dtype=np.intp),
    }


def unpack(packed: dict[str, Any]) -> dict[str, deque[Ref]]:
    """The queues :func:`pack` packed, in their order."""
    sources: list[Rows] = packed["sources"]
    polls = map(sources.__getitem__, packed["source"].tolist())
    refs = iter(zip(polls, packed["row"].tolist(), strict=True))
    return {
        key: deque(islice(refs, length))
        for key, length in zip(packed["keys"], packed["lengths"].tolist(), strict=True)
    }


def column_of(matrix: Callable[[Rows], FloatArray], column: int) -> Callable[[Rows], FloatArray]:
    """Reads one model's column of a per-model matrix (outputs, halves) of a poll."""

    def part(rows: Rows) -> FloatArray:
        out: FloatArray = matrix(rows)[:, column]
        return out

    return part
