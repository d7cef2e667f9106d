"""One tolerance table: every bound is defined once, in the code and in docs/decisions.md#conformance."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cnnbench.conformance import tolerances

ROOT = Path(__file__).resolve().parent.parent
DECISIONS = (ROOT / "docs" / "decisions.md").read_text()


def conformance_section() -> str:
    start = DECISIONS.index("\n## Conformance\n")
    end = DECISIONS.find("\n## ", start + 5)
    return DECISIONS[start : end if end != -1 else None]


def test_every_tolerance_is_derived_in_the_decisions_with_its_value():
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+?) \|", conformance_section(), re.MULTILINE))
    table = {entry.name: f"{entry.value:g}" for entry in tolerances.TABLE}
    assert rows == table


def test_the_table_lists_every_constant_of_the_module():
    constants = {name for name, value in vars(tolerances).items() if name.isupper() and isinstance(value, float | int)}
    assert constants == {entry.name for entry in tolerances.TABLE}
    for entry in tolerances.TABLE:
        assert getattr(tolerances, entry.name) == entry.value


def test_no_other_module_defines_a_tolerance_again():
    names = {entry.name for entry in tolerances.TABLE}
    for path in sorted((ROOT / "cnnbench").rglob("*.py")):
        if path.name == "tolerances.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                assert not (isinstance(target, ast.Name) and target.id in names), f"{path}: {target.id} defined again"
