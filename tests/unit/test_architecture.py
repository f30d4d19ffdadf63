"""The house rules: no module over 500 lines, no import cycle between nrnlib modules (module-level
imports; imports under ``TYPE_CHECKING`` or inside functions do not run at import time)."""

import ast
from pathlib import Path

import nrnlib

ROOT = Path(nrnlib.__file__).resolve().parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("nrnlib",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        out[name] = path
    return out


def _module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """nrnlib modules imported at module level (not under ``if TYPE_CHECKING``, not in functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(getattr(node, "body", []) + getattr(node, "orelse", []) + getattr(node, "finalbody", []))

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def test_no_module_over_500_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: c for n, c in long.items() if c > MAX_LINES} == {}


def test_no_import_cycle():
    modules = _modules()
    graph = {n: _module_level_imports(p, n, set(modules)) for n, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of concepts
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
