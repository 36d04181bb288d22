"""``forecastd backtest SOURCE -c CONFIG --report DIR``: the report folder.

DIR gets:

* ``predictions.parquet``: every scored prediction of every model with its truth
  (:class:`~service.workbench.collect.WorkbenchRun` ``frame``), plus ``warmup``: true
  for the rows the figures leave out;
* ``metrics.json``: per model, overall and per key, MAE, MSE, RMSE, R², MAPE and
  interval coverage after warm-up (:mod:`.analysis`, recomputable from the parquet
  file), the over-/underfitting verdicts (:mod:`.fitting`), feature attributions
  (:mod:`.explain`), error analysis and the replay positions of confirmed drifts;
* PNG plots (:mod:`.plots`) and ``index.html``, a page that shows them with the
  tables and the verdicts in words. The page is static: no script, nothing fetched.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from service.config import Settings
from service.records import RawRecord
from service.workbench import analysis, explain, fitting, plots
from service.workbench.collect import WorkbenchRun, replay

KEYS_SHOWN = 3


@dataclass
class Report:
    run: WorkbenchRun
    metrics: dict[str, Any]
    images: list[str]


def build(
    records: Sequence[RawRecord],
    settings: Settings,
    out: Path,
    warmup: float = 0.2,
    source: str = "",
    on_poll: Callable[[int], None] | None = None,
) -> Report:
    """Replay ``records`` through the pipeline and write the report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    run = replay(records, settings, on_poll)
    kept = analysis.after_warmup(run.frame, warmup)
    frame = run.frame.copy()
    frame["warmup"] = True
    if not kept.empty:
        kept_index = pd.MultiIndex.from_frame(kept[["model", "position"]])
        frame.loc[
            pd.MultiIndex.from_frame(frame[["model", "position"]]).isin(kept_index), "warmup"
        ] = False
    frame.to_parquet(out / "predictions.parquet", index=False)

    models = [m.name for m in settings.models]
    primary = settings.primary.name
    explanations = explain.explain_run(run, settings.processing.seed)
    found_curves = fitting.curves(run)
    verdicts = fitting.verdicts(run, found_curves)
    per_model = analysis.metrics(kept)
    document: dict[str, Any] = {
        "source": source,
        "records": run.records,
        "dead_letters": run.dead_letters,
        "dead_letter_reasons": run.dead_letter_reasons,
        "events_per_s": run.events_per_s,
        "horizon": settings.forecast.horizon,
        "warmup": warmup,
        "primary": primary,
        "models": {
            m.name: {"kind": m.kind, **per_model[m.name]}
            for m in settings.models
            if m.name in per_model
        },
        "consistent_with_daemon_scores": run.consistent,
        "fit": [asdict(v) for v in verdicts],
        "explanations": {name: e.as_json() for name, e in explanations.items()},
        "errors": {m: analysis.error_analysis(kept, m) for m in models if m in per_model},
        "drifts": run.drifts,
    }
    (out / "metrics.json").write_text(json.dumps(_finite(document), indent=1))

    images: list[str] = []
    if not kept.empty and primary in per_model:
        keys = _busiest(kept, primary)
        images.append(plots.actual_vs_predicted(kept, primary, keys, out))
        images.append(plots.residuals(kept, models, out))
        images.append(plots.rolling_error(run.frame, models, run.drifts, out))
        images.append(plots.error_by_key(per_model, primary, out))
    for drawn in (plots.importance(explanations, out), plots.learning_curves(found_curves, out)):
        if drawn is not None:
            images.append(drawn)
    (out / "index.html").write_text(_page(document, images, verdicts))
    return Report(run, document, images)


def _busiest(frame: pd.DataFrame, model: str) -> list[str]:
    counts = frame[frame["model"] == model]["key"].value_counts()
    return [str(k) for k in counts.index[:KEYS_SHOWN]]


def _finite(node: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(node, dict):
        return {str(k): _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


_CAPTIONS = {
    "actual_vs_predicted.png": "Actual vs predicted (primary model, interval shaded), busiest keys",
    "residuals.png": "Residual distribution per model",
    "rolling_error.png": "Rolling error per model over the replay, confirmed drifts marked",
    "error_by_key.png": "Error by key (primary model)",
    "feature_importance.png": "Feature attributions per model",
    "learning_curves.png": "Learning curves: error on learned rows vs on unseen rows",
}


def _page(document: dict[str, Any], images: list[str], verdicts: list[fitting.Verdict]) -> str:
    e = html.escape
    rows = []
    for name, entry in document["models"].items():
        o = entry["overall"]
        star = "*" if name == document["primary"] else ""
        cells = [
            f"{name}{star}",
            entry["kind"],
            str(o["n"]),
            *(_num(o[k]) for k in ("mae", "rmse", "r2", "mape", "coverage")),
        ]
        rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    heads = ("model", "kind", "scored", "MAE", "RMSE", "R²", "MAPE", "coverage")
    table = (
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    fit = "".join(f"<li>{e(v.sentence())}</li>" for v in verdicts) or "<li>no learning model</li>"
    errors = document["errors"].get(document["primary"], {})
    notes = []
    if errors.get("worst_keys"):
        worst = ", ".join(f"{r['group']} ({r['mae']:.4g})" for r in errors["worst_keys"])
        notes.append(f"Worst keys by MAE: {worst}.")
    if errors.get("worst_periods"):
        worst = "; ".join(
            f"{r['from'][:16]} to {r['to'][:16]} ({r['mae']:.4g})" for r in errors["worst_periods"]
        )
        notes.append(f"Worst periods: {worst}.")
    if errors.get("residual_acf"):
        acf = errors["residual_acf"][0]
        left = (
            "structure the model misses" if errors.get("structure_left") else "no clear structure"
        )
        notes.append(f"Residual autocorrelation at lag 1: {acf:.3f} ({left}).")
    for name in ("by_hour", "by_weekday", "by_magnitude"):
        if errors.get(name):
            worst_group = max(errors[name], key=lambda r: r["mae"])
            notes.append(
                f"Error {name.replace('_', ' ')}: largest in {worst_group['group']}"
                f" (MAE {worst_group['mae']:.4g})."
            )
    inconsistent = [m for m, ok in document["consistent_with_daemon_scores"].items() if not ok]
    if inconsistent:
        notes.append(
            "Warning: the joined truths differ from the daemon's own scores for "
            + ", ".join(inconsistent)
            + ": their figures are from the joined truths, not the scored ones."
        )
    attributions = []
    for name, found in document["explanations"].items():
        top = list(found["features"].items())[:3]
        text = ", ".join(f"{f} ({v:.0%})" for f, v in top if v > 0) or "reads no features"
        if found["members"]:
            text += "; member weights: " + ", ".join(
                f"{m} {w:.0%}" for m, w in sorted(found["members"].items(), key=lambda kv: -kv[1])
            )
        if found["window"]:
            newest = found["window"][-1]
            text += f"; attention on the newest window step: {newest:.0%}"
        attributions.append(f"{name} ({found['method']}): {text}")
    figures = "".join(
        f'<figure><img src="{e(name)}" alt="{e(_CAPTIONS.get(name, name))}">'
        f"<figcaption>{e(_CAPTIONS.get(name, name))}</figcaption></figure>"
        for name in images
    )
    title = f"forecastd report: {document['source']}"
    counts = document["dead_letter_reasons"]
    reasons = f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if counts else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child,td:nth-child(2){{text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>{e(title)}</h1>
<p>{document["records"]} records, {document["dead_letters"]} dead-lettered{e(reasons)}, horizon
{document["horizon"]}; figures after a warm-up of {document["warmup"]}; * primary.
Every number is recomputable from predictions.parquet (metrics.json holds them all).</p>
{table}
<h2>Over- and underfitting</h2><ul>{fit}</ul>
<h2>What the models read</h2><ul>{"".join(f"<li>{e(a)}</li>" for a in attributions)}</ul>
<h2>Error analysis</h2><ul>{"".join(f"<li>{e(n)}</li>" for n in notes)}</ul>
{figures}
</body></html>
"""


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
