"""evaluation_report, its checks and champion_model on a tiny Llama: promotion with an
audit entry, and a gate that fails closed when the champion cannot be loaded."""

import json

import dagster as dg

from deepfeed.core.loop.registry import CHAMPION
from deepfeed.core.platform.audit import AuditLedger
from tests.dagster.test_chain import materialize, resources

CHAIN = [
    "raw_corpus",
    "clean_corpus",
    "augmented_corpus",
    "base_model",
    "finetuned_model",
    "candidate_model",
    "compressed_model",
    "evaluation_report",
    "champion_model",
]
EVAL = ["evaluation_report", "champion_model"]


def _check(result, name):
    return next(e for e in result.get_asset_check_evaluations() if e.asset_check_key.name == name)


def test_promotion_is_gated_audited_and_fails_closed(deepfeed_env, tiny_llama, tiny_corpus, instance):  # noqa: F811
    first = materialize(CHAIN, deepfeed_env, tiny_llama, tiny_corpus, instance, raise_on_error=False)
    # No champion yet: the base model plays its role, and 4 steps on a random tiny model do
    # not make its answers better, so there is no first champion.
    refused = _check(first, "promotion_gate")
    assert not refused.passed and "beats_base_token_f1" in refused.description
    assert "not shown to beat the base model" in refused.description
    report = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")).asset_materialization
    markdown = report.metadata["report"].value
    assert "KEEP the champion" in markdown and "Gated against the base" in markdown
    assert "## Data version and lineage" in markdown
    assert "data:image/png;base64," in markdown and "## Paired differences" in markdown
    assert report.metadata["did_feeding_help"].value.startswith("Not shown that feeding helped")
    assert {"token_f1", "bleu4", "chrf", "perplexity", "toxicity_pass_rate"} <= set(report.metadata)
    # the compression engineer's blocking check, read from this run's records
    assert "✅ **compression_gate**: passed (compression_quality_gate passed)" in markdown
    folder = report.metadata["report_html"].value.rsplit("/", 1)[0]
    summary = json.loads(open(f"{folder}/metrics.json").read())
    assert [c["name"] for c in summary["candidates"]][:3] == ["base", "challenger", "torch_int8"]
    assert summary["candidates"][0]["error"] is None and "challenger vs base" in summary["comparisons"]
    overlap = _check(first, "eval_set_disjoint_from_training")
    assert overlap.passed or overlap.severity == dg.AssetCheckSeverity.WARN  # ids and exact copies never leak

    mlflow = resources(deepfeed_env, tiny_llama)["mlflow"]
    client = mlflow.client()
    assert mlflow.version_by_alias(CHAMPION) is None
    experiment = client.get_experiment_by_name("deepfeed").experiment_id
    run = client.search_runs([experiment], filter_string=f"tags.dagster_run_id = '{first.run_id}'")[0]
    logged = {"eval_base_token_f1", "eval_challenger_token_f1", "eval_challenger_vs_base_token_f1_diff_ci_low"}
    assert logged <= set(run.data.metrics)

    # With a champion (here the base checkpoint, registered), the challenger is gated
    # against it: no key metric's interval wholly below -3% passes. The base model's
    # scores are reused from the first evaluation.
    seeded = client.create_model_version("deepfeed", source=str(tiny_llama))
    client.set_registered_model_alias("deepfeed", CHAMPION, seeded.version)
    # ab_test: false promotes a gated candidate directly (the default makes it the A/B
    # challenger first: tests/dagster/test_chain.py).
    promoted_run = materialize(
        EVAL,
        deepfeed_env,
        tiny_llama,
        tiny_corpus,
        instance,
        raise_on_error=False,
        champion_model={"config": {"ab_test": False}},
    )
    assert _check(promoted_run, "promotion_gate").passed and promoted_run.success
    report = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")).asset_materialization
    markdown = report.metadata["report"].value
    assert "PROMOTE" in markdown and "Gated against the champion" in markdown and "(scores reused)" in markdown
    assert not any(line.startswith("| base: ") for line in markdown.splitlines())  # no time spent on the base again
    champion = mlflow.version_by_alias(CHAMPION)
    assert champion.version != seeded.version
    promoted = [
        e for e in AuditLedger(deepfeed_env / "audit" / "ledger.jsonl").iter_entries() if e["action"] == "promoted"
    ]
    assert [e["record_id"] for e in promoted] == [f"model:deepfeed:v{champion.version}"]

    # A champion whose checkpoint is gone must not let the next challenger through.
    client = mlflow.client()
    ghost = client.create_model_version("deepfeed", source=str(deepfeed_env / "deleted-checkpoint"))
    client.set_registered_model_alias("deepfeed", CHAMPION, ghost.version)
    second = materialize(EVAL, deepfeed_env, tiny_llama, tiny_corpus, instance, raise_on_error=False)
    gate = _check(second, "promotion_gate")
    assert not gate.passed and "champion: could not be re-scored" in gate.description
    assert not second.success  # the blocking check stops champion_model
    assert mlflow.version_by_alias(CHAMPION).version == ghost.version
    assert (
        len(
            [
                e
                for e in AuditLedger(deepfeed_env / "audit" / "ledger.jsonl").iter_entries()
                if e["action"] == "promoted"
            ]
        )
        == 1
    )
    failed_report = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")).asset_materialization
    assert "KEEP the champion" in failed_report.metadata["report"].value
