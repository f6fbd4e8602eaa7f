"""One owner per concept, read from the source: the shared files of a deepfeed home are
spelled only in core/platform/locations.py, the registry aliases are defined and moved only
in core/loop/registry.py, and the code location loads its assets one way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deepfeed"
LOCATIONS = PACKAGE / "core" / "platform" / "locations.py"
REGISTRY = PACKAGE / "core" / "loop" / "registry.py"
# training_state_dir (core/train) sanitizes a run's key under <home>/training_state;
# Locations.training_state is its only caller (checked below).
TRAINING_STATE_DIR = PACKAGE / "core" / "train" / "incremental.py"
# Folder and file names of the shared locations.
LOCATION_NAMES = {
    "audit",
    "ledger.jsonl",
    "privacy",
    "epsilon_ledger.json",
    "feedback",
    "inference_log",
    "teacher_logits",
    "training_state",
}
ALIAS_MOVES = {"set_registered_model_alias", "delete_registered_model_alias", "get_model_version_by_alias"}


def _sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_location_paths_are_joined_only_in_locations():
    joins = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                names = {
                    side.value
                    for side in (node.left, node.right)
                    if isinstance(side, ast.Constant) and side.value in LOCATION_NAMES
                }
                allowed = path == LOCATIONS or (path == TRAINING_STATE_DIR and names == {"training_state"})
                if names and not allowed:
                    joins.append(f"{_where(path, node)} joins {sorted(names)}")
    assert joins == []


def test_the_ledger_file_name_appears_only_in_locations():
    found = [
        _where(path, node)
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "ledger.jsonl" in node.value
    ]
    assert found and all(where.startswith("deepfeed/core/platform/locations.py:") for where in found), found


def test_training_state_dir_is_called_only_by_locations():
    callers = [
        _where(path, node)
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "training_state_dir"
    ]
    assert callers and all(c.startswith("deepfeed/core/platform/locations.py:") for c in callers), callers


def _assigned_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            leaves = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            names.update(leaf.id for leaf in leaves if isinstance(leaf, ast.Name))
    return names


def test_aliases_are_defined_once():
    owners = {
        alias: sorted(str(p.relative_to(PACKAGE.parent)) for p, t in _sources().items() if alias in _assigned_names(t))
        for alias in ("CHAMPION", "CHALLENGER", "PREVIOUS")
    }
    # core/evaluate/candidates.py names the candidates of an evaluation (champion, challenger,
    # base model), not registry aliases; it moves nothing.
    assert owners == {
        "CHAMPION": ["deepfeed/core/evaluate/candidates.py", "deepfeed/core/loop/registry.py"],
        "CHALLENGER": ["deepfeed/core/evaluate/candidates.py", "deepfeed/core/loop/registry.py"],
        "PREVIOUS": ["deepfeed/core/loop/registry.py"],
    }


def test_only_the_registry_reads_or_moves_aliases():
    calls = [
        f"{_where(path, node)} {node.func.attr}"
        for path, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ALIAS_MOVES
    ]
    assert calls and all(c.startswith("deepfeed/core/loop/registry.py:") for c in calls), calls


def test_promote_and_rollback_are_defined_once():
    defined = {
        name: [
            _where(path, node)
            for path, tree in _sources().items()
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
        ]
        for name in ("promote", "rollback", "set_challenger", "remove_challenger")
    }
    assert {name: [w.split(":")[0] for w in where] for name, where in defined.items()} == {
        name: ["deepfeed/core/loop/registry.py"] for name in defined
    }


def test_registry_audit_entries_have_one_stage():
    tree = ast.parse(REGISTRY.read_text(encoding="utf-8"))
    stages = [
        kw.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AuditEntry"
        for kw in node.keywords
        if kw.arg == "stage"
    ]
    assert len(stages) == 1 and isinstance(stages[0], ast.Name) and stages[0].id == "AUDIT_STAGE"


def test_assets_are_registered_one_way():
    import dagster as dg

    from deepfeed.assets import ALL_ASSET_MODULES
    from deepfeed.definitions import defs

    source = (PACKAGE / "definitions.py").read_text(encoding="utf-8")
    assert source.count("load_assets_from_modules(") == 1 and "deepfeed.assets." not in source
    # Every module under deepfeed/assets that defines an asset is in the list.
    defining = {
        path.stem
        for path in (PACKAGE / "assets").glob("*.py")
        if "@dg.asset(" in path.read_text(encoding="utf-8") or "@dg.multi_asset(" in path.read_text(encoding="utf-8")
    }
    assert defining == {m.__name__.rsplit(".", 1)[1] for m in ALL_ASSET_MODULES}
    loaded = {key for a in dg.load_assets_from_modules(ALL_ASSET_MODULES) for key in a.keys}
    assert loaded == set(defs.resolve_all_asset_keys())
