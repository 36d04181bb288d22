"""bench/stages.py times every stage it names, and leaves the pipeline as it found it."""

from __future__ import annotations

from bench.pipeline import records_for
from bench.stages import TASK_STAGES, timed_turns
from models.base import run_plan
from service.config import load_settings
from service.pipeline import tasks
from service.pipeline.tasks import PartitionTask


def test_every_stage_is_timed_once_per_task_turn_and_the_timers_come_out() -> None:
    settings = load_settings(None, env={})
    records = records_for(settings, "sp500", 1200, partitions=4, keys=8)
    before = {name: getattr(PartitionTask, name) for name in TASK_STAGES}
    timer, per_poll_ms = timed_turns(settings, records, turn=16)
    assert per_poll_ms > 0
    rows = {label: (micros, calls) for label, micros, calls in timer.per_task_turn()}
    whole, _ = rows["task process"]
    assert rows["task process"][1] == 1.0
    for label in ("task _run", "task _fill", "WindowStore.push_many", "Hedge.run"):
        micros, calls = rows[label]
        assert 0 < micros < whole, label
        assert calls == 1.0, label
    members = [label for label in rows if label.startswith("member ")]
    assert {"member Persistence", "member KeyedKNN", "member OnlineRegressor"} <= set(members)
    assert {name: getattr(PartitionTask, name) for name in TASK_STAGES} == before
    assert vars(tasks)["run_plan"] is run_plan
