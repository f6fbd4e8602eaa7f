"""augmented_corpus as a Dagster asset: metadata, provenance columns and bad config."""

import json

import dagster as dg

from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.tables import read_table
from tests.dagster.test_chain import _failure_message, materialize

SLICE = ["raw_corpus", "clean_corpus", "augmented_corpus"]


def test_augmented_corpus_has_provenance_and_rich_metadata(deepfeed_env, tiny_llama, tiny_corpus, instance):
    config = {
        "augmented_corpus": {
            "config": {
                "synonym_ratio": 1.0,
                "structural_ratio": 1.0,
                "fgsm_ratio": 1.0,
                "fgsm_max_modification_rate": 0.5,
                "similarity_threshold": 0.5,
                "synonym_lm_rank": True,
                "synonym_variants": 4,
                # The tiny random LM's log-probabilities say nothing about meaning: here it
                # would refuse every English FGSM child; this test is about provenance.
                "meaning_lm_everywhere": False,
            }
        }
    }
    assert materialize(SLICE, deepfeed_env, tiny_llama, tiny_corpus, instance, **config).success
    event = instance.get_latest_materialization_event(dg.AssetKey("augmented_corpus")).asset_materialization
    for key in ("techniques", "similarity", "examples", "not_augmented", "path", "audit_entries", "audit_head"):
        assert key in event.metadata, key
    store = ArtifactStore(deepfeed_env / "artifacts")
    records = read_table(store.local_path(store.latest("augmented_corpus")) / "records.parquet")
    originals = {r["record_id"] for r in records if r["technique"] == "original"}
    children = [r for r in records if r["technique"] != "original"]
    assert {"contextual_synonym", "fgsm"} <= {c["technique"] for c in children}
    assert all(c["parent_id"] in originals and c["split"] == "train" for c in children)
    # MiniLM's cosine is recorded only where MiniLM can read the text (not Chinese).
    assert all(c["similarity"] is not None for c in children if c["lang"] == "en" and c["technique"] != "fgsm")
    # Every child is in the audit ledger, published with the version.
    from deepfeed.core.platform.audit import AuditLedger

    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    logged = {e["record_id"]: e for e in ledger.iter_entries(stage="augmented_corpus", action="augmented")}
    assert set(logged) == {c["record_id"] for c in children} and event.metadata["audit_entries"].value == len(children)
    assert all(logged[c["record_id"]]["extra"]["parent_id"] == c["parent_id"] for c in children)
    assert all(isinstance(json.loads(r["aug_skipped"]), list) for r in records)
    synonym_params = [json.loads(c["aug_params"]) for c in children if c["technique"] == "contextual_synonym"]
    assert synonym_params and all(p["ranked_by"] == "causal_lm" for p in synonym_params)
    # Only records with a choice between variants are ranked; four variants leave some.
    assert [p["lm_logprob"] for p in synonym_params if "lm_logprob" in p] and all(
        p.get("lm_logprob", -1.0) < 0 for p in synonym_params
    )


def test_bad_config_names_the_field_and_keeps_the_last_good_corpus(deepfeed_env, tiny_llama, tiny_corpus, instance):
    assert materialize(
        SLICE,
        deepfeed_env,
        tiny_llama,
        tiny_corpus,
        instance,
        augmented_corpus={"config": {"fgsm_ratio": 0.0, "synonym_ratio": 0.0}},
    ).success
    store = ArtifactStore(deepfeed_env / "artifacts")
    good = store.latest("augmented_corpus")
    from deepfeed.core.platform.audit import AuditLedger

    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    head = ledger.head()
    for bad, field in [
        ({"fgsm_epsilon": 0.9}, "fgsm_epsilon"),
        ({"structural_ratio": 2.0}, "structural_ratio"),
        ({"masked_lm_path": "/nope"}, "masked_lm_path"),
        ({"masked_lm_path": "/nope", "synonym_lm_rank": True}, "synonym_lm_rank"),
    ]:
        result = materialize(
            ["augmented_corpus"],
            deepfeed_env,
            tiny_llama,
            tiny_corpus,
            instance,
            raise_on_error=False,
            augmented_corpus={"config": bad},
        )
        assert not result.success
        assert f"augmented_corpus.config.{field}" in _failure_message(result)
        assert store.latest("augmented_corpus").version == good.version
        assert ledger.head() == head  # a failed run writes nothing to the ledger
