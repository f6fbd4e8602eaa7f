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
