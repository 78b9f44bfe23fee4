"""docs/reliability.md cites a test for every guarantee: each cited test must exist, so the
page cannot point at a test that was renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reliability.md"
# `path.py::name`, `path.py::Class::name`, or `::name` (same file as the citation before it)
CITATION = re.compile(r"`((?:tests|src)/[\w/]+\.py)?::([\w:]+)`")


def cited() -> list[tuple[str, str]]:
    found, current = [], None
    for path, name in CITATION.findall(PAGE.read_text(encoding="utf-8")):
        current = path or current
        found.append((current, name))
    return found


def defined(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{item.name}" for item in node.body if hasattr(item, "name")}
    return names


def test_every_cited_test_exists():
    citations = cited()
    assert len(citations) > 40
    missing = [f"{path}::{name}" for path, name in citations if name not in defined(path)]
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"
