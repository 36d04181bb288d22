"""The ensemble's per-key weights: a young key leans on its task's pooled weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.ensemble import EnsembleParams, Hedge


def _round_robin(hedge: Hedge, keys: int, rounds: int) -> None:
    """Every key learns ``rounds`` events, keys interleaved: member 0 errs by 1,
    member 1 by 2 (member 0 is the better on every key)."""
    slots = np.arange(keys, dtype=np.intp)
    for _ in range(rounds):
        learned = np.tile([1.0, 2.0], (keys, 1))  # members' outputs; the truth is 0
        before = np.zeros(keys, dtype=np.intp)
        hedge.run(slots[:0], np.empty((0, 2)), slots, learned, np.zeros(keys), before)


def test_a_young_key_leans_on_the_pool_of_keys_that_started_with_it() -> None:
    """Fifty keys start together (the pool is empty when they appear): after five
    events each, a key's own errors barely tell its members apart, the task's 250 do."""
    leaning, alone = Hedge(2, EnsembleParams()), Hedge(2, EnsembleParams(prior_events=1))
    for hedge in (leaning, alone):
        hedge.ensure(50)
        _round_robin(hedge, keys=50, rounds=5)
    assert alone.weights(0)[0] < 0.85
    assert leaning.weights(0)[0] > 0.9


def test_a_key_with_enough_events_has_its_own_weights() -> None:
    hedge = Hedge(2, EnsembleParams(prior_events=4))
    hedge.ensure(2)
    _round_robin(hedge, keys=2, rounds=4)
    for slot in (0, 1):
        own = np.exp(hedge._log_w[slot])
        mixed = (1 - hedge.share) * own / own.sum() + hedge.share / 2
        assert hedge.weights(slot) == pytest.approx(mixed.tolist())
    hedge.reset([1])  # evicted: starts again as a young key, from the pool
    pool = np.exp(hedge._pool_log_w)
    assert hedge.weights(1) == pytest.approx(
        ((1 - hedge.share) * pool / pool.sum() + hedge.share / 2).tolist()
    )


def test_one_key_alone_is_not_changed_by_the_prior() -> None:
    """A task of one key: its pool and its own weights see the same errors."""
    weights = []
    for prior in (1, 10):
        hedge = Hedge(2, EnsembleParams(prior_events=prior))
        hedge.ensure(1)
        _round_robin(hedge, keys=1, rounds=3)
        weights.append(hedge.weights(0))
    assert weights[0] == pytest.approx(weights[1])


def test_a_checkpoint_from_before_the_prior_counts_its_keys_as_grown() -> None:
    hedge = Hedge(2, EnsembleParams())
    hedge.ensure(3)
    _round_robin(hedge, keys=2, rounds=2)  # slots 0 and 1 known, 2 not
    state = hedge.__dict__.copy()
    del state["_seen"], state["prior_events"]
    old = Hedge.__new__(Hedge)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - own bytes
    assert restored._seen.tolist() == [10, 10, 0]
    own = np.exp(restored._log_w[0])
    assert restored.weights(0) == pytest.approx(
        ((1 - hedge.share) * own / own.sum() + hedge.share / 2).tolist()
    )
