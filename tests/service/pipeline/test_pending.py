"""Pending predictions: ids per key, polls kept while any row waits, compaction,
checkpoint round trips."""

from __future__ import annotations

import gc
import pickle
from collections import deque

import numpy as np
import pytest

from service.pipeline import pending
from service.pipeline.pending import PendingBook, Rows


def _rows(keys: list[str]) -> Rows:
    n = len(keys)
    return Rows(
        keys=keys,
        slots=np.arange(n, dtype=np.intp),
        window=np.zeros((n, 4)),
        x=np.zeros((n, 2)),
        offset=np.arange(n, dtype=float),
        scale=np.ones(n),
        seasonal=np.zeros(n),
        outputs=np.zeros((n, 3)),
        halves=np.zeros((n, 3)),
        mature=np.ones(n, dtype=np.bool_),
        settled=np.ones(n, dtype=np.bool_),
        measured=np.ones(n, dtype=np.bool_),
    )


def _poll(book: PendingBook, keys: list[str], horizon: int) -> list[int]:
    """One poll predicting one row per key in ``keys``, as a task runs it; returns the
    ids of the predictions it resolved."""
    base = book.base
    resolved = [book.push(key, base + i, horizon) for i, key in enumerate(keys)]
    book.add(_rows(keys), base)
    ids = np.array([r for r in resolved if r is not None], dtype=np.int64)
    ids = ids[book.live(ids)]
    book.release(ids)
    out: list[int] = ids.tolist()
    return out


def test_each_value_resolves_its_keys_prediction_horizon_values_back() -> None:
    book = PendingBook()
    assert _poll(book, ["a", "b", "a"], horizon=2) == []  # ids 0, 1, 2
    assert _poll(book, ["a", "b"], horizon=2) == [0]  # ids 3, 4: a's third value
    assert _poll(book, ["a", "b", "b"], horizon=2) == [2, 1, 4]  # ids 5, 6, 7
    assert book._queues == {"a": (3, 5), "b": (6, 7)}
    assert len(book) == 4


def test_gather_reads_the_rows_of_any_ids_and_a_fully_resolved_poll_is_dropped() -> None:
    book = PendingBook()
    _poll(book, ["a", "b"], horizon=1)
    _poll(book, ["c"], horizon=1)
    gather = book.gather(np.array([2, 0, 1]))
    assert gather.keys == ["c", "a", "b"]
    assert gather(lambda r: r.offset).tolist() == [0.0, 0.0, 1.0]
    assert _poll(book, ["a", "b"], horizon=1) == [0, 1]
    assert list(book._polls) == [2, 3]  # the first poll's rows all resolved


def test_forgotten_keys_release_their_rows() -> None:
    book = PendingBook()
    _poll(book, ["a", "b"], horizon=3)
    _poll(book, ["a"], horizon=3)
    book.forget(["a", "nobody"])
    assert len(book) == 1
    assert list(book._polls) == [0]
    book.forget(["b"])
    assert len(book) == 0
    assert not book._polls


def test_compaction_copies_the_waiting_rows_out_of_mostly_resolved_polls() -> None:
    book = PendingBook()
    busy = [f"k{i}" for i in range(5000)]
    for poll in range(5):  # each poll pinned by a key that never comes back
        _poll(book, [f"quiet{poll}", *busy], horizon=1)
    assert len(book._polls) == 5
    assert len(book) == 5005
    quiet_rows = book.gather(np.array([book._queues[f"quiet{p}"][0] for p in range(5)])).rows()
    book.compact()
    assert len(book._polls) == 1
    assert len(book) == 5005
    assert sum(map(len, book._polls.values())) == 5005
    # the queues point at the same rows as before, under new ids
    again = book.gather(np.array([book._queues[f"quiet{p}"][0] for p in range(5)])).rows()
    assert again.keys == quiet_rows.keys == [f"quiet{p}" for p in range(5)]
    assert book.gather(np.array(book._queues["k5"])).keys == ["k5"]
    [waiting] = book._queues["k5"]
    assert _poll(book, ["k5"], horizon=1) == [waiting]
    assert len(book) == 5005


def test_a_book_pickles_and_its_queues_are_invisible_to_the_collector() -> None:
    book = PendingBook()
    for _ in range(3):
        _poll(book, ["a", "b", "c"], horizon=2)
    copy = pickle.loads(pickle.dumps(book, protocol=5))  # noqa: S301 - our own bytes
    assert copy._queues == book._queues
    assert copy.base == book.base
    assert len(copy) == len(book)
    assert copy.gather(np.array(book._queues["b"])).keys == ["b", "b"]
    gc.collect()
    assert not any(gc.is_tracked(queue) for queue in copy._queues.values())


def test_a_poll_that_never_added_its_rows_hands_out_no_id_twice() -> None:
    """A poll that raised between its pushes and its rows: its ids are not live, and
    the next poll's ids are new."""
    book = PendingBook()
    _poll(book, ["a"], horizon=1)  # id 0
    assert book.push("a", book.base, horizon=1) == 0  # id 1 handed out, never added
    assert book.base == 2
    assert _poll(book, ["a", "b"], horizon=1) == []  # a resolves 1: not live, not learned
    # id 0 was taken out of a's queue by the poll that raised: its row stays kept
    # (compaction, which rebuilds from the queues, drops it), but no queue holds it
    assert book.live(np.array([0, 1, 2, 3])).tolist() == [True, False, True, True]
    assert book._queues == {"a": (2,), "b": (3,)}


def test_ids_of_a_failed_poll_are_neither_released_nor_compacted_into_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending, "_COMPACT_SLACK", 0)
    book = PendingBook()
    keys = [f"k{i}" for i in range(3000)]
    for poll in range(3):
        _poll(book, [f"quiet{poll}", *keys], horizon=1)
    base = book.base
    book.push("k1", base, horizon=1)  # a poll that raised: k1 now waits on a dangling id
    book.push("lost", base + 1, horizon=1)
    assert not book.live(np.array([base, base + 1])).any()
    book.forget(["lost"])  # releases nothing of the poll before it
    assert sorted(book._waiting.values()) == [1, 1, 3001]
    book.compact()  # 9,003 rows kept for 3,003 waiting: compacts (no slack)
    assert len(book._polls) == 1
    assert "k1" not in book._queues  # its only id held no row
    assert book.gather(np.array(book._queues["k2"])).keys == ["k2"]
    assert book.gather(np.array(book._queues["quiet0"])).keys == ["quiet0"]
    assert len(book) == sum(map(len, book._polls.values())) == 3002


def test_the_per_key_queues_of_earlier_checkpoints_become_a_book() -> None:
    first, second = _rows(["a", "b", "a"]), _rows(["b", "c"])
    queues = {
        "a": deque([(first, 0), (first, 2)]),
        "b": deque([(first, 1), (second, 0)]),
        "c": deque([(second, 1)]),
    }
    book = PendingBook.of_queues(queues)
    assert len(book) == 5
    for key, queue in queues.items():
        gather = book.gather(np.array(book._queues[key]))
        assert gather.keys == [rows.keys[row] for rows, row in queue]
    assert book.base == 5  # new polls' ids follow


def test_rows_pickled_before_settled_take_their_maturity() -> None:
    """Rows checkpointed before ``settled`` existed: their rows were learned from the
    fourth value on, which is what settled means now."""
    rows = _rows(["a", "b"])
    rows.mature = np.array([True, False])
    fields = {name: getattr(rows, name) for name in Rows.__slots__ if name != "settled"}
    old = Rows.__new__(Rows)
    old.__setstate__((None, fields))
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - own bytes
    assert restored.settled.tolist() == [True, False]
    assert restored.keys == ["a", "b"]


def test_rows_pickled_before_measured_are_learned_as_they_were() -> None:
    """Rows checkpointed before ``measured`` existed count as measured: each mature one
    is learned, whatever its target, as it would have been when it was saved."""
    rows = _rows(["a", "b"])
    fields = {name: getattr(rows, name) for name in Rows.__slots__ if name != "measured"}
    old = Rows.__new__(Rows)
    old.__setstate__((None, fields))
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - own bytes
    assert restored.measured.tolist() == [True, True]
    assert len(restored.slice(0, 1).measured) == 1


def test_rows_pickled_before_their_raw_features_gather_with_new_rows() -> None:
    """Rows checkpointed before ``exogenous`` existed have none; the restoring task
    widens them to its feature count (missing values), so that a gather across an
    old poll and a new one reads one array, and the raw features of new rows stay."""
    book = PendingBook()
    old_rows = _rows(["a", "b"])
    fields = {name: getattr(old_rows, name) for name in Rows.__slots__ if name != "exogenous"}
    old = Rows.__new__(Rows)
    old.__setstate__((None, fields))
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - own bytes
    assert restored.exogenous.shape == (2, 0)
    book.push("a", 0, 1)
    book.push("b", 1, 1)
    book.add(restored, 0)
    book.widen(3)
    new = _rows(["a", "b"])
    new.exogenous = np.arange(6.0).reshape(2, 3)
    resolved = [book.push("a", 2, 1), book.push("b", 3, 1)]
    book.add(new, 2)
    book.push("a", 4, 1)
    gathered = book.gather(np.array([*resolved, 2], dtype=np.int64)).rows()
    assert gathered.exogenous.shape == (3, 3)
    assert np.isnan(gathered.exogenous[:2]).all()
    assert gathered.exogenous[2].tolist() == [0.0, 1.0, 2.0]
    assert gathered.batch(["x1", "x2"]).exogenous is gathered.exogenous
