"""A source whose folder is gone: still trained on (and said so) until retired; retiring
removes it from the next clean_corpus and records it in the audit ledger."""

import shutil

import dagster as dg
import pytest

from deepfeed.cli import main
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.resources import ArtifactStoreResource, LocationsResource
from deepfeed.sensors.corpus import build_corpus_source_sensor, missing_sources, retire_source
from tests.dagster.test_chain import ASSETS, CHECKS, resources
from tests.dagster.test_corpus import _checks, _materialize, _source


@pytest.fixture
def instance(deepfeed_env):
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance


def test_a_vanished_source_is_reported_then_retired_with_an_audit_entry(deepfeed_env, tiny_llama, tmp_path, instance):
    root = tmp_path / "sources"
    _source(root, "clinic", "blood pressure")
    _source(root, "wiki", "train timetables")
    store = ArtifactStore(deepfeed_env / "artifacts")
    sensor = build_corpus_source_sensor(corpus_path=str(root))

    def tick():
        return sensor(
            dg.build_sensor_context(
                instance=instance, resources={"artifact_store": ArtifactStoreResource(root=str(store.root))}
            )
        )

    first = tick()
    instance.add_dynamic_partitions("corpus_source", first.dynamic_partitions_requests[0].partition_keys)
    for request in first.run_requests:
        assert dg.materialize(
            [*ASSETS, *CHECKS],
            selection=["raw_corpus"],
            partition_key=request.partition_key,
            run_config=request.run_config,
            resources=resources(deepfeed_env, tiny_llama),
            instance=instance,
        ).success

    shutil.rmtree(root / "wiki")
    assert missing_sources(instance, str(root)) == ["wiki"]
    skip = tick()
    assert isinstance(skip, dg.SkipReason) and "gone" in skip.skip_message and "wiki" in skip.skip_message
    # Until retired, the vanished source is still cleaned (its last version).
    before = _materialize(
        ["clean_corpus"], deepfeed_env, tiny_llama, root, instance, clean={"coverage_embeddings": False}
    )
    assert _checks(before)["clean_corpus_accounting"].metadata["sources"].value == 2

    ledger = LocationsResource(home=str(deepfeed_env)).audit_ledger()
    with pytest.raises(ValueError, match="reason is required"):
        retire_source(instance, store, "wiki", "  ", ledger)
    with pytest.raises(ValueError, match="'forum' is not a registered corpus source; registered: clinic, wiki"):
        retire_source(instance, store, "forum", "typo", ledger)
    kept_at = retire_source(instance, store, "wiki", "withdrawn by the data owner, ticket 42", ledger)
    assert kept_at == str(store.local_path(store.latest("raw_corpus/wiki")))  # the raw data itself is not deleted
    assert instance.get_dynamic_partitions("corpus_source") == ["clinic"] and missing_sources(instance, str(root)) == []
    entry = list(ledger.iter_entries(action="retired"))[-1]
    assert entry["record_id"] == "wiki" and entry["reason"] == "withdrawn by the data owner, ticket 42"
    assert ledger.verify().ok

    after = _materialize(
        ["clean_corpus"], deepfeed_env, tiny_llama, root, instance, clean={"coverage_embeddings": False}
    )
    assert _checks(after)["clean_corpus_accounting"].passed
    sources = after.asset_materializations_for_node("clean_corpus")[0].metadata["sources"].value
    assert "clinic" in sources and "wiki" not in sources


def test_retire_source_command_names_a_bad_source(deepfeed_env, capsys):
    assert main(["retire-source", "nowhere", "--reason", "test"]) == 2
    assert "'nowhere' is not a registered corpus source" in capsys.readouterr().err
