"""Command-line specs of the benchmarks, parsed one way.

``bench.combiner --member NAME=KIND[:JSON]`` adds a model and ``bench.pipeline
--variant NAME=MODEL:JSON`` changes one; both name something, point at a model or a
kind, and give params as a JSON object, and a malformed one should say the same thing
in both. ``--set FORECASTD_X=V`` (``bench.latency``, ``bench.pipeline``,
``bench.quality``) overrides a setting in its environment form, as the daemon reads it.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson


def named_params(
    spec: str, option: str, target: str, *, required: bool
) -> tuple[str, str, dict[str, Any]]:
    """``spec`` as ``(name, target, params)``; without ``:JSON``, params are ``{}``
    unless ``required``. ``option`` and ``target`` (``KIND``, ``MODEL``) word the
    error of a malformed spec."""
    name, _, rest = spec.partition("=")
    value, colon, params = rest.partition(":")
    wanted = f"NAME={target}:{{JSON object}}" if required else f"NAME={target}[:JSON object]"
    try:
        parsed = orjson.loads(params) if colon or required else {}
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{option} {spec!r}: params are not JSON ({exc})") from exc
    if not name or not value or not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"{option} wants {wanted}, got {spec!r}")
    return name, value, parsed


def add_set_option(parser: argparse.ArgumentParser, runs: str) -> None:
    """``--set FORECASTD_X=V`` (repeatable): a settings override for ``runs``."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FORECASTD_X=V",
        help=f"a settings override for {runs} (repeatable)",
    )


def set_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """The ``--set`` items as an environment mapping; a malformed one is a usage error."""
    malformed = [item for item in items if "=" not in item or not item.startswith("FORECASTD_")]
    if malformed:
        parser.error(f"--set takes FORECASTD_X=V, got {malformed}")
    return dict(item.split("=", 1) for item in items)
