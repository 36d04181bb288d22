"""Each key's seasons and spacing: what its seasonal lags and calendar features mean.

Spacing. A key's typical time between events is the geometric mean of its first
:data:`SPACING_GAPS` gaps (robust to a weekend or an outage, and frozen after that, so
the same key always gets the same calendar features whatever the batching). Calendar
features (hour of day, day of week, day of year) are only meaningful for keys that
tick well within the cycle and whose events have spanned a part of it
(:data:`CALENDAR_SPAN`); :func:`calendar_mask` says which. Without the span, a
position in a cycle the key has barely moved through is a disguised event counter:
the hour of day of a table stamped a second per row, of a two-minute recording, or of
a backlog sent without event times (its broker timestamps a millisecond apart).
Learned members took such a counter for information: the row order of a table, a
trend in a replay.

Seasons. ``forecast.seasonal_periods`` fixes up to two periods (in events) for every
key. Otherwise each key's own are detected from its history (:func:`detect`) when it
has seen :data:`FIRST_DETECTION` values, again at twice and four times that, and then
every half history: the candidates are the calendar periods its spacing implies (a
day, a week and a year in events, where they fit in its history) and the strongest
autocorrelation peak, and every divisor of that peak: the autocorrelation of a long
history often peaks at a multiple of the season (36 or 72 months for a yearly
cycle), and where the key's times say nothing of its season nothing else would
propose the season itself: a yearly series, a sensor ticking many times a second, a
backlog sent without event times (broker timestamps a millisecond apart) or a
monthly series a tool stamped a day apart. A candidate ``p`` is kept when the
history holds two cycles of it, the autocorrelation of the detrended history has a
local maximum of at least :data:`MIN_CORRELATION` there, and the series repeats: its
differences over ``p`` events are smaller than over the lags inside one cycle (mean
squares at most :data:`MAX_DIP` times, :func:`_dip`), which a random walk's or a
mean-reverting process's never are, since theirs only grow with the lag. A random
walk's autocorrelation decays without peaks, so prices get no season; an hourly load
gets 24 and 168. Of the kept periods, the two whose changes repeat best are the key's
seasons, the best first: the least variance of a change minus the change one period
before, which is the error of the seasonal naive (it forecasts a change by the
changes a season back, with the first season). A quarter inside a year repeats well
enough to be kept, but forecasts a monthly index worse than the year; and a divisor
that divides a season already chosen is not the second (its job, finding that
season, is done), while a calendar period stays eligible (a day inside a week).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

SPACING_GAPS = 32
FIRST_DETECTION = 48
MAX_DIP = 0.65
MAX_TREND_DIP = 0.25
TREND_CYCLES = 4
MIN_CORRELATION = 0.2
MAX_SEASONS = 2
CALENDAR_SPAN = 0.25
"""Share of a cycle a key's events must span (spacing times values seen) before that
cycle's calendar feature is on: a quarter, set before measuring, not tuned."""
_DAY_S = 86_400.0
_CYCLES_S = (_DAY_S, 7 * _DAY_S, 365.2425 * _DAY_S)


def detection_due(count_after: IntArray, history: int) -> npt.NDArray[np.bool_]:
    """Whether a key whose value count just became ``count_after`` re-detects now.

    >>> detection_due(np.array([47, 48, 96, 192, 200, 400, 600]), history=400).tolist()
    [False, True, True, True, False, True, True]
    """
    first = min(FIRST_DETECTION, history)
    early = (count_after == first) | (count_after == 2 * first) | (count_after == 4 * first)
    half = max(history // 2, 1)
    later = (count_after >= history) & ((count_after - history) % half == 0)
    return np.asarray((early & (count_after <= history)) | later)


def detect(values: FloatArray, spacing_s: float) -> list[int]:
    """The key's seasons (events), from its history (oldest first): the one whose
    changes repeat best first (module docstring).

    >>> t = np.arange(200)
    >>> detect(np.sin(2 * np.pi * t / 24) + 0.01 * np.cos(t), spacing_s=3600.0)
    [24]
    >>> walk = np.cumsum(np.random.default_rng(0).normal(size=200))
    >>> detect(walk, spacing_s=86400.0)
    []
    """
    v = values[np.isfinite(values)]
    n = len(v)
    if n < 16:
        return []
    t = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(t, v, 1)
    r = v - (slope * t + intercept)
    var = float(np.dot(r, r))
    if var <= 1e-12 * max(1.0, float(np.dot(v, v))):
        return []
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(r, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n] / var
    longest = n - 8  # at least 8 pairs behind a correlation
    candidates = set()
    if math.isfinite(spacing_s) and spacing_s > 0:
        for cycle in _CYCLES_S:
            p = round(cycle / spacing_s)
            if 2 <= p <= longest:
                candidates.add(p)
    divisors: set[int] = set()
    half = n // 2
    if half > 3:
        scores = [(_prominence(acf, p), p) for p in range(2, half)]
        best = max(scores)
        if best[0] > 0:
            candidates.add(best[1])
            divisors = _divisors(best[1])
    proposed = {_snap(acf, p) for p in candidates}
    only_divisors = {_snap(acf, d) for d in divisors} - proposed
    snapped = sorted(proposed | only_divisors)
    repeating = [
        p
        for p in snapped
        if n >= 2 * p + 8
        and acf[p] >= MIN_CORRELATION
        and _prominence(acf, p) > 0
        and _dip(v, p) <= MAX_DIP
    ]
    # the period whose seasonal naive would err least first (module docstring)
    changes = np.diff(v)
    repeating.sort(key=lambda p: float(np.var(changes[p:] - changes[:-p])))
    seasons: list[int] = []
    for p in repeating:
        if any(abs(p - q) <= 2 or (p in only_divisors and q % p == 0) for q in seasons):
            continue
        seasons.append(p)
        if len(seasons) == MAX_SEASONS:
            break
    return seasons


def _divisors(p: int) -> set[int]:
    """Every divisor of ``p`` from 2 up: where the season sits when the
    autocorrelation peaks at a multiple of it (module docstring).

    >>> sorted(_divisors(36))
    [2, 3, 4, 6, 9, 12, 18]
    """
    return {d for d in range(2, p) if p % d == 0}


def _dip(v: FloatArray, p: int) -> float:
    """``mean((y_t - y_{t-p})^2)`` over the same at the lags inside one cycle: well
    below 1 where the series repeats every ``p`` and not at the lags in between; a
    random walk's or an AR process's squared differences only grow with the lag.

    The lags in between are ``p/2`` and ``p/8, 2p/8, ..., 7p/8``, and the reference is
    the larger of the mean square at ``p/2`` alone and the mean over all of them: a
    season with a shorter one inside it repeats at ``p/2`` too (a monthly series whose
    quarter-end months are high is as alike six months apart as twelve), which the
    lag ``p/2`` alone took for no season.

    A trend adds the same to every difference of one lag, which in mean squares hides
    the season of a growing series (airline passengers' yearly cycle stayed hidden
    until twice as many values). So where the mean squares see no season, the same
    ratio of *variances* (the trend's share taken out) counts if it is below
    :data:`MAX_TREND_DIP`, over at least :data:`TREND_CYCLES` cycles: stricter than
    :data:`MAX_DIP`, because a random walk with a drift, its drift taken out, dips
    below ``MAX_DIP`` by chance at lags of a third of its history or more."""
    half = max(p // 2, 1)
    lags = _between(p)
    squares, spreads = _lag_moments(v, lags)
    at_half = lags.index(half)
    full_square, full_spread = _lag_moments(v, [p])
    denominator = max(squares[at_half], float(np.mean(squares)))
    if denominator <= 0:
        return 1.0
    dip = float(full_square[0]) / denominator
    if dip <= MAX_DIP or len(v) < TREND_CYCLES * p:
        return dip
    spread = max(spreads[at_half], float(np.mean(spreads)))
    trendless = float(full_spread[0]) / spread if spread > 0 else 1.0
    return trendless if trendless <= MAX_TREND_DIP else dip


def _between(p: int) -> list[int]:
    """The lags inside a cycle of ``p`` that :func:`_dip` compares ``p`` with.

    >>> _between(12), _between(24), _between(3)
    ([2, 3, 4, 6, 8, 9, 10], [3, 6, 9, 12, 15, 18, 21], [1, 2])
    """
    return sorted({max(p // 2, 1)} | {round(p * k / 8) for k in range(1, 8)} - {0, p})


def _lag_moments(v: FloatArray, lags: list[int]) -> tuple[list[float], list[float]]:
    """Per lag, the mean square and the variance of ``y_t - y_{t-lag}``."""
    squares, spreads = [], []
    for lag in lags:
        d = v[lag:] - v[:-lag]
        squares.append(float(np.mean(d * d)))
        spreads.append(float(np.var(d)))
    return squares, spreads


def _snap(acf: FloatArray, p: int) -> int:
    """``p`` moved to the highest correlation within one event of it (a calendar
    period in events is rounded; the series' own peak may sit next to it)."""
    low = max(p - 1, 2)
    return low + int(np.argmax(acf[low : min(p + 2, len(acf))]))


def _prominence(acf: FloatArray, p: int) -> float:
    """How far the correlation at ``p`` stands above the lowest one between ``p/2``
    and ``p``; 0 if ``p`` is not a local maximum."""
    peak = float(acf[p])
    if peak < float(acf[p - 1]) or (p + 1 < len(acf) and float(acf[p + 1]) > peak):
        return 0.0
    trough = float(np.min(acf[max(p // 2, 1) : p + 1]))
    return peak - trough


def calendar_mask(spacing_s: FloatArray, span_s: FloatArray | None = None) -> npt.NDArray[np.bool_]:
    """``(n, 3)``: whether hour-of-day, day-of-week and day-of-year features mean
    something for keys of this spacing (at least four events per cycle; NaN spacing,
    a young key, gets none) whose events span ``span_s`` seconds (at least
    :data:`CALENDAR_SPAN` of the cycle; None: no such condition).

    >>> calendar_mask(np.array([3600.0, 86400.0, 7 * 86400.0, np.nan])).tolist()
    [[True, True, True], [False, True, True], [False, False, True], [False, False, False]]
    >>> spacing, span = np.array([3600.0, 3600.0, 0.001]), np.array([7200.0, 3e6, 10.0])
    >>> calendar_mask(spacing, span).tolist()
    [[False, False, False], [True, True, False], [False, False, False]]
    """
    cycles = np.array(_CYCLES_S)
    with np.errstate(invalid="ignore"):
        mask: npt.NDArray[np.bool_] = spacing_s[:, None] * 4 <= cycles[None, :]
        if span_s is not None:
            mask &= span_s[:, None] >= CALENDAR_SPAN * cycles[None, :]
    return mask


class SeasonBook:
    """Per-slot spacing, seasons and unit of one task's keys (slots as in
    :class:`~service.pipeline.windows.WindowStore`). The unit, the typical size of the
    key's changes as of its last predicted row (NaN until the key has a few values), is
    what outliers are judged by."""

    def __init__(self, fixed: tuple[int, ...] = ()) -> None:
        self._fixed = fixed
        self.gap_log_sum = np.zeros(0)
        self.gaps = np.zeros(0, dtype=np.int64)
        self.periods = np.zeros((0, MAX_SEASONS), dtype=np.intp)  # 0 = none
        self.units = np.zeros(0)

    def ensure(self, capacity: int) -> None:
        """Grow the per-slot arrays to ``capacity`` slots."""
        old = len(self.gaps)
        if capacity <= old:
            return
        extra = capacity - old
        self.gap_log_sum = np.concatenate([self.gap_log_sum, np.zeros(extra)])
        self.gaps = np.concatenate([self.gaps, np.zeros(extra, dtype=np.int64)])
        self.periods = np.concatenate([self.periods, self._fresh(extra)])
        self.units = np.concatenate([self.units, np.full(extra, np.nan)])

    def reset(self, slots: list[int]) -> None:
        """Forget evicted keys: their slots start afresh."""
        if slots:
            index = np.asarray(slots, dtype=np.intp)
            self.gap_log_sum[index] = 0.0
            self.gaps[index] = 0
            self.periods[index] = self._fresh(len(index))
            self.units[index] = np.nan

    def _fresh(self, n: int) -> npt.NDArray[np.intp]:
        periods = np.zeros((n, MAX_SEASONS), dtype=np.intp)
        for i, p in enumerate(self._fixed[:MAX_SEASONS]):
            periods[:, i] = p
        return periods

    def spacing(self, slots: IntArray) -> FloatArray:
        """Seconds between events per slot; NaN until :data:`SPACING_GAPS` gaps seen."""
        gaps = self.gaps[slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            spacing: FloatArray = np.where(
                gaps >= SPACING_GAPS, np.exp(self.gap_log_sum[slots] / np.maximum(gaps, 1)), np.nan
            )
        return spacing

    def counting_gaps(self, slots: IntArray) -> bool:
        """Whether any of ``slots`` has fewer than :data:`SPACING_GAPS` gaps, the
        only ones :meth:`observe_gaps` adds: a caller may skip working out gaps for
        keys that have them all."""
        return bool((self.gaps[slots] < SPACING_GAPS).any())

    def observe_gaps(self, slots: IntArray, gap_s: FloatArray) -> None:
        """Add events' gaps to their keys' first :data:`SPACING_GAPS` (in event order;
        NaN for a key's first event)."""
        finite = np.isfinite(gap_s)
        if not finite.any():
            return
        slots, gap_s = slots[finite], gap_s[finite]
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        first = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = np.arange(len(order)) - start  # position among its key's gaps here
        take = self.gaps[sorted_slots] + rank < SPACING_GAPS
        logs = np.log(np.maximum(gap_s[order], 1e-3))
        np.add.at(self.gap_log_sum, sorted_slots[take], logs[take])
        np.add.at(self.gaps, sorted_slots[take], 1)
