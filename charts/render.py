#!/usr/bin/env python3
"""Render charts/weir offline, like `helm template`, with Helm's own Go SDK (PyPI
helm-python-sdk): no helm binary, no cluster, no network.

    charts/render.py [-f VALUES.yaml]... [--set KEY=VAL]... [--name weir]
                     [--namespace weir-system] [--include-crds] [--json]

Prints the manifests as YAML documents (or, with --json, one JSON list of objects). Values are
checked against values.schema.json exactly as `helm install` checks them: bad values exit 1
with Helm's message. operator/tests/chart.rs and charts/check.py use this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent / "weir"
INSTALL_HINT = (
    "charts/render.py needs the PyPI packages helm-python-sdk and PyYAML: run scripts/deps "
    "(python3 -m pip install helm-python-sdk pyyaml)"
)

try:
    import helm_python as helm
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, reported plainly
    sys.exit(f"{INSTALL_HINT} ({e})")


def merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `update` into `into` (maps merge, anything else replaces), as Helm merges
    several -f files and --set flags."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = "weir",
    namespace: str = "weir-system",
    include_crds: bool = False,
) -> list[tuple[str, str]]:
    """(source file, manifest text) of every rendered template (NOTES.txt included), sorted by
    file, then the CRDs when asked. Raises helm.HelmValuesError on values the schema refuses
    and helm.HelmRenderError when a template fails."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
        out = sorted(rendered.items())
        if include_crds:
            out += [(c["filename"], c["data"]) for c in chart.crds]
    return out


def objects(rendered: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """(source file, object) of every Kubernetes object in the rendered files (NOTES.txt and
    empty documents skipped)."""
    out = []
    for source, text in rendered:
        if source.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((source, doc))
    return out


def notes(rendered: list[tuple[str, str]]) -> str:
    return "".join(text for source, text in rendered if source.endswith("NOTES.txt"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    p.add_argument("--set", action="append", default=[], help="KEY=VAL, Helm --set syntax")
    p.add_argument("--name", default="weir", help="release name")
    p.add_argument("--namespace", default="weir-system", help="release namespace")
    p.add_argument("--include-crds", action="store_true", help="also print crds/")
    p.add_argument("--json", action="store_true", help="one JSON list of the objects")
    args = p.parse_args()

    values: dict[str, Any] = {}
    for path in args.values:
        merge(values, helm.values_from_yaml(Path(path).read_text()))
    for expr in args.set:
        merge(values, helm.parse_set_string(expr))
    try:
        rendered = render(
            values, name=args.name, namespace=args.namespace, include_crds=args.include_crds
        )
    except helm.HelmError as e:
        print(f"render.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump([obj for _, obj in objects(rendered)], sys.stdout, indent=1)
        print()
    else:
        for source, text in rendered:
            if source.endswith("NOTES.txt") or not text.strip():
                continue
            print(f"---\n# Source: {source}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
