"""The asset graph on tiny models: each asset alone, the whole chain, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from deepfeed.assets import ASSET_MODULES
from deepfeed.assets.corpus import corpus_sources
from deepfeed.core.data.ingest import discover_sources
from deepfeed.core.loop.registry import CHALLENGER, CHAMPION, PREVIOUS
from deepfeed.definitions import defs
from deepfeed.pipelines.presets import TEST_CHAIN
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource

ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
CHECKS = dg.load_asset_checks_from_modules(ASSET_MODULES)
FAST = {"ops": TEST_CHAIN}


def resources(home: Path, base_model: Path, artifact_root: Path | None = None) -> dict:
    return {
        "artifact_store": ArtifactStoreResource(root=str(artifact_root or home / "artifacts")),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_location=str(home / "mlartifacts")
        ),
        "model_source": ModelSourceResource(base_model_path=str(base_model)),
        "locations": LocationsResource(home=str(home)),
    }


def corpus_config(corpus: Path) -> dict:
    return {"raw_corpus": {"config": {"corpus_path": str(corpus)}}}


def run_config(corpus: Path, selection="*", **extra) -> dict:
    """Config for the selected assets only (Dagster rejects config of unselected ops)."""
    ops = {**FAST["ops"], **corpus_config(corpus), **extra}
    if selection != "*":
        ops = {k: v for k, v in ops.items() if k in selection}
    return {"ops": ops}


def ingest(home, base_model, corpus, instance, sources=None, artifact_root=None, raise_on_error=True) -> dict:
    """Register the sources under `corpus` (or the given ones) and materialize their raw_corpus
    partitions, one run each, as corpus_source_sensor does; source -> run result."""
    sources = list(discover_sources(corpus)) if sources is None else sources
    instance.add_dynamic_partitions(corpus_sources.name, sources)
    return {
        source: dg.materialize(
            [*ASSETS, *CHECKS],
            selection=["raw_corpus"],
            partition_key=source,
            resources=resources(home, base_model, artifact_root),
            run_config=run_config(corpus, ["raw_corpus"]),
            instance=instance,
            raise_on_error=raise_on_error,
        )
        for source in sources
    }


def materialize(selection, home, base_model, corpus, instance, artifact_root=None, raise_on_error=True, **extra):
    """The selection in one run; a selected raw_corpus is first ingested per source (see
    `ingest`), and only raw_corpus selected returns the last source's run."""
    names = [k.to_user_string() for a in ASSETS for k in a.keys] if selection == "*" else list(selection)
    if "raw_corpus" in names:
        raw = ingest(home, base_model, corpus, instance, artifact_root=artifact_root, raise_on_error=raise_on_error)
        names.remove("raw_corpus")
        if not names or not all(r.success for r in raw.values()):
            return list(raw.values())[-1]
    return dg.materialize(
        [*ASSETS, *CHECKS],
        selection=names,
        resources=resources(home, base_model, artifact_root),
        run_config=run_config(corpus, names, **extra),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def test_definitions_load_and_validate():
    repository = defs.get_repository_def()
    keys = {k.to_user_string() for k in repository.asset_graph.get_all_asset_keys()}
    assert keys == {
        "raw_corpus",
        "clean_corpus",
        "augmented_corpus",
        "base_model",
        "finetuned_model",
        "candidate_model",
        "compressed_model",
        "evaluation_report",
        "champion_model",
        "drift_report",
        "ab_test_report",
        "incremental_model",
    }
    assert defs.resolve_job_def("full_chain_job")
    schedule = defs.resolve_schedule_def("monthly_full_retrain")
    assert schedule.cron_schedule == "0 2 1 * *"


def test_monthly_schedule_fires_on_the_first():
    import datetime as dt

    schedule = defs.resolve_schedule_def("monthly_full_retrain")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 12, 1, 2, tzinfo=dt.timezone.utc))
    result = schedule.evaluate_tick(context)
    assert len(result.run_requests) == 1 and schedule.job_name == "full_chain_job"


def test_each_asset_materializes_alone(deepfeed_env, tiny_llama, tiny_corpus, instance):
    for key in [
        "raw_corpus",
        "clean_corpus",
        "augmented_corpus",
        "base_model",
        "finetuned_model",
        "candidate_model",
        "compressed_model",
        "evaluation_report",
        "champion_model",
    ]:
        if key == "finetuned_model":
            _an_mlflow_server_with_local_checkpoints_fails_before_training(deepfeed_env, tiny_llama, instance)
        gated = key == "evaluation_report"
        result = materialize([key], deepfeed_env, tiny_llama, tiny_corpus, instance, raise_on_error=not gated)
        # 4 steps on a random tiny model do not beat its base: the blocking first-champion gate refuses.
        failed = [
            e.asset_check_key.name
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]
        assert result.success or failed == ["promotion_gate"]
        # champion_model runs and moves nothing: that gate refused (the alias is untouched).
        assert result.asset_materializations_for_node(key) or key == "champion_model", key
    assert resources(deepfeed_env, tiny_llama)["mlflow"].version_by_alias(CHAMPION) is None
    raw = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization
    assert raw.metadata["quarantined"].value == 4
    assert raw.metadata["kept"].value == 48 + 2 + 3


def _an_mlflow_server_with_local_checkpoints_fails_before_training(home, base_model, instance):
    server = {**resources(home, base_model), "mlflow": MlflowResource(tracking_uri="http://127.0.0.1:9")}
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=["finetuned_model"],
        resources=server,
        instance=instance,
        run_config={"ops": {"finetuned_model": FAST["ops"]["finetuned_model"]}},
        raise_on_error=False,
    )
    message = _failure_message(result)
    assert "finetuned_model.mlflow" in message and "DEEPFEED_ARTIFACT_ROOT" in message
    assert not (home / "artifacts" / "finetuned_model").exists()  # failed before training wrote anything


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_deepseek"])
def test_whole_chain_logs_to_mlflow_and_promotes(fixture, request, deepfeed_env, tiny_corpus, instance):
    base_model = request.getfixturevalue(fixture)
    result = materialize("*", deepfeed_env, base_model, tiny_corpus, instance, raise_on_error=False)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    # The 3C and k-anonymity checks of the corpus (tests/dagster/test_corpus.py tests them);
    # coverage only warns, and the tiny corpus has hardly any long tail.
    corpus_checks = ("clean_corpus_consistency", "clean_corpus_cleanliness", "clean_corpus_k_anonymity")
    assert {name: checks.pop(name) for name in corpus_checks} == dict.fromkeys(corpus_checks, True)
    checks.pop("clean_corpus_coverage")
    # Held-out records never reach training by id or exact copy (that blocks); near-duplicates
    # across the split only warn (tests/dagster/test_evaluation_assets.py).
    checks.pop("eval_set_disjoint_from_training")
    overlap = next(
        e for e in result.get_asset_check_evaluations() if e.asset_check_key.name == "eval_set_disjoint_from_training"
    )
    assert overlap.passed or overlap.severity == dg.AssetCheckSeverity.WARN
    # No champion yet, and a 4-step fine-tune of a random tiny model is not shown to beat its
    # base on token F1: the first-champion gate refuses (docs/evaluation-gates.md); the failed
    # gate leaves the candidate without an alias.
    assert checks == {
        "clean_corpus_accounting": True,
        "promotion_gate": False,
        "compression_quality_gate": True,
        "failed_gate_revokes_challenger": True,
    }

    mlflow = resources(deepfeed_env, base_model)["mlflow"]
    client = mlflow.client()
    experiment = client.get_experiment_by_name("deepfeed")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert {"eval_challenger_perplexity", "eval_base_perplexity", "train_final_loss", "corpus_dp_records"} <= set(
        run.data.metrics
    )
    assert "corpus_cleaned" not in run.data.metrics  # exact corpus counts stay out of MLflow (docs/privacy.md)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert mlflow.version_by_alias(CHAMPION) is None
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation_report")}
    assert "evaluation_report/report.html" in artifacts

    # With a champion (the base checkpoint, registered), a second run is gated against it,
    # re-scored on the same held-out records.
    champion = client.create_model_version("deepfeed", source=str(base_model))
    client.set_registered_model_alias("deepfeed", CHAMPION, champion.version)
    second = materialize("*", deepfeed_env, base_model, tiny_corpus, instance, raise_on_error=False)
    evaluations = second.get_asset_check_evaluations()
    blocked = [
        e.asset_check_key.name for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert blocked in ([], ["promotion_gate"])
    report = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")).asset_materialization
    assert "champion" in report.metadata["report"].value
    candidate = report.metadata["challenger_version"].value
    assert candidate != str(champion.version)
    # With a champion in place a passed gate makes the candidate the A/B challenger, never the
    # champion directly; a failed gate leaves it without any alias.
    assert mlflow.version_by_alias(CHAMPION).version == champion.version and mlflow.version_by_alias(PREVIOUS) is None
    challenger = mlflow.version_by_alias(CHALLENGER)
    if report.metadata["gate_passed"].value:
        assert str(challenger.version) == candidate and challenger.tags["deepfeed.stage"] == "challenger"
    else:
        assert challenger is None


def _failure_message(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a step failure"
    return failures[0].step_failure_data.error.to_string()


def test_missing_and_empty_corpus_fail_with_the_field_name(deepfeed_env, tiny_llama, tmp_path, instance):
    [result] = ingest(
        deepfeed_env, tiny_llama, tmp_path / "nope", instance, sources=["_root"], raise_on_error=False
    ).values()
    assert not result.success
    assert "raw_corpus.config.corpus_path" in _failure_message(result) and "does not exist" in _failure_message(result)
    empty = tmp_path / "empty"
    (empty / "clinic").mkdir(parents=True)
    (empty / "clinic" / "header-only.csv").write_text("text,tag\n")
    results = ingest(deepfeed_env, tiny_llama, empty, instance, sources=["clinic", "gone"], raise_on_error=False)
    assert "source 'clinic'" in _failure_message(results["clinic"]) and "holds no records" in _failure_message(
        results["clinic"]
    )
    assert "partition 'gone'" in _failure_message(results["gone"]) and "sources there: clinic" in _failure_message(
        results["gone"]
    )
    # clean_corpus refuses to train on part of the data: every registered source must have a version.
    result = materialize(["clean_corpus"], deepfeed_env, tiny_llama, empty, instance, raise_on_error=False)
    assert "never materialized: _root, clinic, gone" in _failure_message(result)


def test_bad_base_model_fails_and_keeps_earlier_artifacts(deepfeed_env, tiny_llama, tiny_corpus, tmp_path, instance):
    assert materialize(["base_model"], deepfeed_env, tiny_llama, tiny_corpus, instance).success
    before = (
        instance.get_latest_materialization_event(dg.AssetKey("base_model"))
        .asset_materialization.metadata["content_hash"]
        .value
    )
    not_lm = tmp_path / "encoder"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    for path, expected in [(tmp_path / "missing", "does not exist"), (not_lm, "not a causal LM")]:
        result = materialize(["base_model"], deepfeed_env, path, tiny_corpus, instance, raise_on_error=False)
        message = _failure_message(result)
        assert "model_source.base_model_path" in message and expected in message
    after = (
        instance.get_latest_materialization_event(dg.AssetKey("base_model"))
        .asset_materialization.metadata["content_hash"]
        .value
    )
    assert before == after


def test_unwritable_artifact_root_is_named(deepfeed_env, tiny_llama, tiny_corpus, tmp_path, instance):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = materialize(
        ["raw_corpus"],
        deepfeed_env,
        tiny_llama,
        tiny_corpus,
        instance,
        artifact_root=blocker / "root",
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.is_failure]
    text = " ".join(
        str(e.event_specific_data) + (e.message or "")
        for e in result.all_events
        if e.is_failure or e.event_type_value == "RUN_FAILURE"
    )
    assert failures and "ArtifactStoreResource.root" in text and "not writable" in text


def test_cli_materialize_runs_the_chain(deepfeed_env, tiny_llama, tiny_corpus, tmp_path):
    """The path CI users take: `dagster asset materialize` against the code location."""
    env = {**os.environ, "DEEPFEED_BASE_MODEL": str(tiny_llama), "DEEPFEED_CORPUS": str(tiny_corpus)}
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(FAST))
    # The sources first (what corpus_source_sensor does): one raw_corpus partition each.
    ingested = subprocess.run(
        [sys.executable, "-m", "deepfeed.cli", "ingest"], env=env, capture_output=True, text=True, timeout=600
    )
    assert ingested.returncode == 0 and "_root" in ingested.stdout and "ingested" in ingested.stdout, ingested.stderr[
        -3000:
    ]
    again = subprocess.run(
        [sys.executable, "-m", "deepfeed.cli", "ingest"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "every source is up to date" in again.stdout, again.stderr[-3000:]
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-m",
            "deepfeed.definitions",
            "--select",
            "not key:raw_corpus and not key:incremental_model and not group:monitoring",
            "-c",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stderr + done.stdout
    # A 4-step fine-tune of a random tiny model does not beat its base: the blocking
    # first-champion gate is the one step allowed to stop the run (docs/evaluation-gates.md).
    stopped_by_gate = "Steps failed: ['evaluation_report_promotion_gate']" in output
    assert done.returncode == 0 or stopped_by_gate, done.stderr[-3000:]
    assert "RUN_SUCCESS" in output or stopped_by_gate
    assert list((deepfeed_env / "artifacts" / "evaluation_report").glob("*/report.html"))


def test_demo_run_config_is_valid_for_the_full_chain_job():
    from dagster._core.system_config.objects import ResolvedRunConfig

    from deepfeed.pipelines.presets import DEMO_SIZES

    resolved = ResolvedRunConfig.build(defs.resolve_job_def("full_chain_job"), {"ops": DEMO_SIZES})
    assert resolved.ops["augmented_corpus"].config["fgsm_max_records"] == 4
