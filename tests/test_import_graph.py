"""The package's imports stay layered and acyclic: ``cli`` on top, command modules beside each other, the core below.

Command modules once imported ``console`` and ``execute_run`` back from ``cnnbench.cli`` (a cycle that made
``python -m cnnbench.cli`` load the CLI twice) and each other. These checks parse the sources with ``ast``:
no import, no framework, and function-level imports count too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from cnnbench.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cnnbench"
CLI = "cnnbench.cli"
COMMANDS_PACKAGE = "cnnbench.commands"
COMMON = "cnnbench.commands.common"

#: Where an import statement runs: at import of its module, inside a function, or only for type checkers.
MODULE, FUNCTION, TYPE_CHECKING = "module", "function", "type-checking"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    where: str


def module_name(path: str) -> str:
    """``cnnbench/commands/__init__.py`` -> ``cnnbench.commands``; ``cnnbench/cli.py`` -> ``cnnbench.cli``."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources(root: Path = ROOT) -> dict[str, str]:
    """Every module of the package: path relative to ``root`` -> source."""
    return {path.relative_to(root).as_posix(): path.read_text() for path in sorted((root / PACKAGE).rglob("*.py"))}


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Collector(ast.NodeVisitor):
    """The dotted names each import statement (or ``importlib.import_module("...")``) names, with where it runs."""

    def __init__(self, package: str) -> None:
        self.package = package  # what a relative import is relative to
        self.found: list[tuple[str, list[str], int, str]] = []
        self.where = MODULE

    def _nested(self, node: ast.AST, where: str) -> None:
        outer, self.where = self.where, where if self.where == MODULE else self.where
        self.generic_visit(node)
        self.where = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, FUNCTION)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, FUNCTION)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(node, FUNCTION)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            self._nested(node, TYPE_CHECKING)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, [], node.lineno, self.where))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        self.found.append((base, [alias.name for alias in node.names], node.lineno, self.where))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.found.append((first.value, [], node.lineno, self.where))
        self.generic_visit(node)


def package_imports(sources: dict[str, str]) -> list[Import]:
    """Every import of one of the package's own modules, resolved to the module it loads."""
    modules = {module_name(path): path for path in sources}
    result: list[Import] = []
    for path, text in sources.items():
        importer = module_name(path)
        collector = _Collector(importer if path.endswith("__init__.py") else importer.rpartition(".")[0])
        collector.visit(ast.parse(text, filename=path))
        for base, names, line, where in collector.found:
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            targets = {f"{base}.{name}" if f"{base}.{name}" in modules else base for name in names} or {base}
            for target in sorted(targets):
                while target not in modules and "." in target:  # import a.b.c where c is an attribute
                    target = target.rpartition(".")[0]
                if target in modules and target != importer:
                    result.append(Import(importer, target, line, where))
    return result


def module_level_graph(found: list[Import]) -> dict[str, set[str]]:
    """Who loads whom at import time; importing ``a.b.c`` also runs ``a.b``'s ``__init__`` (unless it is ours)."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        if imp.where != MODULE:
            continue
        own = set(ancestors(imp.importer))
        for target in [imp.imported, *ancestors(imp.imported)]:
            if target not in own and target != imp.importer:
                graph.setdefault(imp.importer, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def is_command_layer(module: str) -> bool:
    return module == COMMANDS_PACKAGE or module.startswith(COMMANDS_PACKAGE + ".")


def layering_violations(found: list[Import]) -> list[str]:
    """(a) no module imports ``cnnbench.cli``; (b) inside ``commands``, modules reach each other only through
    ``common``; (c) the core (all but cli and commands) never imports the command line."""
    problems = []
    for imp in found:
        where = f"{imp.importer} line {imp.line} ({imp.where})"
        if imp.imported == CLI:
            problems.append(f"{where} imports {CLI}: shared code belongs in {COMMON}")
        elif is_command_layer(imp.importer) and is_command_layer(imp.imported) and imp.imported != COMMON:
            problems.append(f"{where} imports the command module {imp.imported}: share it through {COMMON}")
        elif not is_command_layer(imp.importer) and imp.importer != CLI and is_command_layer(imp.imported):
            problems.append(f"{where} imports {imp.imported}: the core must not depend on the command line")
    return problems


def test_the_parser_sees_every_kind_of_import() -> None:
    sources = {
        "cnnbench/__init__.py": "",
        "cnnbench/a.py": "from cnnbench import b\nimport cnnbench.c.d as d\n",
        "cnnbench/b.py": "def f():\n    from . import a\n",
        "cnnbench/c/__init__.py": "import importlib\nimportlib.import_module('cnnbench.b')\n",
        "cnnbench/c/d.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\nfrom .. import b\n"
        ),
    }
    found = {(i.importer, i.imported, i.where) for i in package_imports(sources)}
    assert found == {
        ("cnnbench.a", "cnnbench.b", MODULE),
        ("cnnbench.a", "cnnbench.c.d", MODULE),
        ("cnnbench.b", "cnnbench.a", FUNCTION),
        ("cnnbench.c", "cnnbench.b", MODULE),
        ("cnnbench.c.d", "cnnbench.a", TYPE_CHECKING),
        ("cnnbench.c.d", "cnnbench.b", MODULE),
    }
    graph = module_level_graph(package_imports(sources))
    assert graph["cnnbench.a"] == {"cnnbench.b", "cnnbench.c.d", "cnnbench.c"}  # a.py also runs c/__init__.py
    assert find_cycle(graph) is None  # b -> a runs only when f() is called
    sources["cnnbench/b.py"] = "from cnnbench.c.d import y\n"
    assert find_cycle(module_level_graph(package_imports(sources))) == ["cnnbench.b", "cnnbench.c", "cnnbench.b"]


def test_the_rules_catch_the_old_cycle_through_cli() -> None:
    """The shape of the code before commands/common.py: scale and check imported the console back from cli."""
    sources = {
        "cnnbench/__init__.py": "",
        "cnnbench/cli.py": "cli = None\n__import__('cnnbench.commands.scale', fromlist=['x'])\n",
        "cnnbench/commands/__init__.py": "",
        "cnnbench/commands/scale.py": "def run():\n    from cnnbench.cli import console, execute_run\n",
        "cnnbench/commands/compare.py": "",
        "cnnbench/commands/history.py": "from cnnbench.commands.compare import wide_console\n",
        "cnnbench/report.py": "from cnnbench.commands import common\n",
        "cnnbench/commands/common.py": "",
    }
    problems = layering_violations(package_imports(sources))
    assert len(problems) == 3, problems
    assert "cnnbench.commands.scale line 2 (function) imports cnnbench.cli" in problems[0]
    assert any("cnnbench.commands.history line 1 (module) imports the command module" in p for p in problems)
    assert any("cnnbench.report" in p and "the core must not" in p for p in problems)
    sources["cnnbench/commands/scale.py"] = "from cnnbench.cli import console\n"
    assert find_cycle(module_level_graph(package_imports(sources))) == [
        "cnnbench.cli",
        "cnnbench.commands.scale",
        "cnnbench.cli",
    ]


def test_nothing_imports_the_cli_and_commands_share_only_common() -> None:
    problems = layering_violations(package_imports(package_sources()))
    assert not problems, "\n".join(problems)


def test_no_import_cycle_at_module_level() -> None:
    graph = module_level_graph(package_imports(package_sources()))
    for name in COMMANDS:  # cli.py imports these by name from COMMANDS, which ast cannot see
        graph.setdefault(CLI, set()).add(f"{COMMANDS_PACKAGE}.{name}")
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
