"""Code-structure promises (issue 16): no import cycles, and only the CLI imports the CLI.

The import graph is read from the source (``ast``) of every module of ``sddr_pipeline/``,
``plugins/`` (``sddr_pipeline.plugins``) and ``pipelines/`` (``sddr_pipeline.pipelines``).
It counts every static import, function-local lazy ones included, so a lazy import cannot
hide a loop; imports under ``if TYPE_CHECKING:`` never run and are skipped, and dynamic
imports (``importlib.import_module``, registry ``"module:attr"`` strings) are not seen.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"sddr_pipeline": REPO / "sddr_pipeline", "sddr_pipeline.plugins": REPO / "plugins",
            "sddr_pipeline.pipelines": REPO / "pipelines"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "sddr_pipeline" and parts[0] in ("plugins", "pipelines"):
                continue  # the symlinks of a development checkout: mapped above
            is_package = parts[-1] == "__init__"
            out[".".join([package, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(module: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports (the longest known prefix of each name)."""
    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    base = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                origin = f"{parent}.{origin}" if origin else parent
            names.extend(f"{origin}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return {target for target in map(resolve, names) if target and target != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, is_package, set(modules)) for name, (path, is_package) in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_the_packages(graph):
    assert {"sddr_pipeline.cli.main", "sddr_pipeline.plugins.colmap", "sddr_pipeline.pipelines.stage"} <= set(graph)
    assert "sddr_pipeline.devices" in graph["sddr_pipeline.plugins.colmap"]  # a function-local import counts


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_only_the_cli_imports_the_cli(graph):
    offenders = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                       if target.startswith("sddr_pipeline.cli") and not name.startswith("sddr_pipeline.cli"))
    assert offenders == []
