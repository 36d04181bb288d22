"""The committed references are what the code generates, and the docs cover the code.

When a test here fails after a settings or metrics change: run ``make docs`` (or
``python -m docs.generate``) and commit the result; for an undocumented key, add its
meaning to ``docs/keys.yaml`` (settings) or the params class's ``Attributes:``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs import generate
from service.io.decode import REASONS

REPO = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".json", ""}
SCANNED = ("service", "models", "tests", "bench", "deploy", "configs", "docs")


def _repo_text_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "Dockerfile", REPO / "Makefile", REPO / "pyproject.toml"]
    for top in SCANNED:
        files += [
            path
            for path in (REPO / top).rglob("*")
            if path.is_file()
            and path.suffix in TEXT_SUFFIXES
            and "node_modules" not in path.parts
            and "__pycache__" not in path.parts
        ]
    return files


@pytest.mark.parametrize("path", [generate.CONFIGURATION, generate.METRICS], ids=lambda p: p.name)
def test_committed_reference_is_what_the_code_generates(path: Path) -> None:
    committed = path.read_text(encoding="utf-8")
    assert committed == generate.OUTPUTS[path](), f"{path.name} is stale: run `make docs`"


def test_a_changed_reference_is_reported_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "configuration.md"
    copy.write_text(generate.render_configuration().replace("`ticks`", "`events`", 1))
    monkeypatch.setattr(
        generate,
        "OUTPUTS",
        {copy: generate.render_configuration, **{generate.METRICS: generate.render_metrics}},
    )
    assert generate.stale() == [copy]


def test_every_setting_and_model_param_has_a_meaning() -> None:
    missing = [
        key for key, *_, meaning in generate.settings_rows() if meaning == generate.UNDOCUMENTED
    ]
    missing += [
        f"{kind}: {name}"
        for kind, rows in generate.model_param_rows().items()
        for name, *_, meaning in rows
        if meaning == generate.UNDOCUMENTED
    ]
    assert missing == [], f"add a meaning to docs/keys.yaml or the params docstring: {missing}"


def test_every_meaning_in_keys_yaml_belongs_to_a_setting() -> None:
    keys = {key for key, *_ in generate.settings_rows()}
    keys |= {f"models[].{name}" for name in ("name", "kind", "primary", "publish", "params")}
    assert set(generate._keys_yaml()) - keys == set()


def test_every_label_is_described() -> None:
    assert generate.UNDOCUMENTED not in generate.render_metrics()


def test_every_dead_letter_reason_is_documented() -> None:
    messages = (REPO / "docs" / "messages.md").read_text(encoding="utf-8")
    assert [r for r in REASONS if f"`{r}`" not in messages] == []


def test_no_citation_of_a_document_the_repo_does_not_have() -> None:
    spec = re.compile(r"\bS[P]EC\b")  # the old contract's name, which the repo never had
    cited = re.compile(r"\bdocs/([a-z0-9_-]+\.md)")
    bad = []
    for path in _repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        where = path.relative_to(REPO)
        bad += [f"{where}: cites {match.group()}" for match in spec.finditer(text)]
        bad += [
            f"{where}: cites docs/{name}"
            for name in set(cited.findall(text))
            if not (REPO / "docs" / name).is_file()
        ]
    assert bad == []
