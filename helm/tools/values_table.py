#!/usr/bin/env python3
"""Write the parameters tables of ``helm/dangerclip/README.md`` from the ``## @param`` docs in values.yaml.

bitnami's convention: ``## @section Title`` starts a table, ``## @param key description`` (continued on the
following ``##`` lines) documents a key; the default is read from the parsed values.

    .venv/bin/python helm/tools/values_table.py            # rewrite the README's tables
    .venv/bin/python helm/tools/values_table.py --check    # exit 1 when stale (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from _generated import write_or_check

CHART = Path(__file__).resolve().parents[2] / "helm" / "dangerclip"
README = CHART / "README.md"
BEGIN, END = "<!-- parameters: begin (helm/tools/values_table.py) -->", "<!-- parameters: end -->"


def lookup(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def params(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(section, [(key, description), ...]), ...]`` in file order."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("## @section "):
            sections.append((s[len("## @section ") :], []))
            current = None
        elif s.startswith("## @param "):
            key, _, desc = s[len("## @param ") :].partition(" ")
            current = [key, desc]
            sections[-1][1].append((key, desc))
        elif s.startswith("## ") and current is not None and sections[-1][1]:
            key, desc = sections[-1][1][-1]
            sections[-1][1][-1] = (key, desc + " " + s[3:])
        else:
            current = None
    return [(name, rows) for name, rows in sections if rows]


def tables() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    out = [BEGIN]
    for section, rows in params(text):
        out += ["", f"### {section}", "", "| Name | Description | Default |", "|---|---|---|"]
        for key, desc in rows:
            default = json.dumps(lookup(values, key))
            desc = re.sub(r"\s+", " ", desc).replace("|", "\\|")
            out.append(f"| `{key}` | {desc} | `{default}` |")
    out += ["", END]
    return "\n".join(out)


def new_readme(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{README}: markers not found")
    return head + tables() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    return write_or_check(README, new_readme(README.read_text()), args.check, "helm/tools/values_table.py")


if __name__ == "__main__":
    sys.exit(main())
