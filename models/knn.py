"""``knn``: the mean of the learning targets of the nearest recent rows.

Why a nearest-neighbour member: on a short seasonal series (a few years of monthly
values) the models that fit weights need many cycles before their fit is good, while a
row whose seasonal lags, calendar position and recent changes look like the current one
already says what comes next: the change that followed it. k nearest neighbours over a
sliding window of the task's latest learned rows (River's ``KNNRegressor`` with its
``LazySearch``; Cover & Hart, "Nearest neighbor pattern classification", 1967) needs no
fit and forgets by itself, at the cost of a distance per stored row per prediction.

The rows are the shared, standardised feature vectors (:mod:`service.pipeline.features`)
and their learning targets (a change in key units, by default), so one window serves
every key of a task, as the task's other learned models do. Distances are Euclidean;
ties go to the newer row. A prediction averages the targets of the ``neighbors``
nearest rows among the ``window`` rows learned last (fewer while the window fills; 0,
no change, before any).

It works through a poll in event order (:class:`~models.base.PlanRunner`): a row is
compared with exactly the rows learned before it arrived, whatever the poll size, and
each distance's sums are computed per pair by ``einsum`` (not by a BLAS matrix product,
whose blocking, and so rounding, depends on the batch's shape), so the same stream
gives the same numbers in any batching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from models.base import FeatureBatch, FloatArray, Model, ModelContext, Plan
from models.registry import ModelParams, ModelSpec, register

__all__ = ["KNN", "KNNParams"]

_BLOCK = 64
"""Rows predicted per block: a block is compared with the stored rows any of its rows
may see (``window`` plus the rows learned inside the block), so the work stays
proportional to the rows, not to the poll squared."""


class KNNParams(ModelParams):
    """``knn``: k nearest neighbours over the task's latest rows (module docstring).

    Attributes:
        neighbors: rows averaged per prediction.
        window: latest learned rows searched (the task's, across its keys: with
            ten keys in a task, each keeps about a hundred of its own rows, four
            days of an hourly series, eight years of a monthly one).
        aggregate: ``mean`` of the neighbours' targets, or their ``median`` (less
            pulled by one neighbour that was an outlier).
    """

    neighbors: int = Field(default=5, ge=1, le=1000)
    window: int = Field(default=1000, ge=1, le=100_000)
    aggregate: Literal["mean", "median"] = "mean"


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
        self._x = np.zeros((0, n_features))
        self._y = np.zeros(0)
        self._seen = 0

    @property
    def updates(self) -> int:
        return self._seen

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Each row's neighbours among the stored rows."""
        n, m = len(batch), len(self._y)
        hi = np.full(n, m, dtype=np.intp)
        return self._predict(batch.x, self._x, self._y, np.maximum(hi - self.params.window, 0), hi)

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Append the rows; keep the latest ``window``."""
        if len(target):
            self._keep(np.concatenate([self._x, batch.x]), np.concatenate([self._y, target]))
            self._seen += len(target)

    def run(self, plan: Plan) -> FloatArray:
        """The plan in event order, in blocks: predict row ``i`` sees the stored rows
        and the plan's learn rows that arrived before it (``before[j] <= i``)."""
        x = np.concatenate([self._x, plan.learn.x])
        y = np.concatenate([self._y, plan.target])
        n = len(plan.predict)
        seen = np.searchsorted(plan.before, np.arange(n), side="right")
        hi = (len(self._y) + seen).astype(np.intp)
        out = self._predict(plan.predict.x, x, y, np.maximum(hi - self.params.window, 0), hi)
        if len(plan.target):
            self._keep(x, y)
            self._seen += len(plan.target)
        return out

    def _keep(self, x: FloatArray, y: FloatArray) -> None:
        self._x, self._y = x[-self.params.window :].copy(), y[-self.params.window :].copy()

    def _predict(
        self,
        queries: FloatArray,
        x: FloatArray,
        y: FloatArray,
        lo: npt.NDArray[np.intp],
        hi: npt.NDArray[np.intp],
    ) -> FloatArray:
        """Row ``i`` of ``queries`` against stored rows ``lo[i]:hi[i]`` (both
        non-decreasing in ``i``)."""
        n = len(queries)
        out = np.zeros(n)
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            if hi[stop - 1] > lo[start]:
                out[start:stop] = self._block(
                    queries[start:stop], x, y, lo[start:stop], hi[start:stop]
                )
        return out

    def _block(
        self,
        queries: FloatArray,
        x: FloatArray,
        y: FloatArray,
        lo: npt.NDArray[np.intp],
        hi: npt.NDArray[np.intp],
    ) -> FloatArray:
        """One block of queries against the stored rows any of them sees, each query
        seeing its own ``lo:hi`` of them. Every number is computed per query and
        candidate, in an order that does not depend on the block (``einsum`` sums
        without BLAS), so a query gets the same neighbours in any batching."""
        rows, a, b = len(queries), int(lo[0]), int(hi[-1])
        cand_x, cand_y = x[a:b][::-1], y[a:b][::-1]  # newest first: ties go to newer rows
        dist = (
            np.einsum("ik,ik->i", queries, queries)[:, None]
            + np.einsum("jk,jk->j", cand_x, cand_x)[None, :]
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

    def state_dict(self) -> dict[str, Any]:
        return {"x": self._x.copy(), "y": self._y.copy(), "seen": self._seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"knn state has rows of {x.shape[-1]} features, this model {self.n_features}:"
                " the feature list changed since the state was saved"
            )
        self._x = x.copy()
        self._y = np.asarray(state["y"], dtype=np.float64).copy()
        self._seen = int(state["seen"])


def _build(params: KNNParams, context: ModelContext) -> Model:
    return KNN(params, context.n_features)


register(
    ModelSpec(
        kind="knn",
        params=KNNParams,
        build=_build,
        summary="mean target of the k nearest of the task's latest rows",
    )
)
