"""The house rules that code review alone would miss: no import circle among camcli's modules
(function-level imports included), a command layer of small modules, and only that layer talks
to the terminal."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "camcli"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The camcli modules ``path`` imports (a name imported from a module counts as its module)."""
    name, found = _module(path), set()
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1] + ([module] if module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {t for t in found if t.startswith("camcli.") or t == "camcli"}


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for target in _imports(path):
            while target not in files and "." in target:
                target = target.rpartition(".")[0]
            if target in files and target not in (name, "camcli"):  # the package's lazy API names are not imports at load
                targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first walk (the path from the first module met again)."""
    found, state, path = [], {}, []

    def visit(v: str) -> None:
        state[v] = "open"
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                found.append(path[path.index(w):] + [w])
            elif w not in state:
                visit(w)
        path.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)
    return found


def test_the_walk_finds_a_circle_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 30 and "camcli.cli.app" in graph["camcli.cli.images"]  # the graph is read, not empty
    assert circles(graph) == []


def test_the_command_layer_is_small_modules_and_alone_on_the_terminal():
    for path in (PACKAGE / "cli").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path
    talkers = {_module(p) for p in PACKAGE.rglob("*.py")
               if any(t.split(".")[0] in ("typer", "rich") for t in _third_party(p))}
    assert talkers and all(m.startswith("camcli.cli") for m in talkers), talkers


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names
