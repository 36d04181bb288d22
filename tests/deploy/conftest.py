"""Fixtures of the deployment checks (helpers live in :mod:`tests.deploy.support`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .support import Manifest, kustomize


@pytest.fixture(scope="session")
def render() -> Callable[[Path], list[Manifest]]:
    """Render a kustomization once per session (the checks share the output)."""
    cache: dict[Path, list[Manifest]] = {}

    def _render(directory: Path) -> list[Manifest]:
        if directory not in cache:
            cache[directory] = kustomize(directory)
        return cache[directory]

    return _render
