"""Pruning old model artifacts keeps the newest N and whatever an MLflow alias points to."""

import pytest

from deepfeed.core.data import retention
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.audit import AuditLedger


def _version(store, name, payload: bytes, **counts) -> str:
    with store.new_version(name, counts) as version:
        (version.path / "weights.bin").write_bytes(payload)
    return version.handle.version


@pytest.fixture
def registry(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("deepfeed")
    return client


def _register(client, artifact_version: str, *aliases: str) -> str:
    version = client.create_model_version(
        "deepfeed", source=f"/models/{artifact_version}", tags={"artifact_version": artifact_version}
    ).version
    for alias in aliases:
        client.set_registered_model_alias("deepfeed", alias, version)
    return str(version)


def test_prune_keeps_recent_and_aliased_versions_and_their_compressed_builds(tmp_path, registry):
    store = ArtifactStore(tmp_path / "artifacts")
    trained = [_version(store, "finetuned_model", b"w" * 1000) for _ in range(5)]
    compressed = [_version(store, "compressed_model", b"c" * 300, source_version=t) for t in trained]
    incremental = [_version(store, "incremental_model", b"i" * 10) for _ in range(2)]
    clean = [_version(store, "clean_corpus", b"d") for _ in range(5)]
    _register(registry, trained[0], "previous")  # the rollback target, oldest of all
    champion = _register(registry, trained[1], "champion")
    _register(registry, trained[2])  # registered, no alias: not protected

    with pytest.raises(ValueError, match="at least the newest"):
        retention.plan(store, 0, [])
    planned, protected = retention.prune(store, registry, "deepfeed", keep_last=2, dry_run=True)
    assert protected == {trained[0]: "previous (v1)", trained[1]: f"champion (v{champion})"}
    assert [(d.name, d.version) for d in planned] == [
        ("finetuned_model", trained[2]),
        ("compressed_model", compressed[2]),
    ]
    assert planned[0].bytes >= 1000 and planned[1].bytes >= 300  # payload plus manifest
    assert store.versions("finetuned_model") == trained  # a dry run deletes nothing

    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    done, _ = retention.prune(store, registry, "deepfeed", keep_last=2, ledger=ledger)
    assert done == planned
    assert store.versions("finetuned_model") == [trained[0], trained[1], trained[3], trained[4]]
    assert store.versions("compressed_model") == [compressed[0], compressed[1], compressed[3], compressed[4]]
    assert (
        store.versions("incremental_model") == incremental and store.versions("clean_corpus") == clean
    )  # data is never pruned
    assert not [p for p in (tmp_path / "artifacts" / "finetuned_model").iterdir() if p.name.startswith(".pruning")]
    assert [e["record_id"] for e in ledger.iter_entries(action="pruned")] == [
        f"finetuned_model/{trained[2]}",
        f"compressed_model/{compressed[2]}",
    ]
    assert ledger.verify().ok
    tags = {str(v.version): v.tags for v in registry.search_model_versions("name='deepfeed'")}
    assert tags["3"].get("artifact_deleted") == "true" and "artifact_deleted" not in tags[champion]
    # Moving the champion alias on makes its old version prunable next time.
    registry.set_registered_model_alias("deepfeed", "champion", _register(registry, trained[4]))
    again, _ = retention.prune(store, registry, "deepfeed", keep_last=2, dry_run=True)
    assert [(d.name, d.version) for d in again] == [
        ("finetuned_model", trained[1]),
        ("compressed_model", compressed[1]),
    ]


def test_an_empty_registry_protects_nothing_but_the_newest(tmp_path):
    from mlflow import MlflowClient

    store = ArtifactStore(tmp_path / "artifacts")
    trained = [_version(store, "finetuned_model", b"w") for _ in range(3)]
    done, protected = retention.prune(
        store, MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"), "deepfeed", keep_last=1
    )
    assert (
        protected == {}
        and [d.version for d in done] == trained[:2]
        and store.versions("finetuned_model") == trained[2:]
    )
