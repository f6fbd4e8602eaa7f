"""The incremental stream and the knowledge review through Dagster, on tiny models."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest

from deepfeed.assets.incremental import feedback_batches, incremental_model
from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.registry import CHALLENGER, promote
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.train.ewc import fisher_path
from deepfeed.core.train.training import TrainingConfig, fine_tune
from deepfeed.definitions import defs
from deepfeed.pipelines.presets import TEST_COMPRESSION_GATE, TEST_EVALUATION, TEST_INCREMENTAL
from tests.dagster.test_chain import materialize, resources

FEEDBACK = [
    {"prompt": "Where is the station?", "answer": "Walk north two blocks.", "rating": 1.0, "lang": "en"},
    {
        "prompt": "How do I bake bread?",
        "answer": "Buy it.",
        "correction": "Mix flour, water and yeast, then bake.",
        "rating": 0.0,
    },
    {"prompt": "What time is it?", "answer": "It is half past three.", "rating": 0.9},
    {"prompt": "Who wrote the letter?", "answer": "Nobody.", "rating": 0.0},  # bad, no correction: not trained on
]
FAST = TEST_INCREMENTAL


@pytest.fixture
def instance(deepfeed_env):
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance


def seal(home, records) -> str:
    store = FeedbackStore(home / "feedback")
    for record in records:
        store.append(record)
    return store.seal_batch()


def run_incremental(home, base, instance, batch, raise_on_error=True, **config):
    instance.add_dynamic_partitions(feedback_batches.name, [batch])
    return dg.materialize(
        [incremental_model],
        partition_key=batch,
        resources=resources(home, base),
        run_config={"ops": {"incremental_model": {"config": {**FAST, **config}}}},
        instance=instance,
        raise_on_error=raise_on_error,
    )


def registered(mlflow, result):
    meta = result.asset_materializations_for_node("incremental_model")[0].metadata
    return mlflow.client().get_model_version(mlflow.registered_model_name, meta["mlflow_model_version"].value)


def test_incremental_stream_from_base_then_from_champion(deepfeed_env, tiny_llama, tiny_corpus, instance):
    assert materialize(
        ["raw_corpus", "clean_corpus", "augmented_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance
    ).success
    mlflow = resources(deepfeed_env, tiny_llama)["mlflow"]

    first = run_incremental(deepfeed_env, tiny_llama, instance, seal(deepfeed_env, FEEDBACK))
    assert mlflow.version_by_alias(CHALLENGER) is None  # registered, not evaluated: no alias
    version = registered(mlflow, first)
    assert version.tags["stream"] == "incremental" and version.tags["parent_version"] == "none"
    assert version.tags["dagster_run_id"] == first.run_id and len(version.tags["data_hash"]) == 64
    meta = first.asset_materializations_for_node("incremental_model")[0].metadata
    assert meta["feedback_records"].value == 3 and meta["replayed_records"].value == 2  # round(0.5 * 3)
    assert "| 2 |" in meta["replay_loss"].value and "| 4 |" in meta["replay_loss"].value
    client = mlflow.client()
    assert len(client.get_metric_history(version.run_id, "incremental_loss")) == 4
    assert len(client.get_metric_history(version.run_id, "incremental_eval_loss")) == 2
    assert {"incremental_peak_memory_mb", "incremental_tokens_per_second"} <= set(
        client.get_run(version.run_id).data.metrics
    )
    assert not (deepfeed_env / "training_state" / "incremental_model").exists() or not any(
        (deepfeed_env / "training_state" / "incremental_model").iterdir()
    )

    # Promote it; the next batch starts from it, with its Fisher stored next to it, this
    # time with LoRA (EWC on the adapters), FGSM and distillation from cached logits.
    promote(
        mlflow.client(),
        mlflow.registered_model_name,
        version.version,
        "test: promoted by hand",
        "test",
        AuditLedger(deepfeed_env / "audit" / "ledger.jsonl"),
    )
    options = dict(method="lora", fgsm_epsilon=0.05, distill_alpha=0.5, teacher_cache=True)
    second = run_incremental(deepfeed_env, tiny_llama, instance, seal(deepfeed_env, FEEDBACK[:2]), **options)
    child = registered(mlflow, second)
    assert child.version != version.version and child.tags["parent_version"] == str(version.version)
    assert child.tags["start_checkpoint"] == version.source
    assert fisher_path(version.source).exists()
    meta = second.asset_materializations_for_node("incremental_model")[0].metadata
    assert meta["fisher_file"].value == str(fisher_path(version.source))
    cache = Path(meta["teacher_cache"].value)
    assert cache.parent == deepfeed_env / "artifacts" / "teacher_logits" and (cache / "logits.safetensors").exists()
    adversarial = client.get_metric_history(child.run_id, "incremental_adversarial_loss")
    assert len(adversarial) == 4 and all(m.value > 0 for m in adversarial)


def test_diverging_incremental_run_registers_nothing(deepfeed_env, tiny_llama, tiny_corpus, instance):
    mlflow = resources(deepfeed_env, tiny_llama)["mlflow"]
    result = run_incremental(
        deepfeed_env,
        tiny_llama,
        instance,
        seal(deepfeed_env, FEEDBACK),
        raise_on_error=False,
        learning_rate=float("inf"),
        ewc_lambda=0.0,
        replay_ratio=0.0,
        checkpoint_every=1,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.to_string()
    assert "incremental_model" in message and ("loss became nan" in message or "not finite" in message)
    assert mlflow.version_by_alias(CHALLENGER) is None
    assert not list((deepfeed_env / "artifacts" / "incremental_model").glob("2*"))


def test_deepseek_v3_trains_in_the_incremental_stream(deepfeed_env, tiny_deepseek, instance):
    batch = seal(deepfeed_env, FEEDBACK)
    result = run_incremental(
        deepfeed_env, tiny_deepseek, instance, batch, ewc_lambda=0.0, replay_ratio=0.0, max_steps=2, checkpoint_every=0
    )
    assert result.success
    version = registered(resources(deepfeed_env, tiny_deepseek)["mlflow"], result)
    assert version.tags["feedback_batch"] == batch


def test_incremental_job_compresses_evaluates_and_gates_before_serving(deepfeed_env, tiny_llama, tiny_corpus, instance):
    """incremental_job: the new checkpoint is the candidate that compressed_model, evaluation_report and its gate
    see; only then may champion_model give it an alias (a champion is in place: the challenger alias)."""
    assert materialize(
        ["raw_corpus", "clean_corpus", "augmented_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance
    ).success
    mlflow = resources(deepfeed_env, tiny_llama)["mlflow"]
    client = mlflow.client()
    client.create_registered_model("deepfeed")
    champion = client.create_model_version("deepfeed", source=str(tiny_llama)).version
    client.set_registered_model_alias("deepfeed", "champion", champion)
    batch = seal(deepfeed_env, FEEDBACK)
    instance.add_dynamic_partitions(feedback_batches.name, [batch])
    result = defs.resolve_job_def("incremental_job").execute_in_process(
        partition_key=batch,
        instance=instance,
        resources=resources(deepfeed_env, tiny_llama),
        raise_on_error=False,
        run_config={
            "ops": {
                "incremental_model": {"config": {**FAST, "ewc_lambda": 0.0, "checkpoint_every": 0}},
                "compressed_model": {"config": TEST_COMPRESSION_GATE},
                "evaluation_report": {"config": TEST_EVALUATION},
            }
        },
    )
    version = str(registered(mlflow, result).version)
    [candidate] = result.asset_materializations_for_node("candidate_model")
    assert (
        candidate.metadata["stream"].value == "incremental_model"
        and candidate.metadata["mlflow_model_version"].value == version
    )
    [report] = result.asset_materializations_for_node("evaluation_report")
    assert report.metadata["challenger_version"].value == version  # the incremental checkpoint was evaluated
    gate = next(e for e in result.get_asset_check_evaluations() if e.asset_check_key.name == "promotion_gate")
    challenger = mlflow.version_by_alias(CHALLENGER)
    assert str(mlflow.version_by_alias("champion").version) == str(champion)  # the A/B test decides promotion
    if gate.passed:
        assert str(challenger.version) == version and challenger.tags["deepfeed.gate"] == "passed"
    else:
        assert challenger is None and client.get_model_version("deepfeed", version).tags["deepfeed.gate"] == "failed"


def test_unknown_feedback_batch_is_named(deepfeed_env, tiny_llama, instance):
    result = run_incremental(deepfeed_env, tiny_llama, instance, "000042-nope", raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "incremental_model.config.feedback_root" in failure.step_failure_data.error.to_string()


def test_jobs_and_the_quarterly_knowledge_review_schedule():
    job = defs.resolve_job_def("incremental_job")
    assert job.partitions_def == feedback_batches
    schedule = defs.resolve_schedule_def("quarterly_knowledge_review")
    start = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc).timestamp()
    # Dagster's own cron iterator (what the daemon uses), so the test checks real fire times.
    from dagster._utils.schedules import cron_string_iterator

    ticks = cron_string_iterator(start, schedule.cron_schedule, schedule.execution_timezone)
    fires = [t for _, t in zip(range(5), ticks)]
    assert [(t.year, t.month, t.day, t.hour) for t in fires] == [
        (2027, 1, 1, 3),
        (2027, 4, 1, 3),
        (2027, 7, 1, 3),
        (2027, 10, 1, 3),
        (2028, 1, 1, 3),
    ]
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2027, 4, 1, 3, tzinfo=dt.timezone.utc))
    requests = schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1 and schedule.job_name == "knowledge_review_job"
    review = defs.resolve_job_def("knowledge_review_job")
    selected = {k.to_user_string() for k in review.asset_layer.selected_asset_keys}
    assert {
        "finetuned_model",
        "compressed_model",
        "evaluation_report",
        "champion_model",
    } <= selected and "incremental_model" not in selected
    incremental = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert incremental == {
        "incremental_model",
        "candidate_model",
        "compressed_model",
        "evaluation_report",
        "champion_model",
    }


def test_nproc_2_runs_torchrun_through_pipes_with_the_loss_curve_of_one_process(
    deepfeed_env, tiny_llama, instance, tmp_path
):
    """2 CPU processes (gloo) launched by Pipes follow 1 process with the same global batch."""
    batch = seal(deepfeed_env, FEEDBACK)
    config = dict(
        method="full",
        ewc_lambda=0.0,
        replay_ratio=0.0,
        max_steps=3,
        checkpoint_every=0,
        eval_every=0,
        log_every=1,
        learning_rate=3e-3,
    )
    result = run_incremental(deepfeed_env, tiny_llama, instance, batch, nproc=2, **config)
    assert result.success
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("step 3/3" in m and "2 processes" in m for m in logs), logs[-20:]
    handle = result.output_for_node("incremental_model")
    ddp_losses = json.loads((Path(handle.uri) / "training.json").read_text())["losses"]

    fields = {**FAST, **config}
    single = fine_tune(
        tiny_llama,
        FeedbackStore(deepfeed_env / "feedback").read_batch(batch),
        tmp_path / "single",
        TrainingConfig(
            method="full",
            max_steps=3,
            batch_size=fields["batch_size"],
            max_length=fields["max_length"],
            learning_rate=3e-3,
            warmup_steps=0,
            final_learning_rate=1e-6,
            log_every=1,
        ),
    )
    assert ddp_losses == pytest.approx(single.losses, rel=1e-3)
