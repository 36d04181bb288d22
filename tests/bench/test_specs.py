"""bench/specs.py: one parser for the benchmarks' NAME=TARGET:JSON options."""

from __future__ import annotations

import argparse

import pytest

from bench.specs import named_params


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
