"""Fixtures shared by every test folder: the real broker and a running daemon."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.tools.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the whole session, on a free loopback port."""
    with EmbeddedBroker() as running:
        yield running
