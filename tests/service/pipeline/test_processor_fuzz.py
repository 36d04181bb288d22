"""Fuzzing the real Decoder and Processor: no input escapes as an exception, and every
record ends up predicted (by the primary model) or dead-lettered, exactly once.

Three sources of records: arbitrary bytes, JSON-shaped structures built to hit the
decoder's edges (huge and negative integers, lone surrogates, deep nesting, NaN,
wrong types in every field), and a fixed corpus of the records that crashed the
daemon in issue 13, and worse.

Bounded by default (a few seconds in ``make test``). For a long run:

    FORECASTD_FUZZ=long .venv/bin/pytest tests/service/pipeline/test_processor_fuzz.py

selects the ``forecastd-fuzz-long`` Hypothesis profile (20,000 examples per test, no
deadline); ``FORECASTD_FUZZ_EXAMPLES=N`` sets any other count.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.metrics import Metrics

_LONG = os.environ.get("FORECASTD_FUZZ") == "long"
_EXAMPLES = int(os.environ.get("FORECASTD_FUZZ_EXAMPLES", "20000" if _LONG else "150"))
settings.register_profile(
    "forecastd-fuzz-long",
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "forecastd-fuzz",
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("forecastd-fuzz-long" if _LONG else "forecastd-fuzz")

SETTINGS = Settings.model_validate(
    {
        "schema": {"features": ["a", "b"], "max_message_bytes": 4 * 1024 * 1024},
        "forecast": {"window": 8, "lags": 4, "out_of_order": "accept"},
        "models": [
            {"name": "lin", "kind": "river.linear", "primary": True},
            {"name": "last", "kind": "persistence"},
        ],
    }
)
OUTPUT, DLQ = SETTINGS.kafka.output_topic, SETTINGS.kafka.dead_letter_topic


class Harness:
    """One processor for the whole module (state carries over, as in a long-lived
    daemon), fresh offsets for every record."""

    def __init__(self) -> None:
        self.sink = ListSink()
        self.processor = Processor(SETTINGS, self.sink, Metrics(CollectorRegistry(), SETTINGS))
        self._offsets = itertools.count()

    def check(self, pairs: list[tuple[bytes | None, bytes | None]], partition: int = 0) -> None:
        records = [
            RawRecord("in", partition, next(self._offsets), key, value, (("h", b"\xff"),))
            for key, value in pairs
        ]
        before = len(self.sink.records)
        self.processor.process(records)  # must not raise, whatever the records
        self.sink.flush()
        sent = self.sink.records[before:]
        predicted = [
            json.loads(r.value)["source"]
            for r in sent
            if r.topic == OUTPUT and json.loads(r.value)["model"] == "lin"
        ]
        dead = [
            "in:{}:{}".format(
                dict(r.headers)["forecastd.source.partition"].decode(),
                dict(r.headers)["forecastd.source.offset"].decode(),
            )
            for r in sent
            if r.topic == DLQ
        ]
        outcome = sorted(predicted + dead)
        assert outcome == sorted(r.source for r in records), "a record lost or doubled"
        for letter in (r for r in sent if r.topic == DLQ):
            assert len(letter.value) <= SETTINGS.schema_.max_message_bytes
            assert dict(letter.headers)["forecastd.error.reason"]


HARNESS = Harness()

HUGE_INTS = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 10**11, -(10**11)])
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\ud800b", "\udc80" * 3])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    SURROGATES,
    st.sampled_from(["2024-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "0001-01-01"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """An object with the schema's fields, each valid-looking or hostile."""
    good_y = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj["key"] = draw(st.one_of(st.sampled_from(["k1", "k2", "k3"]), JSON_VALUES))
    if draw(st.integers(0, 4)):
        obj["y"] = draw(st.one_of(good_y, good_y, JSON_VALUES))
    if draw(st.booleans()):
        ts = st.integers(min_value=1_600_000_000_000, max_value=1_700_000_000_000)
        obj["ts"] = draw(st.one_of(ts, ts, JSON_VALUES))
    if draw(st.booleans()):
        names = st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=4), SURROGATES)
        obj["x"] = draw(
            st.one_of(st.dictionaries(names, st.one_of(good_y, JSON_VALUES)), JSON_VALUES)
        )
    return obj


def _json(value: Any) -> bytes:
    """Standard-library JSON: it writes NaN, huge integers and escaped surrogates,
    all of which orjson refuses to write (and the decoder must survive)."""
    try:
        return json.dumps(value).encode()
    except ValueError:  # an integer over Python's digit limit
        return b"{}"


KEYS = st.one_of(
    st.none(), st.sampled_from([b"k1", b"k2", b"\xff\xfe", b""]), st.binary(max_size=8)
)


@settings(parent=PROFILE)
@given(st.lists(st.tuples(KEYS, st.one_of(st.none(), st.binary(max_size=200))), max_size=20))
def test_arbitrary_bytes(pairs: list[tuple[bytes | None, bytes | None]]) -> None:
    HARNESS.check(pairs)


@settings(parent=PROFILE)
@given(st.lists(st.tuples(KEYS, st.one_of(event_like(), JSON_VALUES).map(_json)), max_size=20))
def test_json_shaped_structures(pairs: list[tuple[bytes | None, bytes | None]]) -> None:
    HARNESS.check(pairs, partition=1)


NESTED = b"[" * 1_000_000 + b"]" * 1_000_000
CORPUS: list[tuple[bytes | None, bytes | None]] = [
    (b"k", b"[" * 100_000 + b"]" * 100_000),
    (b"k", b'{"y": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    (b"k", b'{"y": {"y": ' * 20_000 + b"1" + b"}" * 40_000),
    (b"k", NESTED),
    (b"k", b'{"y": 1, "ts": 1' + b"0" * 399 + b"}"),
    (b"k", b'{"y": 1, "ts": -1' + b"0" * 399 + b"}"),
    (b"k", b'{"y": 1' + b"0" * 400 + b"}"),
    (b"k", b'{"y": 1, "ts": 1' + b"0" * 5000 + b"}"),
    (None, b'{"key": 1' + b"0" * 5000 + b', "y": 1}'),
    (None, b'{"key": "\\ud800", "y": 1}'),
    (None, b'{"key": "a\\udfffb", "y": 1}'),
    (b"k", b'{"y": 1, "x": {"\\ud800": 1}}'),
    (b"k", b'{"y": 1, "x": {"a": 1' + b"0" * 400 + b"}}"),
    (b"k", b'{"y": 1, "ts": "9999-12-31T23:59:59-01:00"}'),
    (b"k", b'{"y": 1, "ts": "0001-01-01T00:00:00+01:00"}'),
    (b"k", b'{"y": 1, "ts": 1e308}'),
    (b"k", b'{"y": 1e308, "ts": 1700000000000}'),
    (b"k", b'{"y": -1e308, "ts": 1700000000001}'),
    (b"k", b'{"y": NaN}'),
    (b"k", b'{"y": Infinity}'),
    (b"k", b"\xef\xbb\xbf" + b'{"y": 1}'),
    (b"k", b"\x00"),
    (b"\xff", b'{"y": 1}'),
    (b"k" * 100_000, b'{"y": 1}'),
    (b"k", b'{"y": 1, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'),
    (b"k", b'{"y": 1, "x": {' + b",".join(b'"f%d": 1' % i for i in range(10_000)) + b"}}"),
    (b"k", b'{"y": 1, "ts": "' + b"9" * 100_000 + b'"}'),
    (b"k", b'{"y": 1, "ts": 1700000000000, "y": "dup"}'),
    (b"k", b'"just a string"'),
    (b"k", b"[]"),
    (b"k", b"{}"),
    (b"k", b"null"),
]


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_one_at_a_time(index: int) -> None:
    HARNESS.check([CORPUS[index]], partition=2)


def test_corpus_all_in_one_batch_among_valid_records() -> None:
    valid: list[tuple[bytes | None, bytes | None]] = [
        (b"v", b'{"y": %d, "ts": %d}' % (i, 1_700_000_000_000 + i)) for i in range(50)
    ]
    HARNESS.check(valid[:25] + CORPUS + valid[25:], partition=3)


class DefaultsHarness:
    """The built-in defaults (the ensemble and every member, ``features: auto``,
    seasons and calendar found per key) over a long-lived processor of four partitions,
    fed valid events whose numbers are hostile. Every record is published, dead-lettered
    or (``h = 0``, a key's first value) seeds its key; nothing is logged at ERROR (the
    processor's guard logs what raised, then replays the poll event by event)."""

    def __init__(self, horizon: int) -> None:
        self.settings = Settings.model_validate({"forecast": {"horizon": horizon}})
        self.sink = ListSink()
        self.processor = Processor(
            self.settings, self.sink, Metrics(CollectorRegistry(), self.settings)
        )
        self._offsets = itertools.count()
        self.errors: list[str] = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = lambda record: self.errors.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("service").addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        logging.getLogger("service").removeHandler(self._handler)

    def check(self, events: list[dict[str, Any]], partition: int) -> None:
        topic = self.settings.kafka.input_topic
        records = [
            RawRecord(topic, partition, next(self._offsets), str(e["key"]).encode(), _json(e))
            for e in events
        ]
        seeded = sum(task.seeded_only for task in self.processor.tasks.values())
        before = len(self.sink.records)
        self.processor.acknowledged(self.processor.process(records))
        self.sink.flush()
        sent = self.sink.records[before:]
        published = [json.loads(r.value) for r in sent if r.topic != DLQ]
        for prediction in published:
            assert prediction["y_hat"] is None or math.isfinite(prediction["y_hat"])
        seeded = sum(task.seeded_only for task in self.processor.tasks.values()) - seeded
        dead = len(sent) - len(published)
        assert len(published) + dead + seeded == len(records), "a record lost or doubled"
        assert len({p["source"] for p in published}) == len(published), "a record doubled"
        assert not self.errors, self.errors


MAGNITUDES = st.sampled_from([0.0, 5e-324, 1e-300, 1e-12, 1.0, 1e6, 1e12, 1e100, 1e300, 1.7e308])
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    MAGNITUDES,
    MAGNITUDES.map(lambda v: -v),
    st.integers(-(10**18), 10**18),
)


@st.composite
def hostile_stream(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid events: keys that come, go and repeat; times that stand still, jump back
    and forth or step by a millisecond, an hour, a day, a month; features that come and
    go; values from denormal to the largest double."""
    count = draw(st.integers(1, 40))
    t = draw(st.sampled_from([0, 1, 1_700_000_000_000, 10**15]))
    step = draw(st.sampled_from([0, 1, 1000, 3_600_000, 86_400_000, 2_592_000_000, -1000]))
    names: list[str] = draw(st.lists(st.sampled_from(["p", "q", "r"]), max_size=3, unique=True))
    events = []
    for _ in range(count):
        t += step if draw(st.integers(0, 9)) else draw(st.integers(-(10**13), 10**13))
        event: dict[str, Any] = {"key": draw(st.sampled_from("abcdefgh")), "y": draw(NUMBERS)}
        event["ts"] = t
        with_features: bool = draw(st.booleans())
        if names and with_features:
            event["x"] = {name: draw(NUMBERS) for name in names}
        events.append(event)
    return events


@pytest.mark.parametrize("horizon", [0, 1])
def test_the_defaults_survive_numerically_hostile_valid_streams(horizon: int) -> None:
    harness = DefaultsHarness(horizon)

    @settings(parent=PROFILE)
    @given(hostile_stream(), st.integers(0, 3))
    def run(events: list[dict[str, Any]], partition: int) -> None:
        harness.check(events, partition)

    try:
        run()
    finally:
        harness.close()
