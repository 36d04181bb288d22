"""Window store: the last W values per key, bounded memory, snapshot round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.windows import WindowStore

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


@given(events, events, st.integers(1, 6), st.booleans())
def test_push_many_equals_pushing_one_by_one(
    before: list[tuple[str, float]], batch: list[tuple[str, float]], window: int, after: bool
) -> None:
    """Windows just before (or after) each value, and the final state, as with push()."""
    one, many = WindowStore(window, initial_capacity=1), WindowStore(window, initial_capacity=1)
    for ts, (key, y) in enumerate(before):
        one.push(one.slot(key), ts, y)
        many.push(many.slot(key), ts, y)
    expected, slots, seen, positions = [], [], [], dict[str, int]()
    for ts, (key, y) in enumerate(batch, start=len(before)):
        slot = one.slot(key)
        if not after:
            expected.append(one.row(slot))
        one.push(slot, ts, y)
        if after:
            expected.append(one.row(slot))
        slots.append(many.slot(key))
        seen.append(positions.get(key, 0) + after)
        positions[key] = positions.get(key, 0) + 1
    got = many.push_many(
        np.array(slots, dtype=np.intp),
        np.arange(len(before), len(before) + len(batch), dtype=np.int64),
        np.array([y for _, y in batch], dtype=np.float64),
        np.array(seen, dtype=np.intp),
    )
    np.testing.assert_array_equal(got, np.array(expected).reshape(len(batch), window))
    for key in {k for k, _ in before + batch}:
        np.testing.assert_array_equal(many.row(many.slot(key)), one.row(one.slot(key)))
        assert many.count(many.slot(key)) == one.count(one.slot(key))
        assert many.newest_ts(many.slot(key)) == one.newest_ts(one.slot(key))
