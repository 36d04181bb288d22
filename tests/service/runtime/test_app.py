"""The daemon's process-level helpers."""

from __future__ import annotations

import gc
import multiprocessing
import socket

import pytest

from service.config import Settings
from service.runtime.app import frozen_heap, transactional_id


def test_the_start_up_heap_is_frozen_while_serving_and_released_after() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before  # imported modules, models: left alone
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made while serving is still collectable
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0


def test_the_transactional_id_is_stable_per_host_and_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same process restarted in its place gets the same id (so it fences its
    predecessor); a pod's workers get different ones (service.runtime.workers names
    their processes forecastd-worker-<index>)."""
    settings = Settings.model_validate({"kafka": {"group_id": "fc"}})
    assert transactional_id(settings) == f"fc-{socket.gethostname()}"
    named = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"transactional_id": "fc-pod-0"})}
    )
    assert transactional_id(named) == "fc-pod-0"
    monkeypatch.setattr(multiprocessing.current_process(), "name", "forecastd-worker-3")
    assert transactional_id(named) == "fc-pod-0-3"
