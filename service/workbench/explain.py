"""Feature attributions of trained models, on rows they actually learned from.

One method per model family, each the one that reads the model as it is:

* River linear models: weight times input, ``|w_j x_j|`` averaged over the rows (the
  inputs are standardised by the pipeline, so weights alone would do as well, but the
  product also shows a feature that is rarely far from its mean);
* torch models: integrated gradients of the network's output with respect to the
  feature vector, from the all-zero input (the features' running means, as the
  pipeline standardises them) along a straight path, 32 steps (a Riemann sum of
  autograd gradients). Hand-written rather than Captum: it is the one attribution
  needed, fifteen lines, and Captum would add a package to the extra for it;
  ``torch.attention`` also reports its attention weights over the window steps;
* every other learning model (trees, forests, ``river.custom``): permutation
  importance, the increase of mean absolute error when one feature column is
  shuffled (seeded);
* an ensemble: each member's weight (the mean over keys of each key's current
  weights), and as feature attributions the members' attributions weighted by
  those weights.

Attributions are shares: non-negative, summing to 1 per model, so models compare.
Models that read no features (the baselines) have none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.base import FeatureBatch, FloatArray, Model
from models.ensemble import Hedge
from service.workbench.collect import Probe, WorkbenchRun

IG_STEPS = 32
PERMUTATION_ROWS = 512


@dataclass
class Explanation:
    """One model's attributions: ``features`` (name → share), how they were found,
    and for an ensemble its members' weights, for attention its window weights
    (oldest first)."""

    model: str
    method: str
    features: dict[str, float] = field(default_factory=dict)
    members: dict[str, float] = field(default_factory=dict)
    window: list[float] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return sorted(self.features, key=lambda n: -self.features[n])

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "features": dict(sorted(self.features.items(), key=lambda kv: -kv[1])),
            "members": self.members,
            "window": self.window,
        }


def explain_run(run: WorkbenchRun, seed: int = 0) -> dict[str, Explanation]:
    """Attributions of every model of ``run`` (module docstring)."""
    out: dict[str, Explanation] = {}
    for name, probe in run.probes.items():
        found = explain_model(name, probe, seed)
        if found is not None:
            out[name] = found
    for name, hedge in run.hedges.items():
        out[name] = explain_ensemble(name, hedge, run.members.get(name, ()), out)
    return out


def explain_model(name: str, probe: Probe, seed: int = 0) -> Explanation | None:
    """A base model's attributions on the rows it learned most recently."""
    sample, target = probe.sample, probe.sample_target
    if sample is None or len(sample) == 0:
        return None
    model = probe.inner
    if model.updates == 0:
        return Explanation(name, "none: the model does not learn from features")
    linear = _linear_weights(model)
    if linear is not None:
        names = list(sample.feature_names)
        w = np.array([linear.get(n, 0.0) for n in names])
        return Explanation(name, "weight x input", _shares(names, np.mean(np.abs(sample.x * w), 0)))
    network = getattr(model, "_net", None)
    if network is not None:
        explanation = Explanation(
            name, "integrated gradients", _shares(sample.feature_names, _ig(model, sample))
        )
        try:
            weights = np.asarray(model.explain(sample), dtype=np.float64)  # type: ignore[attr-defined]
        except (TypeError, AttributeError):
            return explanation
        explanation.method += " + attention weights"
        explanation.window = np.nanmean(weights, axis=(0, 1)).tolist()
        return explanation
    return Explanation(
        name,
        "permutation importance",
        _shares(sample.feature_names, _permutation(model, sample, target, seed)),
    )


def explain_ensemble(
    name: str, hedge: Hedge, members: tuple[str, ...], known: dict[str, Explanation]
) -> Explanation:
    """Members' weights (mean over keys); features: their attributions, weighted."""
    keyed = [slot for slot, seen in enumerate(hedge._known) if seen]  # keys with weights
    # no key resolved yet: the pooled weights a new key starts from
    w = np.mean([hedge.weights(slot) for slot in keyed], axis=0) if keyed else hedge.pool_weights()
    weights = {m: float(v) for m, v in zip(members, np.asarray(w).tolist(), strict=True)}
    features: dict[str, float] = {}
    for member, weight in weights.items():
        found = known.get(member)
        if found is None:
            continue
        for feature, value in found.features.items():
            features[feature] = features.get(feature, 0.0) + weight * value
    total = sum(features.values())
    if total > 0:
        features = {k: v / total for k, v in features.items()}
    return Explanation(name, "member weights x member attributions", features, weights)


def _linear_weights(model: Model) -> dict[str, float] | None:
    estimator = getattr(model, "estimator", None)
    regressor = getattr(estimator, "regressor", estimator)
    weights = getattr(regressor, "weights", None)
    if isinstance(weights, dict) and type(regressor).__name__ == "LinearRegression":
        return {str(k): float(v) for k, v in weights.items()}
    return None


def _ig(model: Any, sample: FeatureBatch) -> FloatArray:
    """Mean |integrated gradients| per feature of a torch model (module docstring)."""
    import torch

    net = model._net
    x, window, mask, key = model._tensors(model._rows(sample, None))
    was_training = net.training
    net.eval()
    try:
        baseline = torch.zeros_like(x)
        total = torch.zeros_like(x)
        for step in range(1, IG_STEPS + 1):
            point = (baseline + (x - baseline) * (step / IG_STEPS)).detach().requires_grad_(True)
            out = net(point, window, mask, key)
            (grad,) = torch.autograd.grad(out.sum(), point)
            total += grad
        attributions = (x - baseline) * total / IG_STEPS
    finally:
        net.train(was_training)
    result: FloatArray = attributions.abs().mean(dim=0).detach().to(torch.float64).numpy()
    return result


def _permutation(model: Model, sample: FeatureBatch, target: FloatArray, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    rows = sample.take(np.arange(min(len(sample), PERMUTATION_ROWS), dtype=np.intp))
    y = target[: len(rows)]
    base = float(np.mean(np.abs(model.predict(rows) - y)))
    out = np.zeros(rows.x.shape[1])
    for j in range(rows.x.shape[1]):
        x = rows.x.copy()
        x[:, j] = rng.permutation(x[:, j])
        shuffled = FeatureBatch(
            x, rows.window, rows.offset, rows.keys, rows.feature_names, rows.scale, rows.seasonal
        )
        out[j] = max(0.0, float(np.mean(np.abs(model.predict(shuffled) - y))) - base)
    return out


def _shares(names: Any, values: FloatArray) -> dict[str, float]:
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    total = float(values.sum())
    if not math.isfinite(total) or total <= 0:
        return {str(n): 0.0 for n in names}
    return {str(n): float(v / total) for n, v in zip(names, values.tolist(), strict=True)}
