"""bench/pipeline.py's variants are valid configs that differ only where they say."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.pipeline import (
    _plumbing,
    _variant_spec,
    _with_params,
    _without,
    micros_per_event,
    records_for,
    variant,
)
from service.config import load_settings

DEMO = load_settings(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml", env={})


def test_removing_a_member_keeps_the_ensemble_and_removing_the_primary_promotes() -> None:
    without_mlp = variant(DEMO, _without("mlp"))
    assert [m.name for m in without_mlp.models] == [
        "ensemble",
        "last",
        "seasonal",
        "ewma",
        "holt",
        "linear",
        "rls",
        "knn",
    ]
    members = ("last", "seasonal", "ewma", "holt", "linear", "rls", "knn")
    assert without_mlp.members(without_mlp.primary) == members
    assert without_mlp.forecast == DEMO.forecast
    alone = variant(DEMO, _without("ensemble"))
    assert [m.primary for m in alone.models] == [True] + [False] * 7


def test_plumbing_keeps_the_pipeline_and_drops_models_and_detectors() -> None:
    plumbing = variant(DEMO, _plumbing)
    assert [(m.kind, m.primary) for m in plumbing.models] == [("persistence", True)]
    assert plumbing.drift.detectors == ()
    assert plumbing.kafka == DEMO.kafka


def test_cost_per_event_is_measured_on_the_real_pipeline() -> None:
    records = records_for(DEMO, "sp500", 600)
    assert len(records) == 600
    assert {r.partition for r in records} == {0, 1, 2}
    assert micros_per_event(variant(DEMO, _plumbing), records, repeats=1) > 0


def test_a_variant_updates_one_models_params_and_nothing_else() -> None:
    name, model, params = _variant_spec('wide=mlp:{"hidden": [128, 128]}')
    assert (name, model) == ("wide", "mlp")
    wide = variant(DEMO, _with_params(model, params))
    pairs = zip(wide.models, DEMO.models, strict=True)
    changed = {new.name: new.params for new, old in pairs if new != old}
    assert changed == {"mlp": {"average": 0.9, "hidden": [128, 128]}}
    assert wide.forecast == DEMO.forecast


@pytest.mark.parametrize(
    ("spec", "message"),
    [("wide=mlp:[1]", "JSON object"), ("wide=mlp:{hidden", "not JSON"), ("=mlp:{}", "NAME=")],
)
def test_a_malformed_variant_says_what_it_wants(spec: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        _variant_spec(spec)


def test_a_variant_of_a_model_the_config_lacks_names_the_ones_it_has() -> None:
    with pytest.raises(SystemExit, match=r"no model 'nope' .*ensemble, last"):
        variant(DEMO, _with_params("nope", {}))
