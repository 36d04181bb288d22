"""``NAME=TARGET:JSON`` command-line specs of the benchmarks, parsed one way.

``bench.combiner --member NAME=KIND[:JSON]`` adds a model and ``bench.pipeline
--variant NAME=MODEL:JSON`` changes one; both name something, point at a model or a
kind, and give params as a JSON object, and a malformed one should say the same thing
in both.
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
