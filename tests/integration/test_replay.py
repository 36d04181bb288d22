"""``forecastd replay`` feeds a file into a real topic, in the input format of docs/messages.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import consume_all, fresh_topics

pytestmark = pytest.mark.integration


def test_replay_a_csv_file_with_chosen_columns(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topics = fresh_topics(broker)
    data = tmp_path / "ticks.csv"
    rows = [
        "symbol,time,price,volume,note",
        "AAPL,2024-01-02T10:00:00Z,189.5,1200,a",
        "MSFT,2024-01-02T10:00:00Z,370.1,800,b",
        "AAPL,2024-01-02T10:00:01Z,189.7,,c",
    ]
    data.write_text("\n".join(rows) + "\n")
    command = [
        sys.executable, "-m", "service", "replay", str(data),
        "--bootstrap", broker.bootstrap, "--topic", topics.input,
        "--key-col", "symbol", "--time-col", "time", "--target-col", "price",
        "--rate", "100", "--quiet",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"sent 3 records to {topics.input}" in result.stdout
    records = consume_all(broker.bootstrap, topics.input, 3)
    assert len(records) == 3
    values = sorted((orjson.loads(r.value) for r in records), key=lambda v: (v["ts"], v["key"]))
    assert values[0] == {"key": "AAPL", "y": 189.5, "ts": 1704189600000, "x": {"volume": 1200.0}}
    assert values[2] == {"key": "AAPL", "y": 189.7, "ts": 1704189601000, "x": {}}
    assert {r.key for r in records} == {b"AAPL", b"MSFT"}
