"""Conformance suite: the :class:`~models.base.Model` contract, checked on real batches.

The processing task trusts every model blindly: it publishes whatever ``predict``
returns, snapshots ``state_dict`` into checkpoints and restores it after a rebalance,
and runs replicas that must agree. A model that breaks one of these promises breaks
the daemon in ways unit tests of the model alone rarely show, so every registered kind
runs this suite (``tests/models/test_conformance.py``), as River runs ``river.checks``
on every estimator.

Each check takes ``build`` (makes a fresh model; calling it twice must give two models
with the same params and seed) and a ``stream`` of ``(batch, target)`` pairs, drives
the model prequentially (predict, then learn) and raises :class:`ConformanceError`
saying which promise broke.

>>> from models.base import ModelContext
>>> from models.baselines import Persistence
>>> context = ModelContext(feature_names=("a", "b"), window=4, horizon=1)
>>> stream = list(synthetic_batches(context, n_batches=4, batch_size=8, seed=1))
>>> run_all(Persistence, stream)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from models.base import FeatureBatch, FloatArray, Model, ModelContext, Plan, run_plan

__all__ = [
    "CHECKS",
    "ConformanceError",
    "Stream",
    "check_clone_is_fresh",
    "check_learn_does_not_mutate_input",
    "check_output_shape_and_finite",
    "check_plan_is_the_event_loop",
    "check_predict_is_pure",
    "check_seeded_determinism",
    "check_state_dict_round_trip",
    "run_all",
    "synthetic_batches",
]

Stream = Sequence[tuple[FeatureBatch, FloatArray]]
Build = Callable[[], Model]


class ConformanceError(AssertionError):
    """A model breaks a promise of the :class:`~models.base.Model` contract.

    An ``AssertionError`` so that pytest reports it as a test failure, raised
    explicitly so that it survives ``python -O``.
    """


def synthetic_batches(
    context: ModelContext, n_batches: int, batch_size: int, seed: int = 0
) -> Iterator[tuple[FeatureBatch, FloatArray]]:
    """Yield ``(batch, target)`` pairs shaped like the live feature pipeline's output.

    Keys are drifting random walks around different levels (so ``offset``, the last
    value, matters); their change is a noisy linear function of standard-normal
    features, so learning models have something to learn. Keys are drawn with Zipf-like
    frequencies: some keys stay young for many batches, so windows are NaN-padded at
    the start, and a key's first event has no history at all (``offset`` 0, all-NaN
    window). Targets are in change space (``y - offset``), one step ahead.

    >>> context = ModelContext(feature_names=("a",), window=3, horizon=1)
    >>> batch, target = next(synthetic_batches(context, n_batches=1, batch_size=2))
    >>> batch.x.shape, batch.window.shape, target.shape
    ((2, 1), (2, 3), (2,))
    >>> bool(np.isnan(batch.window[0]).all())
    True
    """
    rng = np.random.default_rng(seed)
    n_features, width = context.n_features, context.window
    n_keys = max(4, batch_size // 2)
    popularity = 1.0 / np.arange(1, n_keys + 1)
    popularity /= popularity.sum()
    base_level = rng.uniform(10.0, 200.0, size=n_keys)
    beta = rng.normal(size=n_features)
    history: list[list[float]] = [[] for _ in range(n_keys)]
    names = list(context.feature_names)
    for _ in range(n_batches):
        key_ids = rng.choice(n_keys, size=batch_size, p=popularity)
        x = rng.normal(size=(batch_size, n_features))
        window = np.full((batch_size, width), np.nan)
        offset = np.zeros(batch_size)
        target = np.empty(batch_size)
        for row, key in enumerate(key_ids):
            past = history[key][-width:]
            if past:
                window[row, width - len(past) :] = past
                offset[row] = past[-1]
            level = past[-1] if past else base_level[key]
            y = level + 0.01 * level * (0.5 * float(x[row] @ beta) + 0.1 * rng.normal())
            target[row] = y - offset[row]
            history[key] = [*past, y]
        batch = FeatureBatch(
            x=x,
            window=window,
            offset=offset,
            keys=[f"k{key}" for key in key_ids],
            feature_names=names,
        )
        yield batch, target


def check_output_shape_and_finite(build: Build, stream: Stream) -> None:
    """``predict`` returns a finite float64 ``(n,)`` array, untrained or trained.

    Published predictions feed JSON (no NaN there) and error metrics (one NaN makes a
    mean NaN forever), and models are least stable right after start.
    """
    model = build()
    for i, (batch, target) in enumerate(stream):
        _check_output(model.predict(batch), len(batch), f"batch {i}")
        model.learn(batch, target)
    empty = stream[0][0].take(np.zeros(0, dtype=np.intp))
    _check_output(model.predict(empty), 0, "an empty batch")


def check_predict_is_pure(build: Build, stream: Stream) -> None:
    """``predict`` is repeatable, leaves the batch alone and leaves no trace in the model.

    Shadow models, scoring and re-publishing after a retry may all predict the same
    batch; none of that may change what the model learns. The trace test compares a
    model that predicted before every ``learn`` with a twin that never predicted.
    """
    model, twin = build(), build()
    *head, (last, _) = stream
    for i, (batch, target) in enumerate(head):
        before = _copy_batch(batch)
        first = model.predict(batch)
        again = model.predict(batch)
        if not np.array_equal(first, again):
            raise ConformanceError(f"predict gave different outputs twice on batch {i}")
        _check_batch_unchanged(before, batch, f"predict on batch {i}")
        model.learn(batch, target)
        twin.learn(batch, target)
    if not np.array_equal(model.predict(last), twin.predict(last)):
        raise ConformanceError(
            "predict changed the model: a twin that never predicted now predicts "
            "differently (or the model is not deterministic; see check_seeded_determinism)"
        )


def check_learn_does_not_mutate_input(build: Build, stream: Stream) -> None:
    """``learn`` modifies neither the batch nor the target.

    The task keeps the batch to publish and score it; a model scaling ``x`` in place
    would corrupt every model that runs after it in the same batch.
    """
    model = build()
    for i, (batch, target) in enumerate(stream):
        before, target_before = _copy_batch(batch), target.copy()
        model.learn(batch, target)
        _check_batch_unchanged(before, batch, f"learn on batch {i}")
        if not np.array_equal(target, target_before, equal_nan=True):
            raise ConformanceError(f"learn modified the target of batch {i}")


def check_clone_is_fresh(build: Build, stream: Stream) -> None:
    """``clone`` gives an untrained, independent model with the same params and seed.

    The task clones a template model for each new partition; a clone sharing state with
    its origin would let one partition's training leak into another's.
    """
    model = build()
    for batch, target in stream:
        model.learn(batch, target)
    probe, (batch, target) = stream[-1][0], stream[0]
    trained = model.predict(probe)
    clone = model.clone()
    if clone.updates != 0:
        raise ConformanceError(f"a clone reports {clone.updates} updates, expected 0")
    if not np.array_equal(clone.predict(probe), build().predict(probe)):
        raise ConformanceError("a clone predicts differently from a freshly built model")
    clone.learn(batch, target)
    if not np.array_equal(model.predict(probe), trained):
        raise ConformanceError("training a clone changed the model it was cloned from")


def check_state_dict_round_trip(build: Build, stream: Stream) -> None:
    """``state_dict`` is complete, plain, and survives pickling.

    After a rebalance or restart the task loads the last checkpoint into a clone and
    carries on. The restored model must predict exactly as the original did and keep
    learning exactly as it would have (optimizer moments, RNGs and drift detectors
    included), whether the state went through memory or through pickle (the checkpoint
    store).
    """
    half = max(1, len(stream) // 2)
    model = build()
    for batch, target in stream[:half]:
        model.learn(batch, target)
    state = model.state_dict()
    _check_plain(state, "state_dict()")
    restored = [model.clone(), model.clone()]
    restored[0].load_state_dict(state)
    restored[1].load_state_dict(pickle.loads(pickle.dumps(state)))  # noqa: S301 - own bytes
    for how, other in zip(("in memory", "through pickle"), restored, strict=True):
        if other.updates != model.updates:
            raise ConformanceError(
                f"restored {how}: updates {other.updates}, expected {model.updates}"
            )
    for i, (batch, target) in enumerate(stream[half:], start=half):
        expected = model.predict(batch)
        for how, other in zip(("in memory", "through pickle"), restored, strict=True):
            if not np.array_equal(other.predict(batch), expected):
                raise ConformanceError(
                    f"model restored {how} predicts differently on batch {i} "
                    "(state_dict is incomplete)"
                )
        for m in (model, *restored):
            m.learn(batch, target)


def check_seeded_determinism(build: Build, stream: Stream) -> None:
    """Two models built alike and fed alike predict alike, bit for bit.

    Replicas, replays and backtests must reproduce live results; any unseeded
    randomness (weight init, bootstrap sampling, feature subsets) shows up here.
    """
    a, b = build(), build()
    for i, (batch, target) in enumerate(stream):
        if not np.array_equal(a.predict(batch), b.predict(batch)):
            raise ConformanceError(f"two models built with one seed disagree on batch {i}")
        a.learn(batch, target)
        b.learn(batch, target)
    if a.updates != b.updates:
        raise ConformanceError(f"update counts differ: {a.updates} != {b.updates}")


def check_plan_is_the_event_loop(build: Build, stream: Stream) -> None:
    """Working through a :class:`~models.base.Plan` gives the predictions of the
    event-at-a-time loop: predict a row, learn it, predict the next.

    The task hands a model a whole poll as a plan; a model that batches its work
    (``PlanRunner``) must still predict each row after learning every earlier one,
    or accuracy would depend on the poll size again.
    """
    planned, looped = build(), build()
    for i, (batch, target) in enumerate(stream):
        n = len(batch)
        plan = Plan(batch, batch, target, np.arange(1, n + 1, dtype=np.intp))
        got = np.asarray(run_plan(planned, plan), dtype=np.float64)
        expected = np.empty(n)
        for row in range(n):
            one = batch.rows(row, row + 1)
            expected[row] = looped.predict(one)[0]
            looped.learn(one, target[row : row + 1])
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            worst = float(np.max(np.abs(got - expected)))
            raise ConformanceError(
                f"batch {i}: working through the plan differs from the event loop by "
                f"up to {worst:.3g}"
            )


CHECKS: tuple[Callable[[Build, Stream], None], ...] = (
    check_output_shape_and_finite,
    check_seeded_determinism,
    check_predict_is_pure,
    check_learn_does_not_mutate_input,
    check_clone_is_fresh,
    check_state_dict_round_trip,
    check_plan_is_the_event_loop,
)
"""Every check, determinism first: other checks compare models and rely on it."""


def run_all(build: Build, stream: Iterable[tuple[FeatureBatch, FloatArray]]) -> None:
    """Run every check in :data:`CHECKS`; needs a stream of at least two batches."""
    batches = list(stream)
    if len(batches) < 2:
        raise ValueError("the conformance suite needs at least two batches")
    for check in CHECKS:
        check(build, batches)


def _check_output(out: object, n: int, where: str) -> None:
    if not isinstance(out, np.ndarray):
        raise ConformanceError(f"predict on {where} returned {type(out).__name__}, not ndarray")
    if out.dtype != np.float64 or out.shape != (n,):
        raise ConformanceError(
            f"predict on {where} returned {out.dtype} {out.shape}, expected float64 ({n},)"
        )
    if not np.all(np.isfinite(out)):
        raise ConformanceError(f"predict on {where} returned non-finite values")


def _copy_batch(batch: FeatureBatch) -> FeatureBatch:
    return FeatureBatch(
        x=batch.x.copy(),
        window=batch.window.copy(),
        offset=batch.offset.copy(),
        keys=list(batch.keys),
        feature_names=list(batch.feature_names),
    )


def _check_batch_unchanged(before: FeatureBatch, after: FeatureBatch, where: str) -> None:
    for field in ("x", "window", "offset"):
        if not np.array_equal(getattr(before, field), getattr(after, field), equal_nan=True):
            raise ConformanceError(f"{where} modified batch.{field}")
    if list(before.keys) != list(after.keys):
        raise ConformanceError(f"{where} modified batch.keys")
    if list(before.feature_names) != list(after.feature_names):
        raise ConformanceError(f"{where} modified batch.feature_names")


_PLAIN = (type(None), bool, int, float, str, bytes, np.ndarray, np.generic)


def _check_plain(value: Any, path: str) -> None:
    """State must be plain values, numpy arrays, bytes or tensors (see the contract)."""
    if isinstance(value, _PLAIN) or _is_tensor(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConformanceError(f"{path} has a non-string key {key!r}")
            _check_plain(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]")
        return
    raise ConformanceError(f"{path} holds a {type(value).__name__}, not a plain value")


def _is_tensor(value: object) -> bool:
    # Checked by name so that this module does not import torch.
    cls = type(value)
    return cls.__module__.startswith("torch") and cls.__name__ in {"Tensor", "Parameter"}
