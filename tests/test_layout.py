"""The package's shape: no import circles between semgap's modules, and no module too long to read in one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "semgap"
MAX_MODULE_LINES = 420  # "a few hundred lines": a module past this is doing more than one job
MAX_TOP_LEVEL_MODULES = 10


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the semgap modules it imports anywhere: at its top, inside a function (run later, but still
    a dependency) or under `if TYPE_CHECKING:` (a dependency of its types). A circle through any of them is
    one module that cannot be read, tested or moved without the other."""
    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from package import submodule` needs the submodule; any other name needs the module itself
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = resolve(target) if target.startswith("semgap") else None
                if resolved and resolved != name:
                    edges.add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert cycles(import_graph(module_files())) == []


def test_the_cycle_finder_sees_circles_through_a_package_a_late_import_and_type_checking(tmp_path):
    package = tmp_path / "semgap"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from semgap.sub import b\n")
    (package / "a.py").write_text("from semgap.sub import b\n")
    (package / "sub" / "b.py").write_text("from semgap import c\n")
    (package / "c.py").write_text("import semgap.a\n")
    (package / "late.py").write_text("import semgap.typed\ndef f():\n    from semgap import late_too\n")
    (package / "late_too.py").write_text("import semgap.late\n")
    (package / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from semgap import late\n")
    graph = import_graph(module_files(package))
    assert cycles(graph) == [["semgap.a", "semgap.c", "semgap.sub.b"], ["semgap.late", "semgap.late_too", "semgap.typed"]]


def test_every_module_reads_in_one_sitting():
    long = {str(path.relative_to(PACKAGE.parent)): lines for path in module_files().values()
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_top_level_names_the_architecture():
    top = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert {"bench", "client", "server", "wire", "model", "techniques", "analysis", "report"} <= packages
