"""Fixtures for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread, as the daemon does on a small container.

    The networks under test are tiny: with one thread per core, OpenMP workers spin
    against each other and against pytest on a busy 2-core machine, which made the
    conformance run of ``torch.mlp`` ~70x slower without changing any result.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
