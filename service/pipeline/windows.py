"""Per-key rolling windows with bounded memory.

All keys of a partition task share one ``(capacity, W)`` float64 matrix (kept in
blocks that grow without copying: :mod:`service.pipeline.blocks`); a key owns a
row (its *slot*), ordered oldest to newest and left-padded with NaN while the key is
young. Pushing shifts the row by one: O(W) in C, no Python-level ring arithmetic, and
the feature pipeline can read many windows at once by fancy indexing.

Memory is bounded twice: keys unseen for ``ttl_s`` seconds of processing time are
evicted, and so are the least recently seen keys beyond ``max_keys``. The owner drops
whatever else it keeps for an evicted key (pending predictions).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from service.pipeline.blocks import BLOCK_ROWS, RowBlocks

_NO_TS = np.iinfo(np.int64).min
FloatArray = npt.NDArray[np.float64]


def _no_batch(rows: npt.NDArray[np.intp], offsets: npt.NDArray[np.intp]) -> FloatArray:
    raise RuntimeError("read() needs a push_many() first")


def _tail_index(
    slots: npt.NDArray[np.intp], held: npt.NDArray[np.intp], window: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(rows, columns) of the last ``held[i]`` cells of each row ``slots[i]``: where a
    young key's values are (its row is NaN-padded on the left)."""
    rows = np.repeat(slots, held)
    starts = np.cumsum(held) - held  # of each row's run in the flat result
    columns = window - np.repeat(held, held) + np.arange(len(rows)) - np.repeat(starts, held)
    return rows, columns


class WindowStore:
    """The last ``window`` target values of every live key of one task.

    >>> store = WindowStore(window=3)
    >>> for t, y in enumerate([1.0, 2.0, 3.0, 4.0]):
    ...     store.push(store.slot("a"), t, y)
    >>> store.row(store.slot("a")).tolist()
    [2.0, 3.0, 4.0]
    """

    def __init__(
        self,
        window: int,
        ttl_s: float = float("inf"),
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        initial_capacity: int = 64,
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        self.window = window
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._block_rows = block_rows
        self._values = RowBlocks(window, initial_capacity, block_rows)
        self._counts = np.zeros(initial_capacity, dtype=np.int64)
        self._newest_ts = np.full(initial_capacity, _NO_TS, dtype=np.int64)
        self._slots: dict[str, int] = {}
        self._free: list[int] = list(range(initial_capacity - 1, -1, -1))
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._reader: Callable[[npt.NDArray[np.intp], npt.NDArray[np.intp]], FloatArray] = _no_batch

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> list[str]:
        return list(self._slots)

    def slot(self, key: str) -> int:
        """The key's row, allocated on first sight; marks the key as just seen."""
        slot = self._slots.get(key)
        if slot is None:
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._values.row(slot)[:] = np.nan  # rows are filled when handed out
            self._slots[key] = slot
        self._last_seen[key] = self._clock()
        self._last_seen.move_to_end(key)
        return slot

    def peek(self, key: str) -> int | None:
        """The key's row if it has one, without marking it seen (an event that may
        yet be rejected must not keep its key alive)."""
        return self._slots.get(key)

    def last(self, slot: int) -> float:
        """The newest value of ``slot`` (NaN for a key without values)."""
        return float(self._values.row(slot)[-1])

    def newest_of(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """The newest event time of each of ``slots`` (int64 min where none)."""
        out: npt.NDArray[np.int64] = self._newest_ts[slots]
        return out

    def push(self, slot: int, ts_ms: int, y: float) -> None:
        """Append ``y`` observed at ``ts_ms`` to the window of ``slot`` (a batch of one:
        :meth:`push_many` is the one way values enter a window)."""
        self.push_many(
            np.array([slot], dtype=np.intp),
            np.array([ts_ms], dtype=np.int64),
            np.array([y], dtype=np.float64),
            np.zeros(1, dtype=np.intp),
        )

    def push_many(
        self,
        slots: npt.NDArray[np.intp],
        ts_ms: npt.NDArray[np.int64],
        ys: npt.NDArray[np.float64],
        seen: npt.NDArray[np.intp],
        columns: int | None = None,
    ) -> npt.NDArray[np.float64]:
        """Push a batch of values in order, and return some windows as they were.

        Row ``i`` of the result is the window of ``slots[i]`` holding the values pushed
        before this batch plus the first ``seen[i]`` values of ``slots[i]`` in it: so
        ``seen`` = its position among its slot's values (0-based) gives the window just
        before a value, and position + 1 the window just after. Same result as pushing
        the values one at a time and reading each window in between, without a Python
        step per value: every window is gathered with one fancy index into (the touched
        old rows ⊕ new values, grouped by slot), so the cost is the batch's, whatever
        the number of keys. ``columns``: only the newest that many columns of each
        window; :meth:`read` gathers any others until the next push.

        >>> store = WindowStore(window=3)
        >>> store.push(store.slot("a"), 0, 1.0)
        >>> b, a = store.slot("b"), store.slot("a")
        >>> slots = np.array([a, b, a], dtype=np.intp)
        >>> store.push_many(slots, np.arange(3), np.array([2.0, 7.0, 3.0]),
        ...                 seen=np.array([1, 0, 2], dtype=np.intp)).tolist()
        [[nan, 1.0, 2.0], [nan, nan, nan], [1.0, 2.0, 3.0]]
        >>> store.row(a).tolist(), store.count(a)
        ([1.0, 2.0, 3.0], 3)
        >>> store.read(np.array([2]), np.array([[-3, -1]])).tolist()
        [[1.0, 3.0]]
        """
        width = self.window
        order = np.argsort(slots, kind="stable")
        grouped, counts = np.unique(slots[order], return_counts=True)
        starts = np.cumsum(counts) - counts  # of each group in the grouped values
        group_of = np.searchsorted(grouped, slots)
        old = len(grouped) * width
        values = np.concatenate([self._values.take(grouped).ravel(), ys[order]])

        def gather(
            group: npt.NDArray[np.intp],
            start: npt.NDArray[np.intp],
            upto: npt.NDArray[np.intp],
            offsets: npt.NDArray[np.intp],
        ) -> npt.NDArray[np.float64]:
            # offsets: (m, k) or (k,), -1 = the newest value of the window
            t = upto[:, None] + offsets  # position among the batch's values
            index = np.where(t >= 0, old + start[:, None] + t, group[:, None] * width + width + t)
            out: npt.NDArray[np.float64] = values[index]
            return out

        def read(rows: npt.NDArray[np.intp], offsets: npt.NDArray[np.intp]) -> FloatArray:
            group = group_of[rows]
            return gather(group, starts[group], seen[rows], offsets)

        self._reader = read
        take = width if columns is None else min(columns, width)
        windows = gather(group_of, starts[group_of], seen, np.arange(-take, 0))
        self._values.put(
            grouped, gather(np.arange(len(grouped)), starts, counts, np.arange(-width, 0))
        )
        self._counts[grouped] += counts
        np.maximum.at(self._newest_ts, slots, ts_ms)
        return windows

    def read(self, rows: npt.NDArray[np.intp], offsets: npt.NDArray[np.intp]) -> FloatArray:
        """Values of the windows the last :meth:`push_many` returned (rows of its
        batch), at ``offsets`` from their newest value (-1 = newest, ``-window`` =
        oldest); ``offsets`` is ``(k,)`` or ``(len(rows), k)``. NaN where the window
        had no value yet."""
        return self._reader(rows, offsets)

    def row(self, slot: int) -> npt.NDArray[np.float64]:
        """A copy of the window of ``slot``, oldest first."""
        row: npt.NDArray[np.float64] = self._values.row(slot).copy()
        return row

    @property
    def capacity(self) -> int:
        """Rows allocated: every slot handed out so far is below this."""
        return len(self._counts)

    def counts_of(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """How many values were ever pushed for each of ``slots``."""
        out: npt.NDArray[np.int64] = self._counts[slots]
        return out

    def count(self, slot: int) -> int:
        """How many values were ever pushed for ``slot`` (not capped at ``window``)."""
        return int(self._counts[slot])

    def newest_ts(self, slot: int) -> int | None:
        """The newest event time pushed for ``slot``, or None for a new key."""
        ts = int(self._newest_ts[slot])
        return None if ts == _NO_TS else ts

    def evict(self) -> list[str]:
        """Drop keys idle for longer than the TTL, then the least recently seen keys
        beyond ``max_keys``; return the evicted keys."""
        return [key for key, _ in self.evict_slots()]

    def evict_slots(self) -> list[tuple[str, int]]:
        """As :meth:`evict`, with the slot each evicted key held (free again now), so
        owners of per-slot state can reset it."""
        now = self._clock()
        evicted = []
        while self._last_seen:
            key, seen = next(iter(self._last_seen.items()))
            if now - seen <= self._ttl_s and len(self._last_seen) <= self._max_keys:
                break
            evicted.append((key, self._slots[key]))
            self._drop(key)
        return evicted

    def by_recency(self) -> Iterator[tuple[float, str]]:
        """(when seen, key) of every key, least recently seen first; do not evict
        while iterating."""
        for key, seen in self._last_seen.items():
            yield seen, key

    def least_recent(self) -> tuple[float, str] | None:
        """When the least recently seen key was seen, and the key; None if empty."""
        for key, seen in self._last_seen.items():
            return seen, key
        return None

    def drop(self, key: str) -> int:
        """Forget ``key`` (its slot is free again); returns the slot it held."""
        slot = self._slots[key]
        self._drop(key)
        return slot

    def snapshot(self) -> dict[str, Any]:
        """Plain data for a checkpoint: per key its window, count and newest time."""
        keys = list(self._last_seen)
        slots = np.array([self._slots[k] for k in keys], dtype=np.intp)
        return {
            "window": self.window,
            "keys": keys,
            "values": self._values.take(slots),
            "counts": self._counts[slots].copy(),
            "newest_ts": self._newest_ts[slots].copy(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace every window with those of a :meth:`snapshot`."""
        if state["window"] != self.window:
            raise ValueError(f"snapshot window {state['window']} != store window {self.window}")
        for key in list(self._slots):
            self._drop(key)
        for index, key in enumerate(state["keys"]):
            slot = self.slot(key)
            self._values.row(slot)[:] = state["values"][index]
            self._counts[slot] = state["counts"][index]
            self._newest_ts[slot] = state["newest_ts"][index]

    def __getstate__(self) -> dict[str, Any]:
        """For a whole-task checkpoint (:mod:`service.runtime.snapshot`), slots unchanged
        (the task's per-slot state refers to them), in a compact form: the last poll's
        reader is transient; of each key's row only the values it holds (a young key's
        NaN padding is most of the matrix when keys are many and short-lived, and
        copying and compressing it was most of a checkpoint's time); the key maps as
        arrays (one object per key pickles slowly); last-seen times as ages, since
        another process's monotonic clock starts elsewhere."""
        state = dict(self.__dict__)
        del state["_reader"], state["_values"], state["_slots"], state["_last_seen"]
        keys = list(self._slots)
        slots = np.fromiter(self._slots.values(), dtype=np.intp, count=len(keys))
        held = np.minimum(self._counts[slots], self.window)
        full = held == self.window
        young = _tail_index(slots[~full], held[~full], self.window)
        state["_free"] = np.array(self._free, dtype=np.intp)
        state["_compact"] = {
            "capacity": self.capacity,
            "keys": keys,
            "slots": slots,
            "held": held,
            "full": self._values.take(slots[full]),  # rows as they are
            "young": self._values.cells(*young),  # the values of the others, flat
            "recency": np.fromiter(
                map(self._slots.__getitem__, self._last_seen), dtype=np.intp, count=len(keys)
            ),
            "ages": self._clock() - np.fromiter(self._last_seen.values(), dtype=np.float64),
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        compact = state.pop("_compact", None)
        if compact is None:  # the layout before the compact form: one whole matrix
            ages = state.pop("_last_seen")
            self.__dict__.update(state)
            matrix = state["_values"]
            self._block_rows = BLOCK_ROWS
            self._values = RowBlocks(self.window, len(matrix))
            self._values.put(np.arange(len(matrix)), matrix)
            now = self._clock()
            self._last_seen = OrderedDict((key, now - age) for key, age in ages)
            self._reader = _no_batch
            return
        self.__dict__.update(state)
        self._free = state["_free"].tolist()
        keys, slots, held = compact["keys"], compact["slots"], compact["held"]
        full = held == self.window
        # free rows stay unwritten, as after a growth
        self._values = RowBlocks(self.window, compact["capacity"], self._block_rows)
        self._values.put(slots[~full], np.nan)
        self._values.put(slots[full], compact["full"])
        self._values.put_cells(
            *_tail_index(slots[~full], held[~full], self.window), compact["young"]
        )
        self._slots = dict(zip(keys, slots.tolist(), strict=True))
        key_of = dict(zip(slots.tolist(), keys, strict=True))
        now = self._clock()
        self._last_seen = OrderedDict(
            (key_of[slot], now - age)
            for slot, age in zip(compact["recency"].tolist(), compact["ages"].tolist(), strict=True)
        )
        self._reader = _no_batch

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key)
        del self._last_seen[key]
        self._counts[slot] = 0  # its row is filled again when the slot is handed out
        self._newest_ts[slot] = _NO_TS
        self._free.append(slot)

    def _grow(self) -> None:
        """Double the slots. The new rows are left unwritten (:meth:`slot` fills a row
        when it hands it out), and the rows in use are not copied
        (:class:`~service.pipeline.blocks.RowBlocks`)."""
        old = len(self._counts)
        new = old * 2
        self._values.grow(new)
        self._counts = np.concatenate([self._counts, np.zeros(old, dtype=np.int64)])
        self._newest_ts = np.concatenate([self._newest_ts, np.full(old, _NO_TS, dtype=np.int64)])
        self._free.extend(range(new - 1, old - 1, -1))
