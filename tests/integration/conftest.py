"""Every integration test runs once per Kafka client implementation; a test that stops
or restarts its broker takes one of its own (``own_broker``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.tools.broker import EmbeddedBroker


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest) -> str:
    """The ``kafka.client`` under test."""
    return str(request.param)


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own: it may be stopped or restarted, the session's
    broker must not be."""
    with EmbeddedBroker() as broker:
        yield broker
