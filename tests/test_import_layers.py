"""The package's layers, read from the source: core/ is plain Python under everything else,
and nothing but the code location's definitions imports an asset module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepfeed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


def _offenders(files: list[Path], forbidden) -> dict[str, list[str]]:
    bad = {}
    for path in files:
        hits = sorted(name for name in imports_of(path) if forbidden(name))
        if hits:
            bad[str(path.relative_to(PACKAGE.parent))] = hits
    return bad


def test_core_never_imports_dagster_or_the_layers_above_it():
    above = ("deepfeed.assets", "deepfeed.resources", "deepfeed.sensors", "deepfeed.pipelines", "deepfeed.serve")
    # dagster_pipes (a separate, dependency-free package) is the Pipes entry point of torchrun steps.
    assert _offenders(_files("core"), lambda n: n == "dagster" or n.startswith("dagster.") or n.startswith(above)) == {}


@pytest.mark.parametrize("layer", ["sensors", "serve", "pipelines", "resources", "core"])
def test_no_layer_below_the_definitions_imports_an_asset_module(layer):
    assert _offenders(_files(layer), lambda n: n.startswith("deepfeed.assets")) == {}


def test_commands_never_import_an_asset_module():
    commands = [PACKAGE / "cli.py", PACKAGE / "audit_cli.py"]
    assert _offenders(commands, lambda n: n.startswith("deepfeed.assets")) == {}


def test_no_import_cycle_at_module_level():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {n for n in imports_of(path, top_level_only=True) if n.startswith("deepfeed.") and n != name}
    # A name imported from a package may be a module of it: `from deepfeed.core import x`.
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def imported_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from module import name` anywhere in a file (function-local
    imports included), relative modules resolved; `import module` gives (module, "")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.extend((module, alias.name) for alias in node.names)
    return found


def _deepfeed_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the deepfeed modules it imports, at any depth of the file: a function-local
    import still makes the two modules depend on each other, it only defers the failure."""
    modules = _deepfeed_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, imported in imported_names(path):
            # `from package import module` depends on the module, not only on the package.
            target = f"{module}.{imported}" if f"{module}.{imported}" in modules else module
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
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
                components.append(sorted(component))
    return components


def test_strongly_connected_components_finds_a_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(c for c in strongly_connected_components(graph) if len(c) > 1) == [["a", "b", "c"]]


def test_no_import_cycle_counting_function_local_imports():
    cycles = [c for c in strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_no_module_imports_a_private_name_of_another_deepfeed_module():
    modules = _deepfeed_modules()
    bad = []
    for name, path in modules.items():
        for module, imported in imported_names(path):
            if module.startswith("deepfeed") and imported.startswith("_") and module != name:
                if f"{module}.{imported}" not in modules:  # a private module file is not a private name
                    bad.append(f"{name}: {module}.{imported}")
    assert bad == []


def test_core_never_imports_the_operator_tools():
    assert _offenders(_files("core"), lambda n: n.startswith("deepfeed.tools")) == {}
