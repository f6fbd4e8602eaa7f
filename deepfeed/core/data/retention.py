"""Retention of the heavy model artifacts: old versions go, what serves or may serve stays.

Every run of the chain adds a fine-tuned checkpoint (~0.5 GB for SmolLM2) and its
compressed artifacts (~2 GB with the ONNX graphs); a daily incremental stream fills a
disk within weeks. Pruning keeps, per artifact name:

* the newest ``keep_last`` versions;
* every training version that an alias of the MLflow registry points to (champion,
  challenger, previous — the rollback target — or any alias a user set), found through
  the model version's ``artifact_version`` tag;
* the compressed versions built from such a training version (``source_version``):
  they are what serves it.

Data artifacts (corpora, reports) are small and audit-relevant, and are not pruned here.
A version is first renamed to a dot-folder, which every reader ignores, then deleted,
so no reader ever sees half of one.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from deepfeed.core.platform.artifacts import MANIFEST, ArtifactStore

MODEL_ARTIFACTS = ("finetuned_model", "incremental_model", "compressed_model")


@dataclass(frozen=True)
class Doomed:
    name: str
    version: str
    bytes: int


def _manifest_counts(store: ArtifactStore, name: str, version: str) -> dict:
    try:
        return json.loads((store.root / name / version / MANIFEST).read_text()).get("counts") or {}
    except (OSError, ValueError):
        return {}


def _size(store: ArtifactStore, name: str, version: str) -> int:
    folder = store.root / name / version
    if store.is_local:
        return sum(p.stat().st_size for p in Path(str(folder.path)).rglob("*") if p.is_file())
    return int(folder.fs.du(folder.path, total=True))


def plan(
    store: ArtifactStore, keep_last: int, protected: Iterable[str], names: Iterable[str] = MODEL_ARTIFACTS
) -> list[Doomed]:
    """What pruning would delete (oldest first per name); nothing is touched."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: at least the newest version of each artifact must stay")
    protected = {v for v in protected if v}
    doomed = []
    for name in names:
        versions = store.versions(name)
        recent = set(versions[-keep_last:])
        for version in versions:
            if version in recent or version in protected:
                continue
            if _manifest_counts(store, name, version).get("source_version") in protected:
                continue
            doomed.append(Doomed(name, version, _size(store, name, version)))
    return doomed


def delete(store: ArtifactStore, doomed: Doomed) -> None:
    folder = store.root / doomed.name / doomed.version
    hidden = store.root / doomed.name / f".pruning-{doomed.version}-{uuid.uuid4().hex[:6]}"
    if store.is_local:
        Path(str(folder.path)).rename(Path(str(hidden.path)))
        shutil.rmtree(Path(str(hidden.path)))
    else:  # object stores have no atomic rename; the manifest goes first, so readers skip the rest
        (folder / MANIFEST).unlink()
        folder.fs.rm(folder.path, recursive=True)


def registry_protected_versions(client, registered_model: str) -> dict[str, str]:
    """artifact_version -> alias(es), for every alias of the registered model."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(registered_model).aliases or {}
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            return {}
        raise
    protected: dict[str, str] = {}
    for alias, version in aliases.items():
        artifact = client.get_model_version(registered_model, str(version)).tags.get("artifact_version")
        if artifact:
            protected[artifact] = ", ".join(filter(None, [protected.get(artifact), f"{alias} (v{version})"]))
    return protected


def prune(
    store: ArtifactStore,
    client,
    registered_model: str,
    keep_last: int,
    dry_run: bool = False,
    ledger=None,
    names: Iterable[str] = MODEL_ARTIFACTS,
) -> tuple[list[Doomed], dict[str, str]]:
    """(what was — or with dry_run would be — deleted, the versions the registry protects).

    The registry must be readable: without it nothing tells which old version is the
    champion or the rollback target, so pruning refuses rather than guessing. Model
    versions whose checkpoint was deleted get an ``artifact_deleted`` tag, and each
    deletion is one ``pruned`` entry in the audit ledger.
    """
    protected = registry_protected_versions(client, registered_model)
    doomed = plan(store, keep_last, protected, names)
    if dry_run or not doomed:
        return doomed, protected
    from deepfeed.core.platform.audit import AuditEntry

    gone = set()
    for item in doomed:
        delete(store, item)
        gone.add(item.version)
        if ledger is not None:
            ledger.append(
                [
                    AuditEntry(
                        record_id=f"{item.name}/{item.version}",
                        stage="retention",
                        action="pruned",
                        reason=f"older than the newest {keep_last} and not behind a registry alias",
                        run_id="deepfeed prune-artifacts",
                        extra={"bytes": item.bytes},
                    )
                ]
            )
    for version in client.search_model_versions(f"name='{registered_model}'"):
        if (version.tags or {}).get("artifact_version") in gone:
            client.set_model_version_tag(registered_model, version.version, "artifact_deleted", "true")
    return doomed, protected
