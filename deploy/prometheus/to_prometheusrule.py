"""Writes deploy/k8s/base/prometheusrule.yaml: deploy/prometheus/rules.yml as a
prometheus-operator PrometheusRule, so that `kubectl apply -k` installs the alerts too.

    python deploy/prometheus/to_prometheusrule.py          # rewrite
    python deploy/prometheus/to_prometheusrule.py --check  # exit 1 if out of date (tests do this)
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
TARGET = HERE.parent / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/prometheus/to_prometheusrule.py:
# edit rules.yml, then run that script. tests/deploy checks that the two agree.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: linkshop
spec:
"""


def render() -> str:
    lines = RULES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python {Path(__file__).relative_to(HERE.parent.parent)}")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
