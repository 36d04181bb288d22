"""bench/keys.py feeds what it says: equal event counts, and in ``hot`` mode the same
timed events beside a different number of idle keys."""

from __future__ import annotations

from collections import Counter

from bench.keys import HOT_KEYS, hot_records, records


def test_spread_gives_every_key_its_share_in_turn() -> None:
    stream = records(100, 1000)
    per_key = Counter(r.key for r in stream)
    assert len(per_key) == 100
    assert set(per_key.values()) == {10}
    assert [r.key for r in stream[:3]] == [b"key-0", b"key-1", b"key-2"]
    assert [r.offset for r in stream] == list(range(1000))


def test_hot_mode_times_the_same_events_whatever_the_idle_keys() -> None:
    idle, timed = hot_records(5000, 2000)
    assert len(idle) == 2 * (5000 - HOT_KEYS)
    assert len({r.key for r in idle}) == 5000 - HOT_KEYS
    assert {r.key for r in timed}.isdisjoint(r.key for r in idle)
    _, alone = hot_records(HOT_KEYS, 2000)
    assert [r.value for r in timed] == [r.value for r in alone]
    assert timed[0].offset == len(idle)  # offsets go on after the idle keys' records
