"""Window store: the last W values per key, bounded memory, snapshot round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.pipeline.windows import WindowStore

events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(-1e6, 1e6)), max_size=200
)


@given(events, st.integers(2, 8))
def test_each_window_holds_the_last_w_values_of_its_key(
    stream: list[tuple[str, float]], window: int
) -> None:
    store = WindowStore(window=window, initial_capacity=1)
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
    store = WindowStore(window, initial_capacity=1)
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
