"""The daemon's process-level helpers."""

from __future__ import annotations

import gc

from service.runtime.app import frozen_heap


def test_the_start_up_heap_is_frozen_while_serving_and_released_after() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before  # imported modules, models: left alone
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made while serving is still collectable
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
