"""The asset page's `path` row is the artifact folder; handles are stored as JSON and load back."""

import json
import pickle

import dagster as dg

from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.resources.handle_io import ArtifactHandleIOManager

PARTS = dg.StaticPartitionsDefinition(["a", "b"])


def _handle(name, folder):
    return ArtifactHandle(name, "v1", str(folder), "ab" * 32, {"kept": 3})


def test_handles_are_json_and_the_path_row_is_the_artifact(tmp_path):
    storage = tmp_path / "storage"

    @dg.asset(partitions_def=PARTS)
    def raw(context: dg.AssetExecutionContext) -> ArtifactHandle:
        return _handle("raw", tmp_path / "artifacts" / "raw" / context.partition_key)

    @dg.asset(ins={"raw": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
    def clean(raw: dict[str, ArtifactHandle]) -> ArtifactHandle:
        assert sorted(raw) == ["a", "b"] and all(isinstance(h, ArtifactHandle) for h in raw.values())
        return _handle("clean", tmp_path / "artifacts" / "clean")

    resources = {"io_manager": ArtifactHandleIOManager(base_dir=str(storage))}
    with dg.instance_for_test() as instance:
        for key in PARTS.get_partition_keys():
            assert dg.materialize([raw], partition_key=key, resources=resources, instance=instance).success
        result = dg.materialize([raw.to_source_asset(), clean], resources=resources, instance=instance)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("clean"))
    metadata = event.asset_materialization.metadata
    assert metadata["path"] == dg.MetadataValue.path(str(tmp_path / "artifacts" / "clean"))
    stored = json.loads((storage / "clean.json").read_text())
    assert stored["artifact_handle"]["uri"] == str(tmp_path / "artifacts" / "clean")
    assert (storage / "raw" / "a.json").exists()


def test_a_handle_pickled_before_the_switch_still_loads(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    old = _handle("raw", tmp_path / "old")
    (storage / "raw").write_bytes(pickle.dumps(old))  # what the default filesystem IO manager wrote

    @dg.asset
    def clean(raw: ArtifactHandle) -> ArtifactHandle:
        assert raw == old
        return _handle("clean", tmp_path / "clean")

    raw_source = dg.SourceAsset("raw")
    resources = {"io_manager": ArtifactHandleIOManager(base_dir=str(storage))}
    with dg.instance_for_test() as instance:
        assert dg.materialize([raw_source, clean], resources=resources, instance=instance).success


def test_a_handle_stored_before_the_home_moved_names_the_new_place(tmp_path, monkeypatch):
    old_home, new_home = tmp_path / "old", tmp_path / "new"
    monkeypatch.setenv("DEEPFEED_HOME", str(old_home))
    storage = new_home / "dagster" / "storage"
    resources = {"io_manager": ArtifactHandleIOManager(base_dir=str(storage))}

    @dg.asset
    def raw() -> ArtifactHandle:
        return _handle("raw", old_home / "artifacts" / "raw" / "v1")

    seen = []

    @dg.asset
    def clean(raw: ArtifactHandle) -> ArtifactHandle:
        seen.append(raw.uri)
        return _handle("clean", tmp_path / "elsewhere")  # outside the home: left as it is

    with dg.instance_for_test() as instance:
        assert dg.materialize([raw], resources=resources, instance=instance).success
        monkeypatch.setenv("DEEPFEED_HOME", str(new_home))  # the home was moved
        assert dg.materialize([raw.to_source_asset(), clean], resources=resources, instance=instance).success
    assert seen == [str(new_home / "artifacts" / "raw" / "v1")]
    assert json.loads((storage / "clean.json").read_text())["artifact_handle"]["uri"] == str(tmp_path / "elsewhere")


def test_a_planted_pickle_is_refused_not_run(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    (storage / "raw").write_bytes(pickle.dumps(Planted()))

    @dg.asset
    def clean(raw: ArtifactHandle) -> ArtifactHandle:
        return _handle("clean", tmp_path / "clean")

    resources = {"io_manager": ArtifactHandleIOManager(base_dir=str(storage))}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [dg.SourceAsset("raw"), clean], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success and not marker.exists()
