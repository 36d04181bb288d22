"""Learning curves and an over-/underfitting verdict per learning model.

Two errors per model over the replay, both mean absolute errors in the target's units:

* *seen*: at each checkpoint the model re-predicts the rows it learned most recently
  (:class:`~service.workbench.collect.Probe`): how well it fits data it has learned;
* *unseen*: its prequential error on the predictions resolved since the previous
  checkpoint, which it made before learning their truth.

A model whose *seen* error is well below its *unseen* error has memorised noise
(overfits: more L2, a smaller network, dropout, a longer window to average over). A
model whose *unseen* error is no better than the naive forecast (the key's last value;
with ``horizon: 0``, the mean of the truth), with *seen* close to it, has not found the
signal (underfits: a larger network, a higher learning rate, less L2, more lags or a
seasonal period). A model whose *seen* error is above its *unseen* error got worse on
rows by learning them, or whose unseen error is far above the naive forecast's: its
updates overshoot (a lower learning rate, tighter gradient clipping). The thresholds
are :data:`OVERFIT_RATIO`, :data:`UNDERFIT_RATIO`, :data:`UNSTABLE_RATIO` and
:data:`DIVERGED_RATIO`; they are read on the second half of the replay, after the
models had data to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from service.workbench.collect import WorkbenchRun

OVERFIT_RATIO = 1.5
"""Unseen error above this multiple of the seen error reads as overfitting."""
UNDERFIT_RATIO = 0.98
"""Unseen error above this share of the naive forecast's reads as underfitting."""
UNSTABLE_RATIO = 1.2
"""Seen error above this multiple of the unseen error (worse on rows after learning
them than before) reads as updates that overshoot."""
DIVERGED_RATIO = 3.0
"""Unseen error above this multiple of the naive forecast's reads as diverging."""


@dataclass
class Curve:
    positions: list[int] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)
    unseen: list[float] = field(default_factory=list)


@dataclass
class Verdict:
    model: str
    verdict: str  # "unstable", "overfit", "underfit" or "fits"
    seen: float
    unseen: float
    naive: float
    advice: str

    def sentence(self) -> str:
        return (
            f"{self.model}: {self.verdict} (error on learned rows {self.seen:.4g}, on unseen"
            f" rows {self.unseen:.4g}, naive forecast {self.naive:.4g}). {self.advice}"
        )


def curves(run: WorkbenchRun) -> dict[str, Curve]:
    """Seen and unseen error per learning model at the probes' checkpoints."""
    out: dict[str, Curve] = {}
    for model, probe in run.probes.items():
        if probe.inner.updates == 0 or not probe.curve:
            continue
        part = run.frame[run.frame["model"] == model]
        position = part["position"].to_numpy()
        err = np.abs(part["y_true"].to_numpy() - part["y_hat"].to_numpy())
        curve = Curve()
        previous = 0
        for point in probe.curve:
            mine = (position > previous) & (position <= point.position)
            if mine.any() and np.isfinite(point.train_mae):
                curve.positions.append(point.position)
                curve.seen.append(point.train_mae)
                curve.unseen.append(float(err[mine].mean()))
            previous = point.position
        out[model] = curve
    return out


def _naive(part: pd.DataFrame, horizon: int) -> float:
    y = part["y_true"].to_numpy()
    if horizon == 0:
        return float(np.mean(np.abs(y - y.mean()))) if len(y) else float("nan")
    last = part["y_last"].to_numpy()
    has = np.isfinite(last)
    return float(np.mean(np.abs(y[has] - last[has]))) if has.any() else float("nan")


def verdicts(run: WorkbenchRun, found: dict[str, Curve]) -> list[Verdict]:
    """Over-/underfitting per learning model, on the second half of its curve."""
    out = []
    horizon = run.settings.forecast.horizon
    for model, curve in found.items():
        half = len(curve.positions) // 2
        if len(curve.positions) - half < 1:
            continue
        seen = float(np.mean(curve.seen[half:]))
        unseen = float(np.mean(curve.unseen[half:]))
        start = curve.positions[half - 1] if half > 0 else 0
        part = run.frame[(run.frame["model"] == model) & (run.frame["position"] > start)]
        naive = _naive(part, horizon)
        if seen > UNSTABLE_RATIO * unseen or unseen > DIVERGED_RATIO * naive:
            verdict = "unstable"
            advice = (
                "Its updates overshoot (its error on rows it has just learned is above its"
                " error on them before, or far above the naive forecast's). Try a lower"
                " learning rate or tighter gradient clipping."
            )
        elif unseen > OVERFIT_RATIO * seen:
            verdict = "overfit"
            advice = (
                "It fits rows it learned much better than new ones: try more L2"
                " (weight_decay), a smaller network or dropout, a lower learning rate,"
                " or a longer window."
            )
        elif np.isfinite(naive) and unseen >= UNDERFIT_RATIO * naive:
            verdict = "underfit"
            advice = (
                "It does no better than the naive forecast: try a larger network, a"
                " higher learning rate, less L2, more lags, or a seasonal period."
            )
        else:
            verdict = "fits"
            advice = "Seen and unseen errors are close and it beats the naive forecast."
        out.append(Verdict(model, verdict, seen, unseen, naive, advice))
    return out
