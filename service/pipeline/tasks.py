"""A partition task: everything forecastd knows that was learned from one partition.

Like a Kafka Streams task, each input partition owns its state: per-key histories,
seasons and spacing, the predictions waiting for their true value, the feature scaler,
the models, the ensemble's per-key weights, the interval state, scores and drift
detectors. When a partition moves to another replica its task moves (or is dropped)
whole, so state of two partitions is never mixed.

One call of :meth:`PartitionTask.process` handles one poll of a partition's events,
in offset order:

1. per event, in Python only what must be sequential: the out-of-order check, which
   pending prediction this event is the true value of (horizon ``h >= 1``: the one
   made ``h`` events earlier for the same key), and queueing its own;
2. every value pushed into its key's history, spacing and seasons updated, one
   feature computation for all new rows (NumPy, per poll);
3. every model works through the poll in event order (:class:`~models.base.Plan`):
   it predicts each row after learning every value that arrived before it, never one
   that arrived after. The ensemble then combines its members row by row, and the
   intervals are set row by row, in the same order;
4. every resolved prediction is scored (all models) and fed to the drift detectors.

So every prediction is made before any model learned the value it predicts, and
after it learned all earlier ones (test-then-train, event by event, exactly as
River's ``progressive_val_score``), whatever the poll size: a backlog drained 1,000
records at a time gives the numbers a live trickle gives. Only ``torch.*`` models
learn in optimizer steps of ``learn_every`` rows, so their predictions may miss up to
``learn_every - 1`` of the latest values. With ``h = 0`` the prediction of an event
uses only earlier events' values and the event's exogenous features. With ``target:
change`` and ``h = 0`` the first event of a key has no previous value to change from:
it only seeds the history and gets no prediction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import FloatArray, Model, Plan, reads_raw_features, run_plan
from models.ensemble import EnsembleParams, Hedge
from service.config import ModelSettings, Settings
from service.pipeline.counts import TaskCounts
from service.pipeline.drift import DriftMonitor
from service.pipeline.features import (
    SEASON_CYCLES,
    FeaturePipeline,
    RunningScaler,
    has_season,
    season_offsets,
    season_step_offsets,
)
from service.pipeline.intervals import Coverage, CoverageStats, Intervals
from service.pipeline.pending import COMPACT_EVERY, Gather, PendingBook, Rows, column_of
from service.pipeline.scoring import LARGEST, Scorer, ScoreStats, bounded, finite_or_zero
from service.pipeline.seasons import SPACING_GAPS, SeasonBook, detect, detection_due
from service.pipeline.windows import WindowStore
from service.records import Event, Invalid, Prediction

ScoredCallback = Callable[[str, FloatArray, FloatArray], None]
"""Called with (model name, true values, predictions) for every scored batch."""

IntArray = npt.NDArray[np.intp]
_NO_TS = np.iinfo(np.int64).min


STATS_SPAN = 128
"""Newest values of a key whose statistics are features (its unit, where its level
stands): enough for a stable spread, and a fraction of the cost of the whole history,
which only season detection reads."""
OUTPUT_LIMIT = 30.0
"""With ``target: change``, learning targets and model outputs are clipped to this many
key units (typical changes): a jump of more than that is learned as that much (as a
Huber loss would), so a key that was flat for a while and then moves cannot hand the
models targets in the millions, and a young or diverging model's wild output never
reaches a published prediction."""
MATURE_VALUES = 2
"""Values a key's history needs before its rows are learned from: with one, it has no
change, so its unit is a guess, and a target in a guessed unit can be off by orders of
magnitude. Such rows are predicted, published and scored, not learned. From the second
value on, the key's one change sizes its unit; waiting for more throws away most of a
short series (a panel of growth curves of a dozen values each, which all start
together, would be predicted by models that have learned nothing for a third of it)."""
SCREEN_VALUES = 4
"""Values a key needs before outliers are judged by its unit: a single change is enough
to scale a learning target (which is clipped to :data:`OUTPUT_LIMIT` anyway), not to
reject an event."""


REACH = 1.0
"""How far past a key's recent range a model's forecast may go, in widths of that range
(:func:`reach_bounds`)."""


def reach_bounds(
    histories: FloatArray, offset: FloatArray, scale: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per row, the lowest and the highest output any model may give, in learning-target
    space: the range of the key's recent values (``histories``, its statistics span, NaN
    where it has fewer), widened on each side by :data:`REACH` times its width, and not
    below 0 where those values are all 0 or more; no bound (NaN) while the key has
    fewer than :data:`SCREEN_VALUES` values.

    A forecast beyond that is a model's extrapolation, not something the key has shown
    it does. A change model that learned one outlier jump of a young key (a table's
    odd row, a sensor's first spike) repeats it, scaled by whatever its inputs then
    say: on a table of a few dozen rows the learned members forecast several times
    the largest value seen, and the ensemble's first weights, still near even,
    published a share of that (README, "Small tables"). One width of room leaves a
    series' own behaviour alone: a trend moves past its range by a step, a cycle the
    span holds stays inside its range, and a level shift widens the range as soon as
    it is seen. Counts, volumes, prices and loads are never negative, and a model of
    their changes does not know it: the floor at 0 keeps a night of zeros, or a
    count's quiet stretch, from being forecast below them (a series that turns
    negative after a long positive stretch loses its floor with its first negative
    value). Applied to every model's output (:data:`OUTPUT_LIMIT` bounds a change in
    key units as well), so the ensemble, a convex mix, stays within it too.

    >>> history = np.array([[np.nan, 10.0, 12.0, 11.0, 14.0], [np.nan, np.nan, np.nan, 1.0, 2.0]])
    >>> low, high = reach_bounds(history, offset=np.array([14.0, 2.0]), scale=np.array([2.0, 1.0]))
    >>> low.tolist(), high.tolist()  # levels 6 and 18, as changes from 14 in units of 2
    ([-4.0, nan], [2.0, nan])
    >>> low, _ = reach_bounds(np.array([[3.0, 0.0, 1.0, 2.0]]), np.zeros(1), np.ones(1))
    >>> low.tolist()  # never below 0: not -3
    [0.0]
    """
    finite = np.isfinite(histories)
    known = finite.sum(axis=1) >= SCREEN_VALUES
    lowest = np.min(np.where(finite, histories, np.inf), axis=1)
    highest = np.max(np.where(finite, histories, -np.inf), axis=1)
    with np.errstate(invalid="ignore"):  # rows without values: inf - inf, masked below
        room = REACH * (highest - lowest)
        floor = lowest - room
        floor = np.where(lowest >= 0.0, np.maximum(floor, 0.0), floor)
        low: FloatArray = np.where(known, (floor - offset) / scale, np.nan)
        high: FloatArray = np.where(known, (highest + room - offset) / scale, np.nan)
    return low, high


def learnable(
    mature: npt.NDArray[np.bool_], measured: npt.NDArray[np.bool_], target: FloatArray
) -> npt.NDArray[np.bool_]:
    """The resolved rows a task learns from: its key had a change (``mature``), and its
    target is a size in a measured unit, or no change at all.

    A row whose key's unit is a guess (the key has not moved within its statistics
    span, :data:`STATS_SPAN`, or ever: its unit is then 1% of its level, see
    :meth:`~service.pipeline.features.FeaturePipeline._scale`) teaches, with ``target:
    change``, only that the value stayed where it was: no change is 0 in any unit, any
    other change is a size in a unit that can be off by orders of magnitude. The first
    step of a step series (a quantised sensor, an administered price, a monthly index
    held for weeks) after a flat start, or a sensor's first move after a dropout, was
    learned as a change of :data:`OUTPUT_LIMIT` units, the largest target any model had
    seen, and a neighbour model that kept that row predicted such steps through the
    flat stretches that followed. Such rows are still predicted, published and scored.
    """
    out: npt.NDArray[np.bool_] = mature & (measured | (target == 0.0)) & np.isfinite(target)
    return out


@dataclass(slots=True)
class _ModelSlot:
    name: str
    model: Model | None  # None: an ensemble, combined by the task
    scorer: Scorer
    drift: DriftMonitor
    published: bool
    members: list[int] = field(default_factory=list)  # ensemble: member columns
    hedge: Hedge | None = None
    intervals: Intervals | None = None
    coverage: Coverage | None = None


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """What one poll produced: predictions to publish, records to dead-letter, and
    what it did, for the processor's metrics."""

    predictions: list[Prediction]
    invalid: list[Invalid]
    counts: TaskCounts = field(default_factory=TaskCounts)


class PartitionTask:
    """State and processing for one input partition."""

    def __init__(
        self,
        topic: str,
        partition: int,
        settings: Settings,
        prototypes: Mapping[str, Model],
        pipeline: FeaturePipeline,
        on_scored: ScoredCallback | None = None,
    ) -> None:
        self.topic = topic
        self._on_scored = on_scored
        self.partition = partition
        forecast = settings.forecast
        self._horizon = forecast.horizon
        self._change = forecast.target == "change"
        self._window = forecast.window
        self._calendar = forecast.calendar
        self._detect = not forecast.seasonal_periods
        self._reject_out_of_order = forecast.out_of_order == "dlq"
        self._shrink = settings.drift.shrink if settings.drift.action == "shrink" else 1.0
        self._pipeline = pipeline
        self._counts = TaskCounts()
        self._windows = WindowStore(forecast.kept, forecast.key_ttl_s, forecast.max_keys)
        self._recent = min(forecast.kept, max(forecast.window, STATS_SPAN))
        self._seasons = SeasonBook(forecast.seasonal_periods)
        self._scaler = RunningScaler(len(pipeline.names))
        self._pending = PendingBook()
        self._batches = 0
        names = [m.name for m in settings.models]
        self._slots = [self._slot(m, settings, prototypes, names) for m in settings.models]
        self._base = [i for i, s in enumerate(self._slots) if s.model is not None]
        # the events' raw features, kept with the rows only for a model that reads them
        raw = any(s.model is not None and reads_raw_features(s.model) for s in self._slots)
        self._raw_width = len(pipeline.exogenous) if raw else 0
        self._combined = [i for i, s in enumerate(self._slots) if s.model is None]
        self._primary_first = sorted(
            range(len(self._slots)), key=lambda i: not settings.models[i].primary
        )
        self.seeded_only = 0
        self._outliers = forecast.outliers
        self._outlier_threshold = forecast.outlier_threshold
        self._outlier_patience = forecast.outlier_patience
        # keys whose last values were outliers: how many in a row, and the unit they
        # were judged by (the outliers themselves must not widen the bound)
        self._strikes: dict[str, tuple[int, float]] = {}

    @staticmethod
    def _slot(
        config: ModelSettings,
        settings: Settings,
        prototypes: Mapping[str, Model],
        names: list[str],
    ) -> _ModelSlot:
        scoring = settings.scoring
        published = config.primary or config.publish
        slot = _ModelSlot(
            name=config.name,
            model=None if config.kind == "ensemble" else prototypes[config.name].clone(),
            scorer=Scorer(scoring.rolling_window),
            drift=DriftMonitor(settings.drift),
            published=published,
        )
        if config.kind == "ensemble":
            members = settings.members(config)
            slot.members = [names.index(m) for m in members]
            slot.hedge = Hedge(len(members), EnsembleParams.model_validate(config.params))
        slot.intervals = Intervals(
            scoring.interval_coverage, scoring.interval_min_samples, scoring.rolling_window
        )
        slot.coverage = Coverage(scoring.rolling_window)
        return slot

    @property
    def active_series(self) -> int:
        return len(self._windows)

    def scores(self) -> dict[str, tuple[ScoreStats, ScoreStats]]:
        """Per model: (since-start stats, rolling stats) of this task."""
        return {s.name: (s.scorer.total, s.scorer.rolling()) for s in self._slots}

    def coverage(self) -> dict[str, tuple[CoverageStats, CoverageStats]]:
        """Per published model: (since-start, rolling) interval coverage of this task."""
        out = {}
        for s in self._slots:
            if s.published and s.coverage is not None:
                out[s.name] = (s.coverage.total(), s.coverage.rolling())
        return out

    # -- one poll -----------------------------------------------------------------------

    def process(self, events: Sequence[Event]) -> TaskOutput:
        self._evict()
        invalid: list[Invalid] = []
        pushed: list[Event] = []  # every accepted event: its value enters the history
        slots: list[int] = []
        seen: list[int] = []  # per event: its key's values pushed in this poll before it
        predicted: list[int] = []  # positions (in ``pushed``) of events that get a prediction
        refs: list[int] = []  # ids of the predictions this poll resolves, in event order
        resolved_at: list[int] = []  # position of the event that resolved each
        truth: list[float] = []
        rows = Rows()  # this poll's predictions, filled below
        batch_counts: dict[int, int] = {}
        newest: dict[str, int] = {}
        last_y: dict[str, float] = {}  # each key's newest accepted value in this poll
        latest: int | None = None
        windows, horizon, pending = self._windows, self._horizon, self._pending
        base = pending.base  # the id of this poll's first predicted row
        suspect, unit_at = self._suspects(events)
        strikes = self._strikes
        for number, event in enumerate(events):
            if self._reject_out_of_order:
                known = windows.peek(event.key)
                latest = newest.get(event.key)
                if latest is None and known is not None:
                    latest = windows.newest_ts(known)
                if latest is not None and event.ts_ms < latest:
                    detail = f"event time {event.ts_ms} is older than the key's newest {latest}"
                    invalid.append(Invalid("out_of_order", detail, event.record))
                    continue
            if suspect[number] or (strikes and event.key in strikes):
                checked = self._check_outlier(event, last_y, float(unit_at[number]))
                if checked is None:
                    invalid.append(Invalid("outlier", self._outlier_detail(event), event.record))
                    continue
                event = checked
            if self._reject_out_of_order:
                newest[event.key] = event.ts_ms if latest is None else max(latest, event.ts_ms)
            last_y[event.key] = event.y
            slot = windows.slot(event.key)
            position = batch_counts.get(slot, 0)
            batch_counts[slot] = position + 1
            here = len(pushed)
            pushed.append(event)
            slots.append(slot)
            seen.append(position)
            if horizon == 0:
                if self._change and windows.count(slot) + position == 0:
                    self.seeded_only += 1  # nothing to change from: it only seeds
                    continue
                refs.append(base + len(predicted))
                resolved_at.append(here)
                truth.append(event.y)
            else:
                resolved = pending.push(event.key, base + len(predicted), horizon)
                if resolved is not None:
                    refs.append(resolved)
                    resolved_at.append(here)
                    truth.append(event.y)
            predicted.append(here)
        if not pushed:
            return TaskOutput([], invalid, self.take_counts())
        self._grow()
        slot_index = np.asarray(slots, dtype=np.intp)
        ts = np.fromiter((e.ts_ms for e in pushed), dtype=np.int64, count=len(pushed))
        counts_before = windows.counts_of(slot_index)
        self._observe_gaps(slot_index, ts)
        histories = windows.push_many(
            slot_index,
            ts,
            np.fromiter((e.y for e in pushed), dtype=np.float64, count=len(pushed)),
            np.asarray(seen, dtype=np.intp) + (1 if horizon else 0),
            columns=self._recent,
        )
        count_at = counts_before + np.asarray(seen) + 1  # values of the key up to each event
        periods = self._periods(slot_index, count_at)
        if not predicted:  # h = 0, target change: nothing but keys' first values, seeded
            return TaskOutput([], invalid, self.take_counts())
        index = np.asarray(predicted, dtype=np.intp)
        new = [pushed[i] for i in predicted]
        reach = self._fill(
            rows,
            index,
            new,
            slot_index[index],
            histories[index],
            ts[index],
            count_at[index],
            periods[index],
        )
        pending.add(rows, base)
        resolved_ids = np.asarray(refs, dtype=np.int64)
        made = pending.live(resolved_ids)  # all but those of a poll that raised
        resolved_ids = resolved_ids[made]
        gather = pending.gather(resolved_ids) if len(resolved_ids) else None
        pending.release(resolved_ids)
        same_poll = np.where(resolved_ids >= base, resolved_ids - base, -1).astype(np.intp)
        predictions = self._run(
            rows,
            new,
            gather,
            same_poll,
            np.asarray(truth, dtype=np.float64)[made],
            index,
            np.asarray(resolved_at, dtype=np.intp)[made],
            reach,
        )
        self._batches += 1
        # offset by partition: the tasks of one poll do not all compact in the same poll
        if (self._batches + self.partition) % COMPACT_EVERY == 0:
            pending.compact()
        return TaskOutput(predictions, invalid, self.take_counts())

    def _suspects(self, events: Sequence[Event]) -> tuple[list[bool], FloatArray]:
        """Per event, whether :meth:`_check_outlier` must look at it: a value beyond
        the bound from the value before it of its key in this poll (or in the store),
        or of a key with strikes; and each event's key unit to judge it by (from the
        store, or from the key's changes earlier in this poll). A vectorised pass, so
        that the common case (nothing odd) costs little Python per event."""
        ys = np.fromiter((e.y for e in events), dtype=np.float64, count=len(events))
        huge = ~(np.abs(ys) <= LARGEST)
        if self._outliers == "accept" or len(events) == 0:
            only_huge: list[bool] = huge.tolist()
            return only_huge, np.full(len(events), np.nan)
        lookup = self._windows.peek
        slot_of = np.fromiter(
            ((-1 if (s := lookup(e.key)) is None else s) for e in events), np.intp, len(events)
        )
        known = slot_of >= 0
        stored = np.full(len(events), np.nan)
        units = np.full(len(events), np.nan)
        for i in np.flatnonzero(known).tolist():
            stored[i] = self._windows.last(int(slot_of[i]))
        units[known] = self._seasons.units[slot_of[known]]
        ys = bounded(ys, 1e150)  # changes and squares stay finite
        previous, count, squares = _poll_changes([e.key for e in events], ys, stored)
        young = ~np.isfinite(units) & (count >= SCREEN_VALUES)
        with np.errstate(invalid="ignore", divide="ignore"):
            size = np.sqrt(squares / count)  # the root mean square, as the key's unit
        units[young] = np.where(size[young] > 0, size[young], np.nan)
        with np.errstate(invalid="ignore"):
            far = np.abs(ys - previous) > self._outlier_threshold * units
        flagged = huge | far  # (keys with strikes are checked in the loop, as they come)
        out: list[bool] = flagged.tolist()
        return out, units

    def _check_outlier(self, event: Event, last_y: dict[str, float], unit: float) -> Event | None:
        """The event as it enters the key's history (clipped under ``clip``), or None
        to reject it (``forecast.outliers``)."""
        if not abs(event.y) <= LARGEST:
            return None
        slot = self._windows.peek(event.key)
        last = last_y.get(event.key)
        if last is None and slot is not None:
            last = self._windows.last(slot)
        strikes, unit = self._strikes.get(event.key, (0, unit))
        if last is None or not np.isfinite(last) or not np.isfinite(unit):
            return event  # nothing to judge against yet
        bound = self._outlier_threshold * float(unit)
        if abs(event.y - last) <= bound:
            self._strikes.pop(event.key, None)
            return event
        if strikes >= self._outlier_patience:  # a new level, not an outlier
            self._strikes.pop(event.key, None)
            return event
        self._strikes[event.key] = (strikes + 1, unit)
        if self._outliers == "clip":
            return event._replace(y=last + bound if event.y > last else last - bound)
        return None

    def _outlier_detail(self, event: Event) -> str:
        if not abs(event.y) <= LARGEST:
            return f"|y| > {LARGEST:g}"
        return (
            f"further than {self._outlier_threshold:g} typical changes from the key's last"
            " value (forecast.outliers)"
        )

    def _observe_gaps(self, slots: IntArray, ts: npt.NDArray[np.int64]) -> None:
        """Each event's gap to its key's previous event, in seconds, into the spacing
        estimate (NaN for a key's first event); nothing for a poll of keys that have
        all the gaps the estimate counts."""
        if not self._seasons.counting_gaps(slots):
            return
        previous = self._windows.newest_of(slots).astype(np.float64)
        previous[previous == float(_NO_TS)] = np.nan
        order = np.argsort(slots, kind="stable")
        grouped = slots[order]
        before = np.empty(len(order))
        before[order] = np.where(
            np.r_[True, grouped[1:] != grouped[:-1]],
            previous[order],
            np.r_[np.nan, ts[order][:-1].astype(np.float64)],
        )
        self._seasons.observe_gaps(slots, (ts - before) / 1000.0)

    def _periods(self, slots: IntArray, count_at: npt.NDArray[np.int64]) -> IntArray:
        """Each event's key's seasons as of that event, re-detected where due."""
        seasons = self._seasons
        periods = seasons.periods[slots].copy()
        if not self._detect:
            return periods
        due = np.flatnonzero(detection_due(count_at, self._windows.window))
        if len(due) == 0:
            return periods
        spacing = seasons.spacing(slots)
        for i in due.tolist():
            whole = self._windows.read(np.array([i]), np.arange(-self._windows.window, 0))
            found = detect(whole[0], float(spacing[i]))
            new = np.zeros(periods.shape[1], dtype=np.intp)
            new[: len(found)] = found
            seasons.periods[slots[i]] = new
            later = (slots == slots[i]) & (np.arange(len(slots)) > i)
            periods[later] = new
        return periods

    def _fill(
        self,
        rows: Rows,
        positions: IntArray,
        new: list[Event],
        slots: IntArray,
        histories: FloatArray,
        ts: npt.NDArray[np.int64],
        count_at: npt.NDArray[np.int64],
        periods: IntArray,
    ) -> tuple[FloatArray, FloatArray]:
        """Features of the new rows, into ``rows`` (outputs filled later); returns the
        bounds of their outputs (:func:`reach_bounds`)."""
        n = len(new)
        if n == 0:
            rows.outputs = np.zeros((0, len(self._slots)))
            rows.halves = np.zeros((0, len(self._slots)))
            rows.mature = rows.settled = np.zeros(0, np.bool_)
            rows.exogenous = np.empty((0, self._raw_width))
            return np.empty(0), np.empty(0)
        spacing = self._seasons.spacing(slots)
        spacing = np.where(count_at > SPACING_GAPS, spacing, np.nan)
        if not self._calendar:
            spacing = np.full(n, np.nan)
        exogenous = np.array([event.x for event in new])  # as np.stack would, more cheaply
        width, kinds = self._windows.window, periods.shape[1]
        if not has_season(periods).any():  # no row's key has a season (yet): nothing to read
            seasons = np.full((n, kinds, 3), np.nan)
            steps = np.full((n, SEASON_CYCLES, 2), np.nan)
        else:  # the seasonal lags and the seasonal naive's steps, in one read of the store
            around_at, around_ok = season_offsets(periods.reshape(-1), self._horizon, width)
            steps_at, steps_ok = season_step_offsets(periods[:, 0], self._horizon, width)
            cycles = steps_at.shape[1]
            offsets = np.concatenate(
                [around_at.reshape(n, kinds * 3), steps_at.reshape(n, cycles * 2)], axis=1
            )
            values = self._windows.read(positions, offsets)
            around = values[:, : kinds * 3].reshape(n, kinds, 3)
            seasons = np.where(around_ok.reshape(n, kinds, 3), around, np.nan)
            steps = np.where(
                steps_ok[:, :, None], values[:, kinds * 3 :].reshape(n, cycles, 2), np.nan
            )
        span = spacing * count_at  # how long the key has been seen, for the calendar
        computed = self._pipeline.compute(
            histories, exogenous, ts, spacing, periods, seasons, steps, span
        )
        rows.keys = [event.key for event in new]
        rows.slots = slots
        rows.window = histories[:, -self._window :]
        rows.x = self._scaler.fit_transform(computed.raw)
        rows.offset = histories[:, -1].copy() if self._change else np.zeros(n)
        rows.scale = computed.scale
        rows.seasonal = computed.seasonal
        rows.outputs = np.zeros((n, len(self._slots)))
        rows.halves = np.full((n, len(self._slots)), np.nan)
        values = np.isfinite(histories).sum(axis=1)
        rows.mature = values >= MATURE_VALUES
        rows.settled = values >= SCREEN_VALUES
        rows.measured = np.isfinite(computed.unit) if self._change else np.ones(n, np.bool_)
        rows.exogenous = exogenous.reshape(n, -1) if self._raw_width else np.empty((n, 0))
        self._seasons.units[slots] = np.where(rows.settled, computed.unit, np.nan)
        return reach_bounds(histories, rows.offset, rows.scale)

    def _run(
        self,
        rows: Rows,
        new: list[Event],
        gather: Gather | None,
        same_poll: IntArray,
        truth: FloatArray,
        predicted_at: IntArray,
        resolved_at: IntArray,
        reach: tuple[FloatArray, FloatArray],
    ) -> list[Prediction]:
        """Every model through the poll in event order, then scores (module docstring).
        ``gather``: the rows the poll resolves (None: none); ``same_poll``: for each,
        its index among this poll's rows, -1 for a row of an earlier poll; ``reach``:
        the lowest and highest output of each row (:func:`reach_bounds`)."""
        names = self._pipeline.names
        learned = (
            gather.rows()
            if gather is not None
            else Rows(
                slots=np.empty(0, np.intp),
                window=np.empty((0, self._window)),
                x=np.empty((0, len(names))),
                offset=np.empty(0),
                scale=np.empty(0),
                seasonal=np.empty(0),
                outputs=np.empty((0, len(self._slots))),
                halves=np.empty((0, len(self._slots))),
                mature=np.empty(0, np.bool_),
                settled=np.empty(0, np.bool_),
                measured=np.empty(0, np.bool_),
                exogenous=np.empty((0, self._raw_width)),
            )
        )
        target = (truth - learned.offset) / learned.scale
        if self._change:
            target = np.clip(target, -OUTPUT_LIMIT, OUTPUT_LIMIT)
        keep = np.flatnonzero(learnable(learned.mature, learned.measured, target))
        # An event first resolves an earlier prediction (h >= 1: its value is that
        # prediction's truth, and in its own history), then is predicted; with h = 0
        # it is predicted first, then resolves that very prediction.
        if self._horizon == 0:
            before = np.searchsorted(predicted_at, resolved_at, side="right").astype(np.intp)
        else:
            before = np.searchsorted(predicted_at, resolved_at, side="left").astype(np.intp)
        plan = Plan(rows.batch(names), learned.batch(names).take(keep), target[keep], before[keep])
        learn_slots, learn_target, learn_before = learned.slots[keep], target[keep], before[keep]
        counts = self._counts
        low, high = reach
        for column in self._base:
            slot = self._slots[column]
            model = slot.model
            if model is None:
                continue
            updates, nonfinite = model.updates, model.nonfinite_events
            out = np.asarray(run_plan(model, plan), dtype=np.float64)
            out = finite_or_zero(out)
            if self._change:  # in key units: a change of 100 typical changes is no forecast
                out = np.clip(out, -OUTPUT_LIMIT, OUTPUT_LIMIT)
            rows.outputs[:, column] = np.fmin(np.fmax(out, low), high)  # NaN: no bound
            counts.updates[slot.name] += model.updates - updates
            counts.nonfinite[slot.name] += model.nonfinite_events - nonfinite
        if gather is not None:
            learned.outputs = gather.floats(lambda r: r.outputs)
        every = _abs_errors(truth[:, None], learned.all_levels())
        errors = {c: every[:, c] for c in range(len(self._slots))}
        # Drift of the members acts on the ensemble only under drift.action: shrink;
        # otherwise every model's detectors run together after the ensembles.
        drifts = self._drift(self._base, errors) if self._shrink < 1.0 else {}
        leaders: dict[int, IntArray] = {}
        unchecked = [c for c in self._base if c not in drifts]  # drift not yet fed
        for column in self._combined:
            slot = self._slots[column]
            hedge = slot.hedge
            if hedge is None:
                continue
            unchecked.append(column)
            members = slot.members
            # a drift found at learn row j acts after the last learned row up to j
            # Only a member whose errors fell is judged afresh: one whose errors rose
            # loses weight through them anyway, and reviving it would hand a bad member
            # weight it has not earned.
            found = [
                (int(np.searchsorted(keep, j, side="right")) - 1, m)
                for m, c in enumerate(members)
                for j in drifts.get(c, ())
                if self._slots[c].scorer.improving_after(errors[c], j)
            ]
            # Members are judged on their errors in the series' own scale, as their MAE
            # is: in key units, a key whose unit swings (calm stretches, then spikes)
            # would have its calm errors magnified and its spikes' shrunk.
            unit = learned.scale[keep]
            combined, lead = hedge.run(
                rows.slots,
                rows.outputs[:, members],
                learn_slots,
                learned.outputs[keep][:, members] * unit[:, None],
                learn_target * unit,
                learn_before,
                sorted(f for f in found if f[0] >= 0) if self._shrink < 1.0 else (),
                self._shrink,
            )
            rows.outputs[:, column] = combined
            leaders[column] = lead
            counts.updates[slot.name] += len(keep)
            if gather is not None:
                learned.outputs[:, column] = gather.floats(column_of(lambda r: r.outputs, column))
            errors[column] = _abs_errors(truth, learned.levels(column))
        self._drift(unchecked, errors)
        # A row predicted earlier in this very poll was published with the interval
        # computed below, in the same pass: point at it (same_poll), so that ACI and
        # coverage see it as they would had the poll ended between its prediction and
        # its truth. Only settled rows calibrate: an error in a unit sized by one or two
        # changes says little about the next one's.
        settled = np.flatnonzero(learned.settled[keep])
        calibrating = keep[settled]
        for column, slot in enumerate(self._slots):
            counts.predictions[slot.name] += len(rows)
            if not slot.published or slot.intervals is None:
                continue
            errors = np.abs(learn_target[settled] - learned.outputs[calibrating, column])
            halves = gather.floats(column_of(lambda r: r.halves, column)) if gather else np.empty(0)
            rows.halves[:, column] = slot.intervals.run(
                rows.slots,
                learn_slots[settled],
                errors,
                halves[calibrating],
                learn_before[settled],
                same_poll[calibrating],
            )
            if gather is not None:
                halves = gather.floats(column_of(lambda r: r.halves, column))
                self._cover(slot, truth, learned, column, halves)
        self._score(truth, learned)
        return self._publishable(rows, new, leaders)

    def _drift(
        self, columns: Sequence[int], errors: Mapping[int, FloatArray]
    ) -> dict[int, list[int]]:
        """Feed each column's absolute errors to its detectors (each in units of the
        model's MAE before it), all columns' at once
        (:meth:`~service.pipeline.drift.DriftMonitor.update_together`); per column,
        the learn rows after which any detector confirmed a drift."""
        out: dict[int, list[int]] = {c: [] for c in columns}
        fed = [c for c in columns if len(errors[c])]
        if not fed:
            return out
        slots = [self._slots[c] for c in fed]
        stacked = np.stack([errors[c] for c in fed])
        scales = Scorer.mae_before_together([slot.scorer for slot in slots], stacked)
        found = DriftMonitor.update_together([slot.drift for slot in slots], stacked, scales)
        for column, slot, detections in zip(fed, slots, found, strict=True):
            rows: set[int] = set()
            for detector, hits in detections.items():
                if hits:
                    self._counts.drifts[(slot.name, detector)] += len(hits)
                    rows.update(hits)
            out[column] = sorted(rows)
        return out

    def _cover(
        self, slot: _ModelSlot, truth: FloatArray, learned: Rows, column: int, halves: FloatArray
    ) -> None:
        has = np.isfinite(halves)
        if not has.any() or slot.coverage is None:
            return
        y_hat = learned.levels(column)
        half = np.minimum(halves * learned.scale, LARGEST)
        covered = np.abs(truth - y_hat) <= half
        slot.coverage.update(covered[has], 2.0 * half[has])

    def _score(self, truth: FloatArray, learned: Rows) -> None:
        if len(truth) == 0:
            return
        counts = self._counts
        levels = learned.all_levels()
        batches = Scorer.update_together([slot.scorer for slot in self._slots], truth, levels)
        for column, (slot, batch) in enumerate(zip(self._slots, batches, strict=True)):
            if self._on_scored is not None:
                self._on_scored(slot.name, truth, levels[:, column])
            counts.scored[slot.name] += batch.n
            counts.abs_error[slot.name] += batch.sum_abs
            counts.sq_error[slot.name] += batch.sum_sq

    def _publishable(
        self, rows: Rows, new: list[Event], leaders: dict[int, IntArray]
    ) -> list[Prediction]:
        predictions: list[Prediction] = []
        if len(rows) == 0:
            return predictions
        for column in self._primary_first:
            slot = self._slots[column]
            if not slot.published:
                continue
            y_hat = rows.levels(column)
            half = rows.halves[:, column] * rows.scale
            bounded = np.isfinite(half)
            lows = np.where(bounded, y_hat - half, np.nan).tolist()
            highs = np.where(bounded, y_hat + half, np.nan).tolist()
            lows = [None if v != v else v for v in lows]
            highs = [None if v != v else v for v in highs]
            lead: list[str | None] = [None] * len(rows)
            if column in leaders:
                member_names = [self._slots[m].name for m in slot.members]
                lead = [member_names[i] for i in leaders[column].tolist()]
                counts = np.bincount(leaders[column], minlength=len(member_names))
                for name, count in zip(member_names, counts.tolist(), strict=True):
                    if count:
                        self._counts.leads[(slot.name, name)] += count
            version = self._version(slot)
            horizon, name = self._horizon, slot.name
            predictions.extend(
                Prediction(
                    event.key,
                    event.ts_ms,
                    horizon,
                    value,
                    low,
                    high,
                    name,
                    version,
                    event.record.source,
                    event.record.consumed_at,
                    leader,
                )
                for event, value, low, high, leader in zip(
                    new, y_hat.tolist(), lows, highs, lead, strict=True
                )
            )
        return predictions

    def _version(self, slot: _ModelSlot) -> int:
        """``model_version``: events the model learned from (an ensemble: events its
        weights learned from)."""
        if slot.model is not None:
            return slot.model.updates
        return slot.hedge.learned if slot.hedge is not None else 0

    # -- state upkeep -------------------------------------------------------------------

    def _per_key_state(self) -> list[SeasonBook | Hedge | Intervals]:
        """Everything that keeps state per window-store slot (so per key)."""
        owners: list[SeasonBook | Hedge | Intervals] = [self._seasons]
        for slot in self._slots:
            owners += [part for part in (slot.hedge, slot.intervals) if part is not None]
        return owners

    def _grow(self) -> None:
        """Per-slot state sized to the window store's slots."""
        for owner in self._per_key_state():
            owner.ensure(self._windows.capacity)

    def least_recent(self) -> tuple[float, str] | None:
        """When this task's least recently seen key was seen, and the key."""
        return self._windows.least_recent()

    def by_recency(self) -> Iterator[tuple[float, str]]:
        """(when seen, key) of this task's keys, least recently seen first."""
        return self._windows.by_recency()

    def forget(self, *keys: str) -> TaskCounts:
        """Evict ``keys`` now, all at once (the process-wide key cap, see the
        processor): per-key state is reset with one call per owner, not per key.
        Returns the counts of it (the evictions)."""
        self._forget([(key, self._windows.drop(key)) for key in keys])
        return self.take_counts()

    def take_counts(self) -> TaskCounts:
        """What was counted since the last call (a poll that raised leaves its counts
        here), and a fresh count."""
        counts, self._counts = self._counts, TaskCounts()
        return counts

    def _evict(self) -> None:
        self._forget(self._windows.evict_slots())

    def _forget(self, evicted: list[tuple[str, int]]) -> None:
        if not evicted:
            return
        slots = [slot for _, slot in evicted]
        self._pending.forget(key for key, _ in evicted)
        for key, _ in evicted:
            self._strikes.pop(key, None)
        for owner in self._per_key_state():
            owner.reset(slots)
        self._counts.evicted += len(evicted)

    # -- checkpoints (service.runtime.snapshot, service.runtime.state) ----------------

    def state(self) -> dict[str, Any]:
        """Everything this task learned, by reference (pickle it before the next poll).

        What comes from the configuration (settings, feature pipeline, metrics,
        callbacks) is left out: a restore puts the learned parts into a task built
        from the same settings (:func:`service.runtime.snapshot.fingerprint`)."""
        return {
            "windows": self._windows,
            "seasons": self._seasons,
            "scaler": self._scaler,
            "pending": self._pending,
            "strikes": self._strikes,
            "batches": self._batches,
            "seeded_only": self.seeded_only,
            "models": [
                {
                    "name": s.name,
                    "model": s.model,
                    "scorer": s.scorer,
                    "drift": s.drift,
                    "hedge": s.hedge,
                    "intervals": s.intervals,
                    "coverage": s.coverage,
                }
                for s in self._slots
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace this task's learned state with ``state`` (from :meth:`state`).

        Raises:
            ValueError: the state's models are not this task's (names differ).
        """
        models = state["models"]
        names = [m["name"] for m in models]
        if names != [s.name for s in self._slots]:
            raise ValueError(
                f"checkpoint models {names} are not the configured {[s.name for s in self._slots]}"
            )
        self._windows = state["windows"]
        self._seasons = state["seasons"]
        self._scaler = state["scaler"]
        pending = state["pending"]  # older checkpoints: per-key queues of (rows, index)
        if not isinstance(pending, PendingBook):
            pending = PendingBook.of_queues(pending)
        pending.widen(self._raw_width)
        self._pending = pending
        self._strikes = state["strikes"]
        self._batches = int(state["batches"])
        self.seeded_only = int(state["seeded_only"])
        for slot, saved in zip(self._slots, models, strict=True):
            # a plugin model that only matches Model's protocol may lack adopt
            adopt = getattr(slot.model, "adopt", None)
            slot.model = saved["model"] if adopt is None else adopt(saved["model"])
            slot.scorer = saved["scorer"]
            slot.drift = saved["drift"]
            configured, slot.hedge = slot.hedge, saved["hedge"]
            if configured is not None and slot.hedge is not None:
                slot.hedge.configure(configured.params)
            slot.intervals = saved["intervals"]
            slot.coverage = saved["coverage"]

    @property
    def pending_predictions(self) -> int:
        """Predictions waiting for their true value."""
        return len(self._pending)


def _abs_errors(truth: FloatArray, levels: FloatArray) -> FloatArray:
    """Absolute errors of ``levels`` (one column, or rows × models against
    ``truth[:, None]``) on the resolved rows, bounded as the scorers bound them."""
    return bounded(np.abs(truth - levels))


def _poll_changes(
    keys: Sequence[str], ys: FloatArray, stored: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per event of a poll: the value before it of its key (the poll's previous event
    of the key, else ``stored``, the store's newest), and the count and sum of squares
    of the key's changes earlier in this poll (a change counted where the
    value it starts from has a value before it): what keys the store cannot judge yet
    are judged by. One pass over the events grouped by key, on Python floats (NumPy
    scalar indexing costs several times the arithmetic); sums run per key, in order."""
    n = len(keys)
    order = sorted(range(n), key=keys.__getitem__)  # stable: by key, in order
    y: list[float] = ys.tolist()
    previous: list[float] = stored.tolist()
    count, squares = [0.0] * n, [0.0] * n
    isfinite = math.isfinite
    for before, after in itertools.pairwise(order):
        if keys[before] == keys[after]:
            previous[after] = y[before]
            start = previous[before]
            if isfinite(start):
                change = y[before] - start
                count[after] = count[before] + 1.0
                squares[after] = squares[before] + change * change
            else:
                count[after], squares[after] = count[before], squares[before]
    return np.array(previous), np.array(count), np.array(squares)
