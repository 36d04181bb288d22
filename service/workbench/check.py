"""``forecastd check -c CONFIG``: validate a config and show it resolved.

The resolved config is every setting with its default filled in and the ``FORECASTD_*``
environment overrides applied, exactly what ``forecastd run`` would start with
(:func:`service.config.load_settings` does the work for both). Values that are
credentials (everything under ``kafka.security``, and any key whose name says
password, secret, token...: :func:`service.config.is_secret_key`) print as ``***``,
so the output can be pasted into a ticket. Keys set by the environment are listed
by name, never with their value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from service.config import ENV_PREFIX, MASK, Settings, is_secret_key, load_settings


def resolved(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (YAML/JSON types), secrets masked."""
    data: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    masked: dict[str, Any] = _mask(data, ())
    return masked


def _mask(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _mask(v, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v, path) for v in node]
    inside_security = path[:2] == ("kafka", "security") and len(path) > 2
    if node is not None and (inside_security or (path and is_secret_key(path[-1]))):
        return MASK
    return node


def overridden(env: Mapping[str, str]) -> list[str]:
    """The dotted key paths the environment sets (names only: values may be secrets)."""
    names = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX:
            names.append(".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__")))
    return names


def render(path: str | Path | None, env: Mapping[str, str] | None = None) -> str:
    """The text ``forecastd check`` prints; raises ConfigError on an invalid config."""
    env = os.environ if env is None else env
    settings = load_settings(path, env=env)
    lines = [f"# {path or '(no file: built-in defaults)'}: valid"]
    keys = overridden(env)
    if keys:
        lines.append("# set by the environment: " + ", ".join(keys))
    text = yaml.safe_dump(resolved(settings), sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + text
