"""Asset metadata in Dagster's own types, and retry policies where retrying helps."""

import dagster as dg

from deepfeed.assets import ASSET_MODULES
from deepfeed.assets.common import COMPUTE_RETRY, counts_table, fail, handle_metadata, tidy
from deepfeed.core.platform.artifacts import ArtifactHandle


def test_counts_are_a_table_largest_first():
    table = counts_table({"too_short": 3, "duplicate": 10, "pii": 1}, key="reason")
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["reason", "records"]
    rows = [(r.data["reason"], r.data["records"]) for r in table.records]
    assert rows == [("duplicate", 10), ("too_short", 3), ("pii", 1)]
    assert counts_table({}).records == []


def test_handle_metadata_points_at_the_artifact_and_rounds():
    handle = ArtifactHandle(
        "finetuned_model",
        "v1",
        "/art/finetuned_model/v1",
        "ab" * 32,
        {"final_loss": 2.718281828, "kept": 12, "note": "x", "nested": {"a": 1}},
    )
    metadata = handle_metadata(handle)
    assert metadata["artifact_path"] == dg.MetadataValue.path("/art/finetuned_model/v1")
    assert metadata["final_loss"] == 2.718 and metadata["kept"] == 12 and "nested" not in metadata
    assert tidy(0.000123456) == 0.0001235 and tidy(7) == 7


def _assets():
    return {
        key.to_user_string(): asset
        for asset in dg.load_assets_from_modules(ASSET_MODULES)
        if isinstance(asset, dg.AssetsDefinition)
        for key in asset.keys
    }


def test_every_chain_asset_retries_and_no_check_does():
    assets = _assets()
    for name in (
        "raw_corpus",
        "clean_corpus",
        "augmented_corpus",
        "base_model",
        "finetuned_model",
        "compressed_model",
        "evaluation_report",
        "champion_model",
    ):
        assert assets[name].op.retry_policy is not None, name
    for check in dg.load_asset_checks_from_modules(ASSET_MODULES):
        assert check.op.retry_policy is None  # a blocking check's verdict is not retried into a pass


def test_a_bad_input_failure_is_not_retried():
    attempts = []

    @dg.asset(retry_policy=COMPUTE_RETRY)
    def flaky():
        attempts.append(1)
        raise fail("flaky.config.x", "must be positive")

    with dg.instance_for_test() as instance:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
    assert not result.success and len(attempts) == 1
