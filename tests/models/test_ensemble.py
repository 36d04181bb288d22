"""The ensemble's per-key weights: a young key leans on its task's pooled weights, in
its own units."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.ensemble import ETA_BOOST_CAP, EnsembleParams, Hedge


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
    events each, a key's own errors barely tell its members apart at the long-run
    rate, the task's 250 do."""
    leaning = Hedge(2, EnsembleParams(eta_warmup=1))
    alone = Hedge(2, EnsembleParams(prior_events=1, eta_warmup=1))
    for hedge in (leaning, alone):
        hedge.ensure(50)
        _round_robin(hedge, keys=50, rounds=5)
    assert alone.weights(0)[0] < 0.85
    assert leaning.weights(0)[0] > 0.9


def _gap_step(hedge: Hedge) -> float:
    """How one more event (member 0 errs by 1, member 1 by 2) moves the gap between
    the members' log-weights, beyond the discount of the gap before it."""
    gap = float(hedge._log_w[0, 0] - hedge._log_w[0, 1])
    _round_robin(hedge, keys=1, rounds=1)
    return float(hedge._log_w[0, 0] - hedge._log_w[0, 1]) - hedge.decay * gap


def test_a_young_key_learns_faster_and_at_eta_once_grown() -> None:
    """The anytime rate: ``eta * sqrt(eta_warmup / events)`` while the key's weights
    rest on fewer than ``eta_warmup`` events, capped, then ``eta``."""
    even = {"share": 0.0, "past_share": 0.0}  # the gap is then the errors' alone
    anytime = Hedge(2, EnsembleParams(**even))
    fixed = Hedge(2, EnsembleParams(**even, eta_warmup=1))
    for hedge in (anytime, fixed):
        hedge.ensure(1)
        _round_robin(hedge, keys=1, rounds=1)
    eta, warmup = anytime.eta, anytime.eta_warmup
    assert _gap_step(anytime) == pytest.approx(ETA_BOOST_CAP * eta)  # one event behind
    assert _gap_step(fixed) == pytest.approx(eta)
    _round_robin(anytime, keys=1, rounds=48)  # 50 events behind its weights
    assert _gap_step(anytime) == pytest.approx(eta * (warmup / 50) ** 0.5)
    _round_robin(anytime, keys=1, rounds=warmup)
    assert _gap_step(anytime) == pytest.approx(eta)


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


def _scaled(hedge: Hedge, slot: int, scale: float, best: int, rounds: int) -> None:
    """``rounds`` events of ``slot``: member ``best`` errs by ``scale``, the other by
    ten times that."""
    slots = np.array([slot], dtype=np.intp)
    errs = [10.0 * scale, 10.0 * scale]
    errs[best] = scale
    for _ in range(rounds):
        learned = np.array([errs])  # members' outputs; the truth is 0
        hedge.run(slots[:0], np.empty((0, 2)), slots, learned, np.zeros(1), np.zeros(1, np.intp))


def test_a_new_key_among_keys_of_another_scale_learns_its_own_best_member() -> None:
    """A task whose first key errs in the tens (member 0 the better) for a thousand
    events; then a key whose errors are a thousand times smaller, on which member 1
    is the better. Before: the new key took the pool's running errors as they were,
    in the first key's units, so its losses were divided by a thousand times its own
    unit and its weights stayed the pool's (member 0 leading) for good."""
    hedge = Hedge(2, EnsembleParams())
    hedge.ensure(2)
    _scaled(hedge, slot=0, scale=10.0, best=0, rounds=1000)
    assert hedge.pool_weights()[0] > 0.9
    _scaled(hedge, slot=1, scale=0.01, best=1, rounds=30)
    assert hedge.weights(1)[1] > 0.9
    # in its own units (the pool's ranking of the members, at the key's scale), not
    # in the first key's, where member 0's running error is about 10
    assert 0.001 < hedge._mse[1, 0] < hedge._mse[1, 1] < 1.0


def test_a_new_key_of_the_same_scale_keeps_the_pool_s_running_errors() -> None:
    """Rescaling by the ratio of its first errors to the pool's changes nothing where
    they agree: the key starts from what the task learned, at the task's rate."""
    hedge = Hedge(2, EnsembleParams())
    hedge.ensure(2)
    _scaled(hedge, slot=0, scale=1.0, best=0, rounds=500)
    pool = list(hedge._pool_mse)
    hedge._row(1)
    assert hedge._foreign[1]
    expected = hedge._own_units(1, pool, [1.0, 10.0])
    assert not hedge._foreign[1]
    assert expected == pytest.approx(pool)


def test_an_exact_first_event_leaves_the_inherited_errors_until_one_says_a_scale() -> None:
    hedge = Hedge(2, EnsembleParams())
    hedge.ensure(2)
    _scaled(hedge, slot=0, scale=1.0, best=0, rounds=50)
    hedge._row(1)
    assert hedge._own_units(1, [5.5, 50.0, 50.0], [0.0, 0.0]) == [5.5, 50.0, 50.0]
    assert hedge._foreign[1]
    factor = (0.1 + 1.0) / (5.5 + 50.0)  # the event's errors over the inherited ones
    rescaled = hedge._own_units(1, [5.5, 50.0, 50.0], [0.1, 1.0])
    assert rescaled == pytest.approx([5.5 * factor, 50.0 * factor, 50.0])  # count kept
    assert not hedge._foreign[1]


def test_a_checkpoint_from_before_the_rescaling_has_every_key_s_errors_its_own() -> None:
    hedge = Hedge(2, EnsembleParams())
    hedge.ensure(3)
    _round_robin(hedge, keys=2, rounds=2)
    state = hedge.__dict__.copy()
    del state["_foreign"]
    old = Hedge.__new__(Hedge)
    old.__setstate__(state)
    assert old._foreign.tolist() == [False, False, False]
    _round_robin(old, keys=3, rounds=1)  # a new key in the restored task
    assert old._foreign.tolist() == [False, False, False]


def _random_walk_weights(params: EnsembleParams, steps: int = 4000) -> tuple[float, float]:
    """A random walk, forecast by its last value (member 0, the best there is), a
    smoother (member 1) and the last value plus noise (member 2): the weight the two
    worse members keep on average over the second half, and the combined forecast's
    MAE over the last value's there."""
    rng = np.random.default_rng(7)
    y = np.cumsum(rng.standard_normal(steps))
    hedge = Hedge(3, params)
    hedge.ensure(1)
    smooth, kept, combined, last = y[0], [], [], []
    for t in range(1, steps):
        smooth = 0.5 * y[t - 1] + 0.5 * smooth
        row = [y[t - 1], smooth, y[t - 1] + 0.3 * rng.standard_normal()]
        w = hedge.weights(0)
        if t >= steps // 2:
            kept.append(w[1] + w[2])
            combined.append(abs(y[t] - float(np.dot(w, row))))
            last.append(abs(y[t] - y[t - 1]))
        hedge._learn(0, row, float(y[t]))
    return float(np.mean(kept)), float(np.mean(combined) / np.mean(last))


def test_mixing_past_weights_keeps_less_on_members_that_never_led() -> None:
    """The same total spread, all of it even (fixed share alone) or mostly handed back
    to the key's recent weights: the second keeps the members that lose to the last
    value at a fraction of the weight, and its MAE closer to the last value's."""
    spread = EnsembleParams().share + EnsembleParams().past_share
    even_kept, even_ratio = _random_walk_weights(EnsembleParams(share=spread, past_share=0.0))
    past_kept, past_ratio = _random_walk_weights(EnsembleParams())
    assert past_kept < 0.5 * even_kept
    assert past_ratio < even_ratio
    assert past_ratio < 1.002


def _events_to_lead_again(params: EnsembleParams, span: int = 300) -> int:
    """Member 0 is the better for ``span`` events, member 1 for the next ``span``, then
    member 0 again: how many events member 0 takes to lead once more."""
    hedge = Hedge(2, params)
    hedge.ensure(1)
    slot = np.zeros(1, dtype=np.intp)
    for better in (0, 1):
        for _ in range(span):
            row = [1.0, 2.0] if better == 0 else [2.0, 1.0]
            hedge.run(slot[:0], np.empty((0, 2)), slot, np.array([row]), np.zeros(1), slot)
    for event in range(span):
        if hedge.weights(0)[0] > 0.5:
            return event
        hedge.run(slot[:0], np.empty((0, 2)), slot, np.array([[1.0, 2.0]]), np.zeros(1), slot)
    return span


def test_a_member_that_led_lately_takes_the_lead_back_as_fast_as_under_fixed_share() -> None:
    """Handing the spread back to recent weights does not slow a switch back to a
    member that led before: it is as quick as the former default's even share of 0.01,
    and quicker than the small even share alone."""
    mixed = _events_to_lead_again(EnsembleParams())
    assert mixed <= _events_to_lead_again(EnsembleParams(share=0.01, past_share=0.0))
    assert mixed < _events_to_lead_again(EnsembleParams(past_share=0.0))


def test_a_checkpoint_from_before_the_past_share_starts_its_average_at_its_weights() -> None:
    """It predates the anytime rate too: that takes its default."""
    hedge = Hedge(2, EnsembleParams(share=0.01, past_share=0.0))
    hedge.ensure(3)
    _round_robin(hedge, keys=2, rounds=3)
    state = hedge.__dict__.copy()
    for name in ("_past", "_pool_past", "past_share", "past_decay", "eta_warmup", "params"):
        del state[name]
    old = Hedge.__new__(Hedge)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - own bytes
    own = np.exp(restored._log_w[0])
    assert restored._past[0].tolist() == pytest.approx((own / own.sum()).tolist())
    assert restored.past_share == EnsembleParams().past_share
    assert restored.eta_warmup == EnsembleParams().eta_warmup
    restored.configure(EnsembleParams())  # the configuration decides how it learns on
    assert restored.share == EnsembleParams().share
    _round_robin(restored, keys=3, rounds=2)  # slot 2 starts from the pool's average
    assert restored._past[2].sum() == pytest.approx(1.0)
    assert restored.weights(2)[0] > restored.weights(2)[1]


def test_the_shares_must_leave_room_for_the_errors() -> None:
    with pytest.raises(ValueError, match="must be below 1"):
        EnsembleParams(share=0.5, past_share=0.5)
