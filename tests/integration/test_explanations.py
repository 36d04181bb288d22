"""Live explanations over the real broker: with ``explanations.topic`` set, the daemon
publishes one explanation per sampled prediction (all of them at ``sample: 1``), keyed
like the prediction and naming its source."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    scrape,
    settings_env,
    wait_for,
)
from tests.service.workbench.test_explain import DRIVERS, synthetic

pytestmark = pytest.mark.integration

CONFIG = """\
forecast: {horizon: 0, target: level, calendar: false}
models:
  - {name: linear, kind: river.linear, primary: true}
"""


def test_every_sampled_prediction_gets_its_explanation(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = fresh_topics(broker, partitions=1)
    explained = f"{topics.output}.explained"
    broker.create_topics([explained])
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    env = settings_env(
        broker, topics, FORECASTD_EXPLANATIONS__TOPIC=explained, FORECASTD_EXPLANATIONS__SAMPLE="1"
    )
    settings = make_settings(str(config), env)
    stream = synthetic(600)
    with running_daemon(settings) as daemon:
        wait_for(lambda: scrape(settings.metrics.port, "/readyz")[0] == 200, 60, "readiness")
        produce(broker.bootstrap, topics.input, [(k, v, []) for k, v in stream])
        wait_for(lambda: sum(daemon.source.committed.values()) == len(stream), 90, "all committed")
    predictions = consume_all(broker.bootstrap, topics.output, len(stream))
    explanations = consume_all(broker.bootstrap, explained, len(predictions))
    assert len(predictions) == len(stream)
    assert len(explanations) == len(predictions)
    sources = {orjson.loads(p.value)["source"]: p.key for p in predictions}
    late = []
    for record in explanations:
        value = orjson.loads(record.value)
        assert sources[value["source"]] == record.key
        late.append({a["feature"] for a in value["attributions"][:2]})
    assert sum(top == DRIVERS for top in late[-200:]) > 150
