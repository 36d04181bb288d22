"""The Prometheus rules: promtool accepts and unit-tests them, every alert is tested
both ways, and every alert carries what an on-call engineer needs."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
import yaml

from .support import (
    DEPLOY,
    INSTALL_HINT,
    PROMETHEUS,
    REPO,
    RULES,
    RULES_TEST,
    find_tool,
    run_tool,
)

pytestmark = pytest.mark.deploy

SEVERITIES = {"critical", "warning", "info"}


def load(path: Any) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def promtool() -> str:
    return find_tool("promtool", f"promtool comes with Debian's prometheus package: {INSTALL_HINT}")


def test_promtool_check_rules() -> None:
    out = run_tool([promtool(), "check", "rules", str(RULES)])
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_promtool_check_config() -> None:
    run_tool([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS)


def test_promtool_test_rules() -> None:
    out = run_tool([promtool(), "test", "rules", RULES_TEST.name], cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_prometheus_rule_is_generated_from_rules_yml() -> None:
    """prometheusrule.yaml is exactly what deploy/tools/sync_rules.py writes."""
    run_tool([sys.executable, str(REPO / "deploy" / "tools" / "sync_rules.py"), "--check"])


def test_local_scrape_config_uses_the_rules_and_the_job_the_alerts_expect() -> None:
    config = load(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == [RULES.name]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["forecastd"]
    expressions = " ".join(str(rule["expr"]) for rule in rules())
    assert set(re.findall(r'job="([^"]+)"', expressions)) == {"forecastd"}


def test_every_alert_fires_and_stays_silent_in_a_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in load(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alerts())
    assert names - fires == set(), "alerts never shown firing in rules_test.yml"
    assert names - silent == set(), "alerts never shown silent in rules_test.yml"
    assert (fires | silent) - names == set(), "rules_test.yml tests alerts rules.yml lacks"


def test_recording_rules_are_named_level_metric_operation() -> None:
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"forecastd:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_is_described_and_has_a_runbook() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", readme, flags=re.MULTILINE)}
    for name, alert in alerts().items():
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        url = annotations["runbook_url"]
        assert url.split("#")[0].endswith("/deploy/README.md"), url
        assert url.split("#")[1] == name.lower() in anchors, f"{name}: no section #{name.lower()}"
