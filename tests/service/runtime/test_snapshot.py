"""The checkpoint format: a restored task continues exactly as the original would."""

from __future__ import annotations

import dataclasses
import math
import pickle
import struct
import zlib

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.pipeline.processor import Processor
from service.records import Prediction, RawRecord
from service.runtime import snapshot
from service.runtime.metrics import Metrics
from service.runtime.snapshot import FORMAT_VERSION, SnapshotFormatError

# The built-in default models (ensemble, torch MLP, River linear, baselines), seasons
# detected: every kind of state a task holds.
SETTINGS = Settings.model_validate({"kafka": {"max_poll_records": 50}})
TP = ("ticks", 0)


def _records(start: int, count: int, keys: int = 4) -> list[RawRecord]:
    out = []
    for offset in range(start, start + count):
        step, k = divmod(offset, keys)
        y = 10.0 * k + 3.0 * math.sin(step / 5.0) + 0.01 * step
        value = orjson.dumps({"key": f"k{k}", "ts": 1_700_000_000_000 + step * 1000, "y": y})
        out.append(RawRecord(TP[0], TP[1], offset, f"k{k}".encode(), value, (), None))
    return out


def _processor(settings: Settings = SETTINGS) -> Processor:
    processor = Processor(settings, ListSink(), Metrics(CollectorRegistry(), settings))
    processor.on_assigned([TP])
    return processor


def _feed(processor: Processor, records: list[RawRecord]) -> list[Prediction]:
    out = []
    for i in range(0, len(records), 50):
        out.extend(processor.process(records[i : i + 50]).predictions)
    return out


def _checkpoint(processor: Processor, settings: Settings = SETTINGS) -> bytes:
    task = processor.tasks[TP]
    return snapshot.encode(
        task.state(),
        topic=TP[0],
        partition=TP[1],
        offset=processor.positions[TP],
        keys=task.active_series,
        pending=task.pending_predictions,
        features=processor.features or (),
        settings_fingerprint=snapshot.fingerprint(settings),
    )


def test_a_restored_task_predicts_and_learns_exactly_as_the_original() -> None:
    original = _processor()
    _feed(original, _records(0, 1200))
    blob = _checkpoint(original)
    header, state = snapshot.decode(blob)
    assert (header.version, header.partition, header.offset) == (FORMAT_VERSION, 0, 1200)
    assert header.keys == 4
    assert header.pending == 4  # horizon 1: one waiting per key

    restored = _processor()
    restored.restore(TP, header.features, state)
    later = _records(1200, 400)
    expected = _feed(original, later)
    got = _feed(restored, later)
    assert len(got) == len(expected) > 0
    # The first predictions after the checkpoint resolve the pending ones made before
    # it: the scores, versions and forecasts go on as if nothing happened.
    assert [(p.source, p.model, p.model_version) for p in got] == [
        (p.source, p.model, p.model_version) for p in expected
    ]
    assert [p.y_hat for p in got] == pytest.approx([p.y_hat for p in expected], rel=1e-9)
    assert min(p.model_version for p in got) > 0
    assert (
        restored.tasks[TP].scores()["ensemble"][0].n == original.tasks[TP].scores()["ensemble"][0].n
    )


# A short history and a key cap below the keys: full windows, evicted keys' slots
# handed to others, young keys, all in one checkpoint.
CROWDED = Settings.model_validate(
    {
        "kafka": {"max_poll_records": 50},
        "forecast": {"window": 8, "lags": 4, "history": 12, "max_keys": 5},
    }
)


def test_a_crowded_task_continues_exactly_after_a_restore() -> None:
    original = _processor(CROWDED)
    _feed(original, _records(0, 600, keys=7) + _records(600, 30, keys=3))
    header, state = snapshot.decode(_checkpoint(original, CROWDED))
    restored = _processor(CROWDED)
    restored.restore(TP, header.features, state)
    later = _records(630, 300, keys=6)
    expected, got = _feed(original, later), _feed(restored, later)
    assert len(got) == len(expected) > 0
    assert [(p.key, p.source, p.model_version) for p in got] == [
        (p.key, p.source, p.model_version) for p in expected
    ]
    assert [p.y_hat for p in got] == pytest.approx([p.y_hat for p in expected], rel=1e-9)


def test_a_checkpoint_of_the_earlier_codec_is_still_read() -> None:
    """Bodies written as one zlib-compressed pickle (``pickle5+zlib``) still restore."""
    processor = _processor()
    _feed(processor, _records(0, 200))
    blob = _checkpoint(processor)
    header, state = snapshot.decode(blob)
    body = zlib.compress(pickle.dumps(state, protocol=5), 1)
    meta = orjson.dumps(
        {**dataclasses.asdict(header), "codec": "pickle5+zlib", "body_bytes": len(body)}
    )
    earlier = struct.pack(">4sHI", b"FDCP", FORMAT_VERSION, len(meta)) + meta + body
    again, state_again = snapshot.decode(earlier)
    assert again.codec == "pickle5+zlib"
    restored = _processor()
    restored.restore(TP, again.features, state_again)
    later = _records(200, 100)
    assert [p.y_hat for p in _feed(restored, later)] == pytest.approx(
        [p.y_hat for p in _feed(processor, later)], rel=1e-9
    )


def test_a_checkpoint_of_another_format_version_fails_clearly() -> None:
    processor = _processor()
    _feed(processor, _records(0, 100))
    blob = bytearray(_checkpoint(processor))
    struct.pack_into(">H", blob, 4, FORMAT_VERSION + 1)
    with pytest.raises(SnapshotFormatError, match=rf"format version {FORMAT_VERSION + 1}.*reads"):
        snapshot.decode(bytes(blob))


def test_foreign_or_damaged_bytes_fail_clearly() -> None:
    with pytest.raises(SnapshotFormatError, match="not a forecastd checkpoint"):
        snapshot.decode(b"{}")
    processor = _processor()
    _feed(processor, _records(0, 100))
    blob = _checkpoint(processor)
    with pytest.raises(SnapshotFormatError, match="damaged"):
        snapshot.decode(blob[:-10])


def test_the_fingerprint_follows_the_settings_that_shape_state() -> None:
    other = Settings.model_validate({"models": [{"name": "m", "kind": "ewma", "primary": True}]})
    kafka = SETTINGS.kafka.model_copy(update={"linger_ms": 1})
    polled = SETTINGS.model_copy(update={"kafka": kafka})
    assert snapshot.fingerprint(other) != snapshot.fingerprint(SETTINGS)
    assert snapshot.fingerprint(polled) == snapshot.fingerprint(SETTINGS)


def _with_mlp_params(params: dict[str, object]) -> Settings:
    models = [
        m.model_copy(update={"params": params}) if m.kind == "torch.mlp" else m
        for m in SETTINGS.models
    ]
    return SETTINGS.model_copy(update={"models": tuple(models)})


def test_params_that_leave_the_state_as_it_is_leave_the_fingerprint() -> None:
    """Averaging the MLP's weights only changes how it predicts, and its state loads
    either way: turning it on (as a release did in the built-in config) must not make
    every partition retrain, while a param that does shape the state still does."""
    plain, averaged = _with_mlp_params({}), _with_mlp_params({"average": 0.9})
    assert snapshot.fingerprint(averaged) == snapshot.fingerprint(plain)
    assert snapshot.fingerprint(_with_mlp_params({"lr": 0.01})) != snapshot.fingerprint(plain)
    original = _processor(plain)
    _feed(original, _records(0, 600))
    header, state = snapshot.decode(_checkpoint(original, plain))
    restored = _processor(averaged)
    restored.restore(TP, header.features, state)
    later = _records(600, 200)
    expected, got = _feed(original, later), _feed(restored, later)
    # warm: the restored models go on counting what they learned, as the original's
    assert [(p.source, p.model_version) for p in got] == [
        (p.source, p.model_version) for p in expected
    ]
    assert min(p.model_version for p in got) > 0


def test_rls_key_buckets_leave_the_settings_fingerprint_alone() -> None:
    """``key_buckets`` is state-neutral (a checkpoint of one fit restores into fits
    per bucket, models/rls.py), so turning it on keeps the learned state; another
    ``ridge`` does not."""

    def fingerprint(params: dict[str, float]) -> str:
        rls = {"name": "rls", "kind": "rls", "primary": True, "params": params}
        return snapshot.fingerprint(Settings.model_validate({"models": [rls]}))

    assert fingerprint({"key_buckets": 1}) == fingerprint({"key_buckets": 64}) == fingerprint({})
    assert fingerprint({"ridge": 1.0}) != fingerprint({})


def test_pending_rows_of_a_checkpoint_from_before_raw_features_are_learned_after_it() -> None:
    """Rows checkpointed before they kept their events' raw features come back with
    none; the restoring task gives them its feature count, missing, so that they gather
    with the rows of new polls and the model that reads raw features learns on."""
    settings = Settings.model_validate(
        {
            "kafka": {"max_poll_records": 50},
            "schema": {"features": ["a"]},
            "models": [
                {"name": "last", "kind": "persistence", "primary": True},
                {"name": "reg", "kind": "ridge", "publish": True},
            ],
        }
    )

    def with_feature(records: list[RawRecord]) -> list[RawRecord]:
        out = []
        for record in records:
            event = orjson.loads(record.value or b"")
            event["x"] = {"a": event["y"] * 0.5}
            out.append(record._replace(value=orjson.dumps(event)))
        return out

    original = _processor(settings)
    _feed(original, with_feature(_records(0, 400)))
    header, state = snapshot.decode(_checkpoint(original, settings))
    for rows in state["pending"]._polls.values():
        assert rows.exogenous.shape[1] == 1
        rows.exogenous = rows.exogenous[:, :0]  # as a Rows pickled before the field
    restored = _processor(settings)
    restored.restore(TP, header.features, state)
    later = with_feature(_records(400, 200))
    expected, got = _feed(original, later), _feed(restored, later)
    assert [(p.source, p.model) for p in got] == [(p.source, p.model) for p in expected]
    assert all(p.y_hat is not None and math.isfinite(p.y_hat) for p in got)
    learned = restored.tasks[TP].scores()["reg"][0].n
    assert learned == original.tasks[TP].scores()["reg"][0].n > 0
