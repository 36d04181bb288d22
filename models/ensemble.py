"""The online ensemble: per key, a weighted average of the other models' predictions.

No model wins everywhere: on daily prices the last value is best, on a seasonal load a
seasonal model, on a nonlinear sensor a network, and keys of one topic differ. The
ensemble learns, for each key, which of its members to trust, from their recent errors
on that key, with the exponentially weighted average forecaster (Vovk's aggregating
algorithm / Hedge, Cesa-Bianchi & Lugosi, *Prediction, Learning, and Games*, 2006,
ch. 2-3) under four changes that make it find a key's best member early and track
one that changes over time:

* *fixed share* (Herbster & Warmuth, "Tracking the best expert", 1998): after every
  update a fraction ``share`` of the weight is spread evenly, so a member that was bad
  for a long time can take over within a few dozen events once it becomes the best;
* *mixing past posteriors* (Bousquet & Warmuth, "Tracking a small set of experts by
  mixing past posteriors", 2002): a further fraction ``past_share`` goes back to the
  key's own average weights of its last ``past_memory`` events, not evenly. Fixed
  share alone must spread enough to revive any member quickly, and that same spread
  keeps every member that is only a little worse than the best at a weight near
  ``share / (members * eta * its loss gap)``: on a random walk the last value then
  shares the mix with the smoothers and regressions that lose to it. Returning most
  of the spread to the key's recent leaders revives a member that led lately as fast,
  while one that never led stays near the small even share;
* *an anytime learning rate* (Cesa-Bianchi & Lugosi 2006, sec. 2.3: a rate that
  falls as ``1/sqrt(t)`` needs no horizon known in advance): while a key's weights
  rest on fewer than ``eta_warmup`` events, they learn at ``eta * sqrt(eta_warmup /
  events)``, at most :data:`ETA_BOOST_CAP` times ``eta``, and at ``eta`` after. A
  rate small enough not to chase noise over thousands of events (two members a few
  percent apart) is too small for a series of a hundred values, whose best member
  must stand out within a few dozen; the count is the one behind the key's running
  errors, so a key that starts from its task's pooled weights inherits their count
  and their rate (and their running errors, which are in the series' own scale: at
  its first learned event they are rescaled to the key's, by the ratio of that
  event's mean error over the members to theirs. Taken as they were, a key of
  errors around 0.01 among keys of errors around 10 had its losses divided by a
  thousand times its own unit, so its weights never left the pool's);
* *discounting*: past losses fade with a memory of ``memory`` events. With
  ``drift.action: shrink`` (not the default) a confirmed drift of a member whose
  errors fell also forgets that member's past on every key, so it takes over at
  once; on the quality benchmark that helped almost nowhere (a detector on a
  partition's pooled residuals also fires on noise, and the action reaches every
  key), so by default the two shares do the switching.

The loss is the absolute error (``loss: squared``: the squared error) divided by the
key's best member's running mean of it (a plain mean over the first ``memory``
events, exponentially weighted after), capped at :data:`LOSS_CAP`: the best member's
loss is about 1 per event, one twice as bad about 2, on every key whatever its scale,
so ``eta`` means the same everywhere, and one wild event costs a member a bounded
amount (fixed share brings it back if it deserves it). Absolute loss is the default
because forecasts are judged by their MAE: on a spiky series a member that hedges the
rare spikes has the lower squared error and the higher MAE. ``eta`` (0.3) and
``memory`` (1000) were chosen on the benchmark streams as a whole (README, "Forecast
quality"): long enough a memory to tell apart members a few percent apart, with the
shares for quick switches; ``share``, ``past_share`` and ``past_memory`` the same way,
replayed on every suite's member forecasts, and ``eta_warmup`` on the default and
short suites' (``bench.combiner``).

New keys start from their task's pooled weights (the same update run over every
key's errors), so a new key of a topic of random walks starts with persistence in
front. A young key keeps leaning on the pool while its own evidence is thin: until it
has learned ``prior_events`` events of its own, it predicts with log-weights that mix
the pool's current ones and its own in proportion to its count (a shrinkage prior, as
in empirical Bayes: a dozen own errors say little about which member is best, the
task's thousands say more). On a topic of many short series that start together (a
panel of growth curves), the pool is empty when the keys appear; without the mix each
key would weigh its members from its own few errors alone. A task of one key is not
changed by it: its pool and its own weights see the same errors. The member with the
largest weight *leads* a prediction; predictions name it.

This module holds the arithmetic and the per-key state; the partition task runs it
(:mod:`service.pipeline.tasks`), because the ensemble consumes other models' outputs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from models.base import FloatArray, IntArray, Model, ModelContext
from models.registry import ModelParams, ModelSpec, register

__all__ = ["ETA_BOOST_CAP", "LOSS_CAP", "EnsembleParams", "Hedge"]

LOSS_CAP = 25.0
ETA_BOOST_CAP = 5.0
"""The most a young key's learning rate is raised above ``eta`` (reached below
``eta_warmup / 25`` events): one event's errors, on a key's first, say little."""
_LOG_FLOOR = math.log(1e-300)  # a weight that underflowed (share 0)


class EnsembleParams(ModelParams):
    """``ensemble``: combine other configured models per key (module docstring).

    Attributes:
        members: names of the models it combines (others in ``models:``); empty
            means every other model.
        loss: ``absolute`` (the default: forecasts are judged by their MAE, and a
            member that hedges rare spikes must not win over one that is right most
            of the time) or ``squared``.
        eta: learning rate of the weights, per unit of normalised loss.
        eta_warmup: events before which a key learns faster, at ``eta *
            sqrt(eta_warmup / events)`` (anytime rate, module docstring); 1: always
            ``eta``.
        memory: events after which a key's past losses have faded to ``1/e``.
        share: weight spread evenly after every update (fixed share).
        past_share: weight handed back after every update to the key's average
            weights over its last ``past_memory`` events (mixing past posteriors).
        past_memory: events after which a weight's place in that average has faded
            to ``1/e``.
        prior_events: own events after which a key's weights are its own alone;
            before, its log-weights are mixed with its partition's pooled ones in
            proportion to its count. 1: a key's weights are its own from its first
            event.
    """

    members: tuple[str, ...] = ()
    loss: Literal["absolute", "squared"] = "absolute"
    eta: float = Field(default=0.3, gt=0.0, le=100.0)
    eta_warmup: int = Field(default=200, ge=1, le=1_000_000)
    memory: int = Field(default=1000, ge=2, le=1_000_000)
    share: float = Field(default=0.001, ge=0.0, lt=1.0)
    past_share: float = Field(default=0.02, ge=0.0, lt=1.0)
    past_memory: int = Field(default=300, ge=1, le=1_000_000)
    prior_events: int = Field(default=10, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _shares_leave_room(self) -> EnsembleParams:
        if self.share + self.past_share >= 1.0:
            raise ValueError(
                f"ensemble: share ({self.share:g}) + past_share ({self.past_share:g}) must be"
                " below 1: the rest is what the errors decide"
            )
        return self


class Hedge:
    """Per-slot weights of ``members`` members; slots as the task's window store's.

    >>> hedge = Hedge(2, EnsembleParams(eta=1.0, eta_warmup=1))
    >>> hedge.ensure(1)
    >>> slots = np.array([0, 0, 0], dtype=np.intp)
    >>> outputs = np.array([[1.0, 0.0]] * 3)  # member 0 says 1, member 1 says 0
    >>> learned = np.array([[1.0, 0.0]] * 3)
    >>> y, leaders = hedge.run(slots, outputs, slots, learned, np.ones(3), np.arange(1, 4))
    >>> [round(v, 2) for v in y.tolist()], leaders.tolist()
    ([0.5, 0.87, 0.97], [0, 0, 0])
    """

    def __init__(self, members: int, params: EnsembleParams) -> None:
        self.members = members
        self.configure(params)
        self._cap = LOSS_CAP
        self.shrink_to = 1.0
        # Per-slot state in arrays, not a list per slot: a list is an object the cyclic
        # garbage collector walks on every full collection, and with a hundred
        # thousand keys that walk is what every batch pays for in the end.
        self._log_w = np.zeros((0, members))
        self._mse = np.zeros((0, members + 1))
        self._epoch = np.zeros((0, members), dtype=np.int64)
        self._known = np.zeros(0, dtype=np.bool_)
        self._seen = np.zeros(0, dtype=np.int64)  # own events learned, up to prior_events
        self._past = np.zeros((0, members))  # recent average weights (mixing past posteriors)
        # running errors taken from the pool and not yet rescaled to the key's units
        self._foreign = np.zeros(0, dtype=np.bool_)
        self._drifts = [0] * members
        self._drifted = False
        self.learned = 0
        self._pool_log_w = [0.0] * members
        self._pool_mse = [0.0] * (members + 1)
        self._pool_past = [1.0 / members] * members

    def ensure(self, capacity: int) -> None:
        """Room for ``capacity`` slots."""
        missing = capacity - len(self._known)
        if missing > 0:
            self._log_w = np.concatenate([self._log_w, np.zeros((missing, self.members))])
            self._mse = np.concatenate([self._mse, np.zeros((missing, self.members + 1))])
            self._epoch = np.concatenate(
                [self._epoch, np.zeros((missing, self.members), dtype=np.int64)]
            )
            self._known = np.concatenate([self._known, np.zeros(missing, dtype=np.bool_)])
            self._seen = np.concatenate([self._seen, np.zeros(missing, dtype=np.int64)])
            self._past = np.concatenate([self._past, np.zeros((missing, self.members))])
            self._foreign = np.concatenate([self._foreign, np.zeros(missing, dtype=np.bool_)])

    def __setstate__(self, state: dict[str, object]) -> None:
        """A checkpoint from before ``prior_events`` counts its known keys as grown;
        one from before ``past_share`` starts each key's past average at its current
        weights; one from before ``eta_warmup`` takes its default; one from before the
        rescaling of inherited errors has every key's errors its own."""
        self.__dict__.update(state)
        if "_foreign" not in state:
            self._foreign = np.zeros(len(self._known), dtype=np.bool_)
        defaults = EnsembleParams()
        if "eta_warmup" not in state:
            self.eta_warmup = defaults.eta_warmup
        if "_seen" not in state:
            self.prior_events = defaults.prior_events
            self._seen = np.where(self._known, self.prior_events, 0).astype(np.int64)
        if "_past" not in state:
            self.past_share = defaults.past_share
            self.past_decay = math.exp(-1.0 / defaults.past_memory)
            rows = [_normalised(row, 0.0) for row in self._log_w.tolist()]
            self._past = np.array(rows, dtype=np.float64).reshape(self._log_w.shape)
            self._pool_past = _normalised(self._pool_log_w, 0.0)

    def configure(self, params: EnsembleParams) -> None:
        """Take ``params`` (the configuration's) in place of the ones this hedge was
        built or pickled with: a restored checkpoint keeps what it learned, and the
        settings decide how it learns on (a default that changed between versions
        does not change the settings' fingerprint)."""
        self.params = params
        self.eta = params.eta
        self.eta_warmup = params.eta_warmup
        self.decay = math.exp(-1.0 / params.memory)
        self.memory = params.memory
        self.share = params.share
        self.past_share = params.past_share
        self.past_decay = math.exp(-1.0 / params.past_memory)
        self.squared = params.loss == "squared"
        self.prior_events = params.prior_events

    def reset(self, slots: Sequence[int]) -> None:
        """Evicted keys' slots start again from the pool."""
        if len(slots):
            index = np.asarray(slots, dtype=np.intp)
            self._known[index] = False
            self._seen[index] = 0

    def drift(self, member: int, factor: float) -> None:
        """Forget most of ``member``'s past on every key: its log-weight moves to
        ``factor`` of its distance from the leader's (lazily, per key). A member whose
        errors changed is judged again on its new errors: one that got better can
        take the lead soon, one that got worse loses it to its new errors."""
        self.shrink_to = factor
        self._drifts[member] += 1
        self._drifted = True
        self._pool_log_w = _shrunk(self._pool_log_w, member, factor)

    def weights(self, slot: int) -> list[float]:
        """The slot's current weights (normalised, shared); a young slot's mixed with
        the pool's (module docstring)."""
        log_w = self._row(slot)
        seen = int(self._seen[slot])
        if seen < self.prior_events:
            own = seen / self.prior_events
            pool = 1.0 - own
            log_w = [own * a + pool * b for a, b in zip(log_w, self._pool_log_w, strict=True)]
        return _normalised(log_w, self.share)

    def pool_weights(self) -> list[float]:
        """The task's pooled weights (normalised, shared): where a new key starts."""
        return _normalised(self._pool_log_w, self.share)

    def _row(self, slot: int) -> list[float]:
        if not self._known[slot]:
            self._known[slot] = True
            self._log_w[slot] = self._pool_log_w
            self._mse[slot] = self._pool_mse
            self._foreign[slot] = self._pool_mse[-1] > 0  # the pool has learned something
            self._past[slot] = self._pool_past
            self._epoch[slot] = self._drifts
            return list(self._pool_log_w)
        log_w: list[float] = self._log_w[slot].tolist()
        if not self._drifted:  # no drift yet: every slot's epochs are all 0
            return log_w
        epochs: list[int] = self._epoch[slot].tolist()
        if epochs != self._drifts:
            for member, (seen, now) in enumerate(zip(epochs, self._drifts, strict=True)):
                if seen != now:
                    log_w = _shrunk(log_w, member, self.shrink_to ** (now - seen))
            self._log_w[slot], self._epoch[slot] = log_w, self._drifts
        return log_w

    def run(
        self,
        predict_slots: IntArray,
        outputs: FloatArray,
        learn_slots: IntArray,
        learned: FloatArray,
        target: FloatArray,
        before: IntArray,
        drifts_after: Sequence[tuple[int, int]] = (),
        drift_factor: float = 1.0,
    ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
        """Combined predictions and leading member of each predict row, learning in
        event order (as :class:`~models.base.Plan`): ``outputs`` are the members'
        predictions of the rows to predict, ``learned`` those of the rows whose
        ``target`` arrived; after learn row ``j`` of each ``(j, member)`` in
        ``drifts_after``, that member's past is shrunk by ``drift_factor``."""
        n = len(predict_slots)
        combined = [0.0] * n
        leaders = [0] * n
        rows = outputs.tolist()
        slots = predict_slots.tolist()
        cache: dict[int, list[float]] = {}
        done = 0

        def predict_until(stop: int) -> None:
            nonlocal done
            while done < stop:
                slot = slots[done]
                w = cache.get(slot)
                if w is None:
                    w = cache[slot] = self.weights(slot)
                combined[done] = sum(map(operator.mul, w, rows[done]))
                leaders[done] = w.index(max(w))
                done += 1

        drift_rows: dict[int, list[int]] = {}
        for row, member in drifts_after:
            drift_rows.setdefault(row, []).append(member)
        learn_rows, learn_targets = learned.tolist(), target.tolist()
        for j, (slot, stop) in enumerate(zip(learn_slots.tolist(), before.tolist(), strict=True)):
            predict_until(stop)
            self._learn(slot, learn_rows[j], learn_targets[j])
            cache.pop(slot, None)
            if j in drift_rows:
                for member in drift_rows[j]:
                    self.drift(member, drift_factor)
                cache.clear()
        predict_until(n)
        return np.asarray(combined, dtype=np.float64), np.asarray(leaders, dtype=np.intp)

    def _learn(self, slot: int, row: list[float], y: float) -> None:
        self.learned += 1
        errors = [(y - p) ** 2 for p in row] if self.squared else [abs(y - p) for p in row]
        log_w = self._row(slot)
        stats = self._mse[slot].tolist()
        if self._foreign[slot]:
            stats = self._own_units(slot, stats, errors)
        log_w, stats, past = self._update(log_w, stats, errors, self._past[slot].tolist())
        self._log_w[slot] = log_w
        self._mse[slot] = stats
        self._past[slot] = past
        if self._seen[slot] < self.prior_events:
            self._seen[slot] += 1
        self._pool_log_w, self._pool_mse, self._pool_past = self._update(
            self._pool_log_w, self._pool_mse, errors, self._pool_past
        )

    def _own_units(self, slot: int, stats: list[float], errors: list[float]) -> list[float]:
        """The pool's running errors ``stats`` inherited by ``slot``, rescaled to its
        units by this event's ``errors`` (module docstring); as they are, and still
        foreign, while either side is all zeros (an exact event says nothing of a
        scale)."""
        inherited = sum(stats[:-1])
        own = sum(errors)
        if not (inherited > 0 and own > 0 and math.isfinite(own)):
            return stats
        self._foreign[slot] = False
        factor = own / inherited
        return [v * factor for v in stats[:-1]] + [stats[-1]]

    def _update(
        self, log_w: list[float], stats: list[float], errors: list[float], past: list[float]
    ) -> tuple[list[float], list[float], list[float]]:
        """One event's errors into log-weights, the running errors ``stats``
        (members' mean errors, then how many events they average: a plain mean up to
        ``memory`` events, exponentially weighted after) and the average weights
        ``past`` (module docstring, mixing past posteriors)."""
        running, count = stats[:-1], stats[-1]
        best = min(running) if count > 0 else 0.0
        unit = best if best > 0 else sum(errors) / len(errors)
        if unit <= 0:  # every member exact: no member earned or lost anything
            return log_w, [*running, count + 1], past
        cap = self._cap
        # one wild error moves a member's running error by a bounded step
        bound = cap * unit if best > 0 else math.inf
        rate = 1.0 / min(count + 1, self.memory)
        new = [
            m + rate * ((e if e < bound else bound) - m)
            for m, e in zip(running, errors, strict=True)
        ]
        new.append(count + 1)
        decay, eta, limit = self.decay, self.eta, cap * unit
        if count < self.eta_warmup:  # anytime rate (module docstring)
            eta *= min(ETA_BOOST_CAP, math.sqrt(self.eta_warmup / max(count, 1.0)))
        moved = [
            decay * v - eta * (e / unit if e < limit else cap)
            for v, e in zip(log_w, errors, strict=True)
        ]
        log = math.log
        back = self.past_share
        weights = _normalised(moved, self.share, past, back)
        if back > 0.0:
            fade = self.past_decay
            gain = 1.0 - fade
            past = [fade * p + gain * w for p, w in zip(past, weights, strict=True)]
        return [log(w) if w > 1e-300 else _LOG_FLOOR for w in weights], new, past


def _shrunk(log_w: list[float], member: int, factor: float) -> list[float]:
    """``member``'s log-weight moved to ``factor`` of its distance from the top."""
    top = max(log_w)
    out = list(log_w)
    out[member] = top + factor * (log_w[member] - top)
    return out


def _normalised(
    log_w: list[float], share: float, past: list[float] | None = None, back: float = 0.0
) -> list[float]:
    """Weights from log-weights, with ``share`` of the mass spread evenly; and, with
    ``back`` > 0, a fraction ``back`` handed to ``past`` (mixing past posteriors), in
    the same pass."""
    top, exp = max(log_w), math.exp
    raw = [exp(v - top) for v in log_w]
    keep, even = (1.0 - share) / sum(raw), share / len(raw)
    if past is None or back <= 0.0:
        return [keep * r + even for r in raw]
    rest = 1.0 - back
    return [rest * (keep * r + even) + back * p for r, p in zip(raw, past, strict=True)]


def _build(params: EnsembleParams, context: ModelContext) -> Model:
    raise TypeError("an ensemble is combined by its partition task, not built as a model")


register(
    ModelSpec(
        kind="ensemble",
        params=EnsembleParams,
        build=_build,
        summary="per-key weighted average of other models, by their recent errors",
    )
)
