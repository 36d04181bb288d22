"""The report's PNG plots (matplotlib, Agg backend: no display needed, files only).

Each function draws one figure into a file and returns its name; a figure with
nothing to show (no scored predictions, no attributions) is not drawn, and the page
leaves it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.workbench.analysis import rolling_mae
from service.workbench.explain import Explanation
from service.workbench.fitting import Curve

DPI = 80


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    _pyplot().close(fig)
    return name


def actual_vs_predicted(frame: pd.DataFrame, primary: str, keys: list[str], out: Path) -> str:
    """Truth and the primary model's predictions (with its interval) for a few keys."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.4 * len(keys)), squeeze=False)
    part = frame[frame["model"] == primary]
    for ax, key in zip(axes[:, 0], keys, strict=True):
        series = part[part["key"] == key].sort_values("position").tail(300)
        t = pd.to_datetime(series["target_ts"], unit="ms", utc=True)
        ax.fill_between(t, series["lower"], series["upper"], color="C1", alpha=0.2, lw=0)
        ax.plot(t, series["y_true"], color="k", lw=1, label="actual")
        ax.plot(t, series["y_hat"], color="C1", lw=1, label=f"{primary} (predicted)")
        ax.set_title(f"key {key}: last {len(series)} predictions", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    return _save(fig, out, "actual_vs_predicted.png")


def residuals(frame: pd.DataFrame, models: list[str], out: Path) -> str:
    """Residual distribution per model, on one axis (clipped to the central 98%)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    r = frame["y_true"] - frame["y_hat"]
    low, high = np.nanquantile(r, [0.01, 0.99]) if len(r) else (0.0, 1.0)
    if low == high:
        low, high = low - 1, high + 1
    bins = np.linspace(low, high, 60)
    for model in models:
        mine = r[frame["model"] == model]
        ax.hist(np.clip(mine, low, high), bins=bins, histtype="step", label=model, density=True)
    ax.set_xlabel("residual (actual - predicted)")
    ax.legend(fontsize=7)
    return _save(fig, out, "residuals.png")


def rolling_error(
    frame: pd.DataFrame, models: list[str], drifts: dict[str, list[int]], out: Path
) -> str:
    """Rolling MAE per model over the replay; confirmed drifts as ticks per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for number, model in enumerate(models):
        x, y = rolling_mae(frame[frame["model"] == model])
        line = ax.plot(x, y, lw=1, label=model)[0]
        for position in drifts.get(model, []):
            ax.axvline(
                position, color=line.get_color(), alpha=0.35, lw=0.8, ymax=0.06 + 0.03 * number
            )
    ax.set_xlabel("records replayed (vertical ticks: drift confirmed)")
    ax.set_ylabel("rolling MAE")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, out, "rolling_error.png")


def error_by_key(metrics: dict[str, Any], primary: str, out: Path) -> str:
    """The primary model's MAE per key (the 30 worst keys when there are more)."""
    plt = _pyplot()
    keys = metrics[primary]["keys"]
    ranked = sorted(keys.items(), key=lambda kv: -kv[1]["mae"])[:30]
    fig, ax = plt.subplots(figsize=(9, 0.25 * len(ranked) + 1.2))
    ax.barh([k for k, _ in ranked][::-1], [v["mae"] for _, v in ranked][::-1], color="C0")
    ax.set_xlabel(f"{primary}: MAE per key")
    ax.tick_params(labelsize=7)
    return _save(fig, out, "error_by_key.png")


def importance(explanations: dict[str, Explanation], out: Path, top: int = 12) -> str | None:
    """Attribution shares per model (top features), one panel per model with any."""
    plt = _pyplot()
    shown = [e for e in explanations.values() if e.features and sum(e.features.values()) > 0]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
    for ax, found in zip(axes[0], shown, strict=True):
        names = found.ranking()[:top][::-1]
        ax.barh(names, [found.features[n] for n in names], color="C2")
        ax.set_title(f"{found.model}\n({found.method})", fontsize=8)
        ax.tick_params(labelsize=7)
    return _save(fig, out, "feature_importance.png")


def learning_curves(curves: dict[str, Curve], out: Path) -> str | None:
    """Per learning model: error on rows it learned from vs on rows it had not seen."""
    plt = _pyplot()
    shown = {m: c for m, c in curves.items() if c.positions}
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.0), squeeze=False)
    for ax, (model, curve) in zip(axes[0], shown.items(), strict=True):
        ax.plot(curve.positions, curve.unseen, label="unseen (prequential)", color="C3")
        ax.plot(curve.positions, curve.seen, label="learned rows", color="C0")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("records replayed", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("MAE")
    return _save(fig, out, "learning_curves.png")
