"""Every integration test runs once per Kafka client implementation."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest) -> str:
    """The ``kafka.client`` under test."""
    return str(request.param)
