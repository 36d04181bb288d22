"""bench/specs.py: one parser for the benchmarks' NAME=TARGET:JSON and --set options."""

from __future__ import annotations

import argparse

import pytest

from bench.specs import add_set_option, named_params, set_overrides


def test_params_may_be_left_out_only_where_they_are_optional() -> None:
    assert named_params("fast=rls", "--member", "KIND", required=False) == ("fast", "rls", {})
    with pytest.raises(argparse.ArgumentTypeError, match=r"--variant 'fast=rls': params"):
        named_params("fast=rls", "--variant", "MODEL", required=True)


@pytest.mark.parametrize("required", [True, False])
def test_a_malformed_spec_names_its_option_and_the_form_it_wants(required: bool) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"--member wants NAME=KIND"):
        named_params("=rls:{}", "--member", "KIND", required=required)
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
        named_params("x=rls:[1]", "--member", "KIND", required=required)
    with pytest.raises(argparse.ArgumentTypeError, match="params are not JSON"):
        named_params("x=rls:{memory", "--member", "KIND", required=required)


def test_set_overrides_are_an_environment_and_malformed_ones_a_usage_error() -> None:
    parser = argparse.ArgumentParser()
    add_set_option(parser, "the runs")
    args = parser.parse_args(["--set", "FORECASTD_A__B=1", "--set", "FORECASTD_C=x=y"])
    assert set_overrides(parser, args.set) == {"FORECASTD_A__B": "1", "FORECASTD_C": "x=y"}
    for bad in ("FORECASTD_A", "A=1"):
        with pytest.raises(SystemExit):
            set_overrides(parser, [bad])
