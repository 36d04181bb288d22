"""Window store: the last W values per key, bounded memory, snapshot round trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.pipeline.windows import WindowStore

events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(-1e6, 1e6)), max_size=200
)


@given(events, st.integers(2, 8), st.sampled_from([1, 2, 4096]))
def test_each_window_holds_the_last_w_values_of_its_key(
    stream: list[tuple[str, float]], window: int, block_rows: int
) -> None:
    store = WindowStore(window=window, initial_capacity=1, block_rows=block_rows)
    history: dict[str, list[float]] = {}
    for ts, (key, y) in enumerate(stream):
        store.push(store.slot(key), ts, y)
        history.setdefault(key, []).append(y)
    for key, values in history.items():
        slot = store.slot(key)
        row = store.row(slot)
        tail = values[-window:]
        assert row[-len(tail) :].tolist() == tail
        assert np.isnan(row[: window - len(tail)]).all()
        assert store.count(slot) == len(values)
        assert store.newest_ts(slot) is not None


@given(events)
def test_snapshot_restore_round_trip(stream: list[tuple[str, float]]) -> None:
    store = WindowStore(window=4, initial_capacity=2)
    for ts, (key, y) in enumerate(stream):
        store.push(store.slot(key), ts, y)
    copy = WindowStore(window=4)
    copy.restore(store.snapshot())
    assert sorted(copy.keys()) == sorted(store.keys())
    for key in sorted(store.keys()):
        np.testing.assert_array_equal(copy.row(copy.slot(key)), store.row(store.slot(key)))
        assert copy.newest_ts(copy.slot(key)) == store.newest_ts(store.slot(key))


def test_idle_keys_expire_after_the_ttl() -> None:
    now = [0.0]
    store = WindowStore(window=3, ttl_s=10.0, clock=lambda: now[0])
    store.push(store.slot("old"), 1, 1.0)
    now[0] = 5.0
    store.push(store.slot("new"), 1, 1.0)
    now[0] = 12.0
    assert store.evict() == ["old"]
    assert "old" not in store
    assert "new" in store
    fresh = store.slot("old")
    assert np.isnan(store.row(fresh)).all()
    assert store.newest_ts(fresh) is None


def test_least_recently_seen_keys_beyond_max_keys_are_evicted() -> None:
    store = WindowStore(window=3, max_keys=2)
    for key in ["a", "b", "c"]:
        store.push(store.slot(key), 1, 1.0)
    store.slot("a")  # a is now more recent than b
    assert store.evict() == ["b"]
    assert sorted(store.keys()) == ["a", "c"]


def _tail(values: list[float], window: int) -> list[float]:
    """The last ``window`` of ``values``, NaN-padded on the left, as a window holds them."""
    kept = values[-window:] if values else []
    return [float("nan")] * (window - len(kept)) + kept


@given(events, events, st.integers(1, 6), st.booleans())
def test_push_many_holds_each_keys_values_in_order(
    before: list[tuple[str, float]], batch: list[tuple[str, float]], window: int, after: bool
) -> None:
    """Windows just before (or after) each value of a batch, and the state it leaves,
    are those of each key's plain history."""
    store = WindowStore(window, initial_capacity=1, block_rows=2)
    history: dict[str, list[float]] = {}
    for ts, (key, y) in enumerate(before):
        store.push(store.slot(key), ts, y)
        history.setdefault(key, []).append(y)
    expected: list[list[float]] = []
    slots: list[int] = []
    seen: list[int] = []
    for key, y in batch:
        values = history.setdefault(key, [])
        seen.append(sum(k == key for k, _ in batch[: len(slots)]) + int(after))
        if not after:
            expected.append(_tail(values, window))
        values.append(y)
        if after:
            expected.append(_tail(values, window))
        slots.append(store.slot(key))
    got = store.push_many(
        np.array(slots, dtype=np.intp),
        np.arange(len(before), len(before) + len(batch), dtype=np.int64),
        np.array([y for _, y in batch], dtype=np.float64),
        np.array(seen, dtype=np.intp),
    )
    np.testing.assert_array_equal(got, np.array(expected).reshape(len(batch), window))
    for key, values in history.items():
        slot = store.slot(key)
        np.testing.assert_array_equal(store.row(slot), _tail(values, window))
        assert store.count(slot) == len(values)
        assert store.newest_ts(slot) == max(
            [t for t, (k, _) in enumerate(before + batch) if k == key]
        )


class _Clock:
    """A settable clock that pickles (a store pickles its clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _same_store(copy: WindowStore, store: WindowStore) -> None:
    """Every live slot's window, count and time, the key → slot map, the recency order
    and the free slots are the same."""
    assert copy._slots == store._slots
    assert [key for _, key in copy.by_recency()] == [key for _, key in store.by_recency()]
    seen = [when for when, _ in store.by_recency()]
    assert [when for when, _ in copy.by_recency()] == pytest.approx(seen, abs=1.0)
    assert copy._free == store._free
    assert copy.capacity == store.capacity
    for slot in store._slots.values():
        np.testing.assert_array_equal(copy.row(slot), store.row(slot))
        assert copy.count(slot) == store.count(slot)
        assert copy.newest_ts(slot) == store.newest_ts(slot)


@given(events, st.integers(2, 6), st.integers(0, 3), st.sampled_from([1, 2, 4096]))
def test_a_pickled_store_is_the_same_store(
    stream: list[tuple[str, float]], window: int, max_keys: int, block_rows: int
) -> None:
    """Young keys (NaN-padded), full windows, evicted keys' free slots: the compact
    form a checkpoint pickles restores every one as it was, slots unchanged."""
    clock = _Clock()
    store = WindowStore(window, max_keys=max_keys or 1_000_000, clock=clock, block_rows=block_rows)
    for ts, (key, y) in enumerate(stream):
        clock.now = float(ts)
        store.push(store.slot(key), ts, y)
        store.evict()
    copy = pickle.loads(pickle.dumps(store, protocol=5))  # noqa: S301 - our own bytes
    copy._clock = store._clock
    _same_store(copy, store)
    # and it goes on as the original: a new key gets a clean row in a reused slot
    for target in (store, copy):
        target.push(target.slot("new"), 10_000, 1.0)
    _same_store(copy, store)
    assert np.isnan(copy.row(copy.slot("new"))[:-1]).all()


def test_a_store_pickled_in_the_earlier_full_layout_still_loads() -> None:
    """Checkpoints written before the compact form held the whole matrix."""
    store = WindowStore(window=3, initial_capacity=2, clock=lambda: 0.0)
    for ts, key in enumerate(["a", "b", "a", "c", "a"]):
        store.push(store.slot(key), ts, float(ts))
    earlier = {key: value for key, value in store.__dict__.items() if key != "_reader"}
    earlier["_last_seen"] = [(key, 0.0) for key in store._last_seen]
    earlier["_values"] = store._values.take(np.arange(store.capacity))
    copy = WindowStore.__new__(WindowStore)
    copy.__setstate__(earlier)
    _same_store(copy, store)


def test_rows_of_a_grown_store_are_clean_when_handed_out() -> None:
    """Growing leaves the new rows unwritten; a key never sees another's values, nor
    an evicted key's."""
    store = WindowStore(window=4, initial_capacity=1, max_keys=6)
    for ts, key in enumerate("abcdefghij"):
        store.push(store.slot(key), ts, float(ts))
        store.evict()
        assert np.isnan(store.row(store.slot(key))[:-1]).all()
    assert store.capacity == 8
