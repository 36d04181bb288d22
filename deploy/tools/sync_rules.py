#!/usr/bin/env python3
"""Write deploy/prometheus/prometheusrule.yaml from deploy/prometheus/rules.yml.

rules.yml is the one source of the recording and alerting rules: promtool checks and
unit-tests it, and a plain Prometheus loads it. The Prometheus Operator wants the same
groups inside a PrometheusRule object, which kustomize cannot build from a file, so
this script embeds rules.yml in one, verbatim (indented under ``spec:``, comments and
all) below a fixed header. tests/deploy fails when the two disagree.

    python3 deploy/tools/sync_rules.py          # rewrite prometheusrule.yaml
    python3 deploy/tools/sync_rules.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
SOURCE = PROMETHEUS_DIR / "rules.yml"
TARGET = PROMETHEUS_DIR / "prometheusrule.yaml"

HEADER = """\
# GENERATED from rules.yml by deploy/tools/sync_rules.py. Do not edit: change rules.yml
# and run `python3 deploy/tools/sync_rules.py`.
#
# Your Prometheus must select this object (spec.ruleSelector); see deploy/README.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: forecastd
  labels:
    app.kubernetes.io/name: forecastd
    app.kubernetes.io/component: daemon
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest embedding ``rules_text`` (rules.yml's content).

    The leading comment block of rules.yml (about the file itself) is left out; the
    rest is indented two spaces, which keeps YAML block scalars intact.
    """
    lines = rules_text.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)
    if not lines or not lines[0].startswith("groups:"):
        raise ValueError(f"{SOURCE}: expected `groups:` after the leading comments")
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)
    return HEADER + body


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print(__doc__, file=sys.stderr)
        return 2
    wanted = render(SOURCE.read_text(encoding="utf-8"))
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    if current == wanted:
        return 0
    if check:
        print(
            f"{TARGET} is out of date with {SOURCE.name}: run python3 deploy/tools/sync_rules.py",
            file=sys.stderr,
        )
        return 1
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
