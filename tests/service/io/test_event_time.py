"""Event times before 1970 (historical replays) get predictions, not ``bad_time``.

Weekly values from 1958-03-29, the first week of the Mauna Loa CO2 record: half sent
as negative epoch milliseconds, half as ISO-8601 strings, through the same processing
loop as live (list source -> processor -> list sink). Then monthly and yearly series
stamped with ISO 8601's reduced dates (``1949-01``, ``1871``), as such series often
are.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import orjson
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.io.sources import ListSource
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics

SETTINGS = Settings.model_validate(
    {
        "forecast": {"window": 8, "lags": 4},
        "models": [
            {"name": "lin", "kind": "river.linear", "primary": True},
            {"name": "last", "kind": "persistence"},
        ],
    }
)
FIRST_WEEK = datetime(1958, 3, 29, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _run(values: list[bytes]) -> tuple[ListSink, ListSource]:
    records = [
        RawRecord("ticks", 0, offset, None, value, (), 1_700_000_000_000)  # keys in values
        for offset, value in enumerate(values)
    ]
    metrics = Metrics(CollectorRegistry(), SETTINGS)
    sink = ListSink()
    processor = Processor(SETTINGS, sink, metrics)
    source = ListSource(records, processor)
    run_loop(SETTINGS, source, sink, processor, metrics, lambda: False)
    return sink, source


def test_monthly_and_yearly_series_stamped_with_reduced_dates_get_predictions() -> None:
    months = [datetime(1949 + i // 12, 1 + i % 12, 1, tzinfo=UTC) for i in range(30)]
    years = [datetime(1871 + i, 1, 1, tzinfo=UTC) for i in range(30)]
    values = [
        orjson.dumps({"key": key, "ts": moment.strftime(form), "y": 100.0 + i})
        for key, moments, form in (("monthly", months, "%Y-%m"), ("yearly", years, "%Y"))
        for i, moment in enumerate(moments)
    ]
    sink, source = _run(values)

    assert sink.on(SETTINGS.kafka.dead_letter_topic) == []
    predictions = [orjson.loads(r.value) for r in sink.on(SETTINGS.kafka.output_topic)]
    assert [p["ts"] for p in predictions] == [_ms(m) for m in (*months, *years)]
    assert source.committed == {("ticks", 0): len(values)}


def test_1958_event_times_as_negative_epoch_ms_and_iso_strings_get_predictions() -> None:
    weeks = [FIRST_WEEK + timedelta(weeks=i) for i in range(40)]
    rng = random.Random(1958)
    values = []
    for i, week in enumerate(weeks):
        ts: int | str = _ms(week) if i % 2 == 0 else week.strftime("%Y-%m-%dT%H:%M:%SZ")
        level = 315.0 + 0.02 * i + 2.0 * math.sin(2 * math.pi * i / 52) + rng.gauss(0.0, 0.3)
        values.append(orjson.dumps({"key": "co2", "ts": ts, "y": level}))
    assert _ms(FIRST_WEEK) == -371_174_400_000  # negative: before 1970
    sink, source = _run(values)

    assert sink.on(SETTINGS.kafka.dead_letter_topic) == []
    predictions = [orjson.loads(r.value) for r in sink.on(SETTINGS.kafka.output_topic)]
    assert [p["ts"] for p in predictions] == [_ms(week) for week in weeks]
    assert all(p["model"] == "lin" for p in predictions)
    assert source.committed == {("ticks", 0): len(values)}
