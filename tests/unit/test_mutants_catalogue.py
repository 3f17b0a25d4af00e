"""The mutation catalogue (tests/mutants.py) stays runnable without being run here: each broken behaviour's text
still occurs exactly once in its file, each guarding test exists, and tests/README.md lists every mutant."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.mutants import MUTANTS, ROOT, check_catalogue, markdown


def test_every_mutant_still_applies_to_the_code():
    assert check_catalogue() == []


def test_every_guarding_test_exists():
    for m in MUTANTS:
        for node in m.tests:
            path, _, name = node.partition("::")
            if name:
                tree = ast.parse((ROOT / path).read_text())
                names = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
                assert name in names, f"{m.id}: no test {name} in {path}"


def test_the_readme_table_is_the_catalogue():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown() in readme, "tests/README.md is out of date: paste `python tests/mutants.py --list` into it"
