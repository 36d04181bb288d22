"""``knn``: the mean of the learning targets of the nearest recent rows.

Why a nearest-neighbour member: on a short seasonal series (a few years of monthly
values) the models that fit weights need many cycles before their fit is good, while a
row whose seasonal lags, calendar position and recent changes look like the current one
already says what comes next: the change that followed it. k nearest neighbours over a
sliding window of the task's latest learned rows (River's ``KNNRegressor`` with its
``LazySearch``; Cover & Hart, "Nearest neighbor pattern classification", 1967) needs no
fit and forgets by itself, at the cost of a distance per stored row per prediction.

The rows are the shared, standardised feature vectors (:mod:`service.pipeline.features`)
and their learning targets (a change in key units, by default). Distances are
Euclidean; ties go to the newer row. A prediction averages the targets of the
``neighbors`` nearest rows among the ``window`` rows learned last (fewer while the
window fills; 0, no change, before any).

Which rows a key searches (:class:`KeyedKNN`, the default): a window of the task's
rows, all keys' together, serves a panel of alike series (growth curves, firms,
stocks), each of which has too few rows of its own; but beside a dozen unlike keys a
key keeps a twelfth of it, a few days of an hourly cycle, and its neighbours are found
among too few repetitions of its own (``bench.together``). So rows are also kept per
hash bucket of the key (``key_buckets``, as :class:`~models.rls.KeyedRLS` keeps its
fits): a key searches its bucket's latest ``window`` rows once the bucket has learned
``shared_until`` rows, and the task's shared window before. A task of one key is not
changed by it (its bucket's rows are the shared ones). Memory stays bounded whatever
the number of keys: at most ``key_buckets + 1`` windows a task.

It works through a poll in event order (:class:`~models.base.PlanRunner`): a row is
compared with exactly the rows learned before it arrived, whatever the poll size, and
each distance's sums are computed per pair by ``einsum`` (not by a BLAS matrix product,
whose blocking, and so rounding, depends on the batch's shape), so the same stream
gives the same numbers in any batching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from models.base import FeatureBatch, FloatArray, IntArray, Model, ModelContext, Plan
from models.keys import key_bucket
from models.registry import ModelParams, ModelSpec, register

__all__ = ["KNN", "KNNParams", "KeyedKNN"]

_BLOCK = 64
"""Rows predicted per block: a block is compared with the stored rows any of its rows
may see (``window`` plus the rows learned inside the block), so the work stays
proportional to the rows, not to the poll squared."""


class KNNParams(ModelParams):
    """``knn``: k nearest neighbours over the task's latest rows (module docstring).

    Attributes:
        neighbors: rows averaged per prediction.
        window: latest learned rows searched, of the key's bucket (of the task's,
            all keys' together, while the bucket is young or with one bucket): weeks
            of an hourly series, decades of a monthly one.
        aggregate: ``mean`` of the neighbours' targets, or their ``median`` (less
            pulled by one neighbour that was an outlier).
        key_buckets: rows are also kept per hash bucket of the key, a window each
            (module docstring); 1: one window for every key of the task.
        shared_until: rows a bucket learns before its keys search its window
            rather than the task's.
    """

    neighbors: int = Field(default=5, ge=1, le=1000)
    window: int = Field(default=1000, ge=1, le=100_000)
    aggregate: Literal["mean", "median"] = "mean"
    key_buckets: int = Field(default=32, ge=1, le=4096)
    shared_until: int = Field(default=20, ge=0, le=100_000)
    # a checkpoint's rows go on under other values of these (KNN.adopt, KeyedKNN.adopt)
    state_neutral: ClassVar[frozenset[str]] = frozenset({"window", "key_buckets", "shared_until"})


class KNN(Model):
    """The window of rows and targets, oldest first.

    >>> import numpy as np
    >>> from models.base import FeatureBatch
    >>> def batch(x):
    ...     x = np.asarray(x, dtype=float).reshape(-1, 1)
    ...     return FeatureBatch(x=x, window=np.zeros((len(x), 1)), offset=np.zeros(len(x)),
    ...                         keys=["k"] * len(x), feature_names=["a"])
    >>> model = KNN(KNNParams(neighbors=2, window=3), n_features=1)
    >>> model.learn(batch([0.0, 1.0, 5.0, 6.0]), np.array([10.0, 20.0, 30.0, 40.0]))
    >>> model.predict(batch([0.4, 5.4])).tolist()  # rows 1.0, 5.0 and 6.0 are kept
    [25.0, 35.0]
    """

    def __init__(self, params: KNNParams, n_features: int) -> None:
        self.params = params
        self.n_features = n_features
        # The window is rows start:end of buffers with room to append after it, so a
        # poll's learned rows are written once, not copied with the whole window
        # (a live poll of a row or two would otherwise pay for the window each time);
        # when the room runs out the window moves to the front. Each row's squared
        # norm is kept beside it, computed once rather than in every search.
        self._bx = np.zeros((0, n_features))
        self._by = np.zeros(0)
        self._bn = np.zeros(0)
        self._start = self._end = 0
        self._seen = 0

    @property
    def _x(self) -> FloatArray:
        """The window's rows, oldest first (a view)."""
        return self._bx[self._start : self._end]

    @property
    def _y(self) -> FloatArray:
        """The window's targets, oldest first (a view)."""
        return self._by[self._start : self._end]

    @property
    def updates(self) -> int:
        return self._seen

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Each row's neighbours among the stored rows."""
        hi = np.full(len(batch), self._end, dtype=np.intp)
        lo = np.full(len(batch), self._start, dtype=np.intp)
        return self._predict(batch.x, lo, hi)

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Append the rows; keep the latest ``window``."""
        self._append(batch.x, target)

    def run(self, plan: Plan) -> FloatArray:
        """The plan in event order, in blocks: predict row ``i`` sees the stored rows
        and the plan's learn rows that arrived before it (``before[j] <= i``)."""
        return self._run(plan.predict.x, plan.learn.x, plan.target, plan.before)

    def _run(
        self, queries: FloatArray, learn: FloatArray, target: FloatArray, before: IntArray
    ) -> FloatArray:
        """:meth:`run` on a plan's arrays: the rows to predict, the learned rows, their
        targets and arrivals."""
        stored = self._end - self._start
        first = self._append(learn, target)
        seen = np.searchsorted(before, np.arange(len(queries)), side="right")
        hi = (first + seen).astype(np.intp)
        lo = np.maximum(hi - self.params.window, first - stored)
        return self._predict(queries, lo, hi)

    def _append(self, x: FloatArray, y: FloatArray) -> int:
        """Rows ``x`` and targets ``y`` after the window, which then keeps its latest
        ``window``; returns the buffer index of the first of them. The rows before
        that index, back to a window's length, stay in the buffer until the next
        call (a plan's first predictions search them)."""
        count, window = len(y), self.params.window
        if count == 0:
            return self._end
        kept = min(self._end - self._start, window)
        if self._end + count > len(self._by):  # no room: the window to the front
            # room for as many rows again as it holds, up to a quarter window: a
            # move's copy is paid for by the rows appended before the next one, and a
            # full window takes a quarter more memory than its rows
            need = kept + count
            size = need + min(max(need, 64), max(window // 4, 1))
            bx, by, bn = np.empty((size, self.n_features)), np.empty(size), np.empty(size)
            bx[:kept] = self._bx[self._end - kept : self._end]
            by[:kept] = self._by[self._end - kept : self._end]
            bn[:kept] = self._bn[self._end - kept : self._end]
            self._bx, self._by, self._bn, self._start, self._end = bx, by, bn, 0, kept
        first = self._end
        self._end += count
        self._bx[first : self._end] = x
        self._by[first : self._end] = y
        self._bn[first : self._end] = _norms(self._bx[first : self._end])
        self._start = max(self._start, self._end - window)
        self._seen += count
        return first

    def __getstate__(self) -> dict[str, Any]:
        """The window's rows alone, as ``_x`` and ``_y`` (as pickled before the
        buffers: checkpoints restore across either version)."""
        state = {k: v for k, v in self.__dict__.items() if k not in _BUFFER}
        return {**state, "_x": self._x.copy(), "_y": self._y.copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        rest = {k: v for k, v in state.items() if k not in ("_x", "_y")}
        self.__dict__.update(rest)
        self._keep(np.asarray(state["_x"], dtype=np.float64), np.asarray(state["_y"]))

    def _keep(self, x: FloatArray, y: FloatArray) -> None:
        """The window set to the latest ``window`` of ``x`` and ``y``."""
        x, y = x[-self.params.window :], y[-self.params.window :]
        self._bx, self._by = x.copy(), y.copy()
        self._bn = _norms(self._bx)
        self._start, self._end = 0, len(y)

    def _predict(
        self,
        queries: FloatArray,
        lo: npt.NDArray[np.intp],
        hi: npt.NDArray[np.intp],
    ) -> FloatArray:
        """Row ``i`` of ``queries`` against the buffer's rows ``lo[i]:hi[i]`` (both
        non-decreasing in ``i``)."""
        n = len(queries)
        out = np.zeros(n)
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            if hi[stop - 1] > lo[start]:
                out[start:stop] = self._block(queries[start:stop], lo[start:stop], hi[start:stop])
        return out

    def _block(
        self,
        queries: FloatArray,
        lo: npt.NDArray[np.intp],
        hi: npt.NDArray[np.intp],
    ) -> FloatArray:
        """One block of queries against the stored rows any of them sees, each query
        seeing its own ``lo:hi`` of them. Every number is computed per query and
        candidate, in an order that does not depend on the block (``einsum`` sums
        without BLAS), so a query gets the same neighbours in any batching."""
        rows, a, b = len(queries), int(lo[0]), int(hi[-1])
        # newest first: ties go to newer rows
        cand_x, cand_y = self._bx[a:b][::-1], self._by[a:b][::-1]
        dist = (
            _norms(queries)[:, None]
            + self._bn[a:b][::-1][None, :]
            - 2.0 * np.einsum("ik,jk->ij", queries, cand_x)
        )
        index = np.arange(b - 1, a - 1, -1)
        seen = (index >= lo[:, None]) & (index < hi[:, None])
        dist[~seen] = np.inf
        k = min(self.params.neighbors, b - a)
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]
        closer, tied = dist < kth, dist == kth
        wanted = k - closer.sum(axis=1)
        # the newest ``wanted`` of the rows tied at the k-th distance; only rows with
        # more ties than that need the running count (equal rows, or unseen ones
        # while fewer than k are seen)
        crowded = np.flatnonzero(tied.sum(axis=1) > wanted)
        if len(crowded):
            tied[crowded] &= np.cumsum(tied[crowded], axis=1) <= wanted[crowded, None]
        chosen = (closer | tied) & seen
        counts = chosen.sum(axis=1)
        row, col = np.nonzero(chosen)  # row-major: each row's neighbours, newest first
        values = cand_y[col]
        if self.params.aggregate == "median":
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            table = np.full((rows, k), np.nan)
            table[row, np.arange(len(row)) - first[row]] = values
            some = counts > 0
            result = np.zeros(rows)
            result[some] = np.nanmedian(table[some], axis=1)
            return result
        sums = np.zeros(rows)
        np.add.at(sums, row, values)  # in order, one value at a time
        out: FloatArray = sums / np.maximum(counts, 1)
        return out

    def clone(self) -> KNN:
        return KNN(self.params, self.n_features)

    def adopt(self, restored: Model) -> Model:
        """A checkpoint's rows go on under these params: a window of another size
        keeps its latest rows that fit; a keyed model's shared window is taken."""
        if isinstance(restored, KeyedKNN):
            restored = restored.shared
        if not isinstance(restored, KNN):
            return restored
        if restored.params == self.params:
            return restored
        model = self.clone()
        model._keep(restored._x, restored._y)
        model._seen = restored._seen
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"x": self._x.copy(), "y": self._y.copy(), "seen": self._seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"knn state has rows of {x.shape[-1]} features, this model {self.n_features}:"
                " the feature list changed since the state was saved"
            )
        self._keep(x, np.asarray(state["y"], dtype=np.float64))
        self._seen = int(state["seen"])


class KeyedKNN(Model):
    """A shared :class:`KNN` over every row of the task, and one per hash bucket of
    the key over its bucket's rows (module docstring).

    A row is predicted by its bucket's window once the bucket has learned
    ``shared_until`` rows before it, by the shared one before; every learned row goes
    to both. Whatever the poll size a row sees the same rows: the count that decides
    is of the rows learned before it.

    >>> import numpy as np
    >>> from models.base import FeatureBatch
    >>> def batch(keys):
    ...     n = len(keys)
    ...     return FeatureBatch(x=np.zeros((n, 1)), window=np.zeros((n, 1)),
    ...                         offset=np.zeros(n), keys=keys, feature_names=["a"])
    >>> model = KeyedKNN(KNNParams(neighbors=2, key_buckets=64, shared_until=2), 1)
    >>> model.learn(batch(["up", "down"] * 2), np.array([1.0, -1.0, 1.0, -1.0]))
    >>> model.predict(batch(["up", "down"])).tolist()  # each key by its own rows
    [1.0, -1.0]
    """

    def __init__(self, params: KNNParams, n_features: int) -> None:
        self.params = params
        self.n_features = n_features
        self.shared = KNN(params, n_features)
        self._fits: dict[int, KNN] = {}

    @property
    def updates(self) -> int:
        return self.shared.updates

    def _fit(self, bucket: int) -> KNN:
        fit = self._fits.get(bucket)
        if fit is None:
            fit = self._fits[bucket] = KNN(self.params, self.n_features)
        return fit

    def _buckets(self, batch: FeatureBatch) -> npt.NDArray[np.int64]:
        return key_bucket(batch.keys, self.params.key_buckets)

    def predict(self, batch: FeatureBatch) -> FloatArray:
        return self.run(Plan(batch, batch.take(_NONE), np.zeros(0), _NONE))

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        self.run(Plan(batch.take(_NONE), batch, target, np.zeros(len(target), dtype=np.intp)))

    def run(self, plan: Plan) -> FloatArray:
        """The plan in event order: each bucket's rows through its window (the
        predict rows whose bucket had learned enough before them), the rest and every
        learned row through the shared window."""
        asks, learns = self._buckets(plan.predict), self._buckets(plan.learn)
        queries, rows, target, before = plan.predict.x, plan.learn.x, plan.target, plan.before
        out = np.zeros(len(queries))
        by_shared: list[IntArray] = []
        for bucket in np.union1d(asks, learns).tolist():
            mine = np.flatnonzero(asks == bucket)
            taught = np.flatnonzero(learns == bucket)
            fit = self._fit(bucket)
            arrivals = before[taught]  # non-decreasing, as plan.before
            known = fit.updates + np.searchsorted(arrivals, mine, side="right")
            grown = known >= self.params.shared_until
            own = mine[grown]
            by_shared.append(mine[~grown])
            if len(own) or len(taught):
                # a learn row arrives after the bucket's predict rows that came before it
                arrived = np.searchsorted(own, arrivals, side="left").astype(np.intp)
                out[own] = fit._run(queries[own], rows[taught], target[taught], arrived)
        rest = np.concatenate(by_shared) if by_shared else _NONE
        rest.sort()
        if len(rest) == len(queries):
            out = self.shared._run(queries, rows, target, before)
        else:
            arrived = np.searchsorted(rest, before, side="left").astype(np.intp)
            out[rest] = self.shared._run(queries[rest], rows, target, arrived)
        return out

    def clone(self) -> KeyedKNN:
        return KeyedKNN(self.params, self.n_features)

    def adopt(self, restored: Model) -> Model:
        """A checkpoint of one window (or of other params) goes on as this model's
        shared window; its buckets' windows are kept only under the same buckets."""
        if isinstance(restored, KeyedKNN) and restored.params == self.params:
            return restored
        model = self.clone()
        model.shared = _adopted(model.shared, restored)  # a keyed one's: its shared window
        if isinstance(restored, KeyedKNN) and (
            restored.params.key_buckets == self.params.key_buckets
        ):
            model._fits = {b: _adopted(model._fit(b), f) for b, f in restored._fits.items()}
        return model

    def state_dict(self) -> dict[str, Any]:
        return {
            "shared": self.shared.state_dict(),
            "buckets": {str(b): fit.state_dict() for b, fit in self._fits.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shared = KNN(self.params, self.n_features)
        shared.load_state_dict(state["shared"])
        fits: dict[int, KNN] = {}
        for bucket, saved in state["buckets"].items():
            fit = fits[int(bucket)] = KNN(self.params, self.n_features)
            fit.load_state_dict(saved)
        self.shared, self._fits = shared, fits


_BUFFER = frozenset({"_bx", "_by", "_bn", "_start", "_end"})
""":class:`KNN`'s attributes that hold its window in a buffer (not pickled as such)."""

_NONE = np.zeros(0, dtype=np.intp)
"""No rows: the index of an empty part of a plan."""


def _norms(x: FloatArray) -> FloatArray:
    """Each row's squared norm, summed per row by ``einsum`` (the same number for a
    row whatever the rows around it)."""
    out: FloatArray = np.einsum("jk,jk->j", x, x)
    return out


def _adopted(fresh: KNN, restored: Model) -> KNN:
    """``fresh`` going on with ``restored``'s rows (itself when it has none: another
    kind of model)."""
    adopted = fresh.adopt(restored)
    return adopted if isinstance(adopted, KNN) else fresh


def _build(params: KNNParams, context: ModelContext) -> Model:
    if params.key_buckets > 1:
        return KeyedKNN(params, context.n_features)
    return KNN(params, context.n_features)


register(
    ModelSpec(
        kind="knn",
        params=KNNParams,
        build=_build,
        summary="mean target of the k nearest of the task's latest rows",
    )
)
