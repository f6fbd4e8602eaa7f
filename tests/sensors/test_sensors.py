"""The production sensors evaluated with build_sensor_context, and the rollback job."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import numpy as np
import pytest

from deepfeed.core.loop.inference_log import InferenceLog, prompt_record
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.tables import write_table
from deepfeed.pipelines.rollback import rollback_job
from deepfeed.resources import ArtifactStoreResource, MlflowResource
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource, policy_from_environment
from deepfeed.sensors.drift import drift_sensor
from deepfeed.sensors.feedback import feedback_sensor
from deepfeed.sensors.performance import performance_sensor
from tests.serve.conftest import Registry

UTC = dt.timezone.utc
EN = [
    "What is the capital of France?",
    "How do I reset my password?",
    "Can you recommend a good book?",
    "How much water should I drink?",
    "What is high blood pressure?",
    "Where is the station?",
]


def evaluate(sensor, **context):
    """A sensor evaluated the way the daemon does: inside its context, so resources with a
    teardown (MlflowResource ends its runs) are opened and closed."""
    with dg.build_sensor_context(**context) as built:
        return sensor(built)


def _fb(version, rating, **kw):
    return {"prompt": "q?", "answer": "a", "rating": rating, "model_version": version, **kw}


def test_feedback_sensor_seals_and_requests_one_run_per_batch(deepfeed_env):
    locations = LocationsResource(home=str(deepfeed_env))
    store = locations.feedback_store()
    policy = MonitoringPolicyResource(feedback_min_batch=3, feedback_max_age_minutes=60)
    resources = {"locations": locations, "monitoring_policy": policy}
    for _ in range(2):
        store.append(_fb("1", 1.0))
    result = evaluate(feedback_sensor, resources=resources)
    assert isinstance(result, dg.SkipReason) and "2 records waiting" in result.skip_message
    store.append(_fb("1", 0.0, correction="better"))
    result = evaluate(feedback_sensor, resources=resources)
    [batch] = store.batches()
    [request] = result.run_requests
    assert request.partition_key == batch and request.run_key == f"feedback-{batch}"
    assert result.dynamic_partitions_requests[0].partition_keys == [batch]
    assert result.dynamic_partitions_requests[0].partitions_def_name == "feedback_batches"
    assert result.cursor == batch and len(store.read_batch(batch)) == 3
    # Same cursor: nothing new. A trickle older than max_age is sealed anyway.
    again = evaluate(feedback_sensor, cursor=batch, resources=resources)
    assert isinstance(again, dg.SkipReason)
    store.append(_fb("1", 1.0))
    stale = {
        **resources,
        "monitoring_policy": MonitoringPolicyResource(feedback_min_batch=100, feedback_max_age_minutes=0),
    }
    result = evaluate(feedback_sensor, cursor=batch, resources=stale)
    assert [r.partition_key for r in result.run_requests] == store.batches()[1:]


def _reference_corpus(home):
    store = ArtifactStore(home / "artifacts")
    rows = [
        {
            "record_id": str(i),
            "kind": "pair",
            "prompt": EN[i % len(EN)] + f" ({i})",
            "response": "ok",
            "text": None,
            "split": "train",
        }
        for i in range(120)
    ]
    with store.new_version("clean_corpus") as v:
        write_table(v.path / "records.parquet", rows)
    return store


def _log(home, prompts, confidences):
    log = InferenceLog(home / "inference_log")
    now = dt.datetime.now(UTC)
    for i, (p, c) in enumerate(zip(prompts, confidences)):
        log.append(
            {"time": (now - dt.timedelta(minutes=len(prompts) - i)).isoformat(), "confidence": c, **prompt_record(p)}
        )


def test_drift_sensor_quiet_then_input_and_output_alerts(deepfeed_env):
    _reference_corpus(deepfeed_env)
    resources = {
        "locations": LocationsResource(home=str(deepfeed_env)),
        "artifact_store": ArtifactStoreResource(root=str(deepfeed_env / "artifacts")),
        "monitoring_policy": MonitoringPolicyResource(drift_window_hours=2, drift_min_samples=30),
    }
    rng = np.random.default_rng(0)
    _log(deepfeed_env, [EN[i % len(EN)] + f" ({i})" for i in range(60)], rng.normal(0.6, 0.05, 60))
    quiet = evaluate(drift_sensor, resources=resources)
    assert isinstance(quiet, dg.SkipReason) and "no drift" in quiet.skip_message

    shifted = [f"请问订单{i}的发货时间是什么时候？我已经等了{i * 7}天了，能否尽快处理。" for i in range(200)]
    _log(deepfeed_env, shifted, rng.uniform(0.05, 0.95, 200))
    [request] = evaluate(drift_sensor, resources=resources)
    config = request.run_config["ops"]["drift_report"]["config"]
    assert request.job_name == "drift_report_job" and request.run_key.startswith("drift-")
    assert config["alpha"] == 0.05 and "cjk_share" in request.tags["deepfeed/drift_reason"]
    assert {t.job_name for t in drift_sensor.targets} == {"drift_report_job", "full_chain_job", "incremental_job"}
    full = {**resources, "monitoring_policy": MonitoringPolicyResource(drift_window_hours=2, drift_on_alert="full")}
    assert [r.job_name for r in evaluate(drift_sensor, resources=full)] == ["drift_report_job", "full_chain_job"]
    resources["locations"].feedback_store().append(_fb("1", 0.0, correction="better"))
    incremental = evaluate(
        drift_sensor,
        resources={
            **resources,
            "monitoring_policy": MonitoringPolicyResource(drift_window_hours=2, drift_on_alert="incremental"),
        },
    )
    [batch] = resources["locations"].feedback_store().batches()
    assert [(r.job_name, r.partition_key) for r in incremental.run_requests] == [
        ("drift_report_job", None),
        ("incremental_job", batch),
    ]
    assert incremental.dynamic_partitions_requests[0].partition_keys == [batch]


def test_drift_sensor_confidence_spread_alone_alerts(deepfeed_env):
    _reference_corpus(deepfeed_env)
    resources = {
        "locations": LocationsResource(home=str(deepfeed_env)),
        "artifact_store": ArtifactStoreResource(root=str(deepfeed_env / "artifacts")),
        "monitoring_policy": MonitoringPolicyResource(drift_window_hours=2),
    }
    _log(deepfeed_env, [EN[i % len(EN)] + f" ({i})" for i in range(80)], np.random.default_rng(1).uniform(0, 1, 80))
    [request] = evaluate(drift_sensor, resources=resources)
    assert "confidence std" in request.tags["deepfeed/drift_reason"]


def test_performance_sensor_rolls_back_through_the_job(deepfeed_env, empty_registry_db, tiny_llama):
    registry = Registry(deepfeed_env, empty_registry_db)
    v1 = registry.register(tiny_llama, "previous")
    v2 = registry.register(tiny_llama, "champion")
    locations = LocationsResource(home=str(deepfeed_env))
    mlflow = MlflowResource(tracking_uri=registry.uri, artifact_location=str(deepfeed_env / "mlartifacts"))
    resources = {
        "locations": locations,
        "mlflow": mlflow,
        "monitoring_policy": MonitoringPolicyResource(rollback_window=400, rollback_min_samples=30),
    }
    store = locations.feedback_store()
    # 40 ratings a version no longer prove an 11% drop (the window mean moves by +-6 points
    # on its own); 400 do.
    for i in range(40):
        store.append(_fb(v1, 1.0 if i % 10 else 0.0))  # 0.9
        store.append(_fb(v2, 1.0 if i % 10 > 1 else 0.0))  # 0.8: 11% worse
    early = evaluate(performance_sensor, resources=resources)
    assert isinstance(early, dg.SkipReason) and "rollback at p < 0.01: no" in early.skip_message
    for i in range(360):
        store.append(_fb(v1, 1.0 if i % 10 else 0.0))
        store.append(_fb(v2, 1.0 if i % 10 > 1 else 0.0))
    request = evaluate(performance_sensor, resources=resources)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"rollback-v{v2}"
    op_config = request.run_config["ops"]["rollback_champion"]["config"]
    assert op_config["expected_champion"] == v2 and "(-11.11%) over 400 ratings" in op_config["reason"]

    result = rollback_job.execute_in_process(run_config=request.run_config, resources=resources)
    assert result.success
    assert registry.client.get_model_version_by_alias("deepfeed", "champion").version == int(v1)
    assert registry.client.get_model_version("deepfeed", v2).tags["rolled_back"] == "true"
    [entry] = list(locations.audit_ledger().iter_entries(action="rolled_back"))
    assert entry["stage"] == "model_registry" and entry["record_id"] == f"model:deepfeed:v{v2}"
    assert entry["extra"]["from_version"] == v2 and entry["extra"]["to_version"] == v1
    # Rolled back: no previous left, no flapping; replaying the old request fails clearly.
    assert isinstance(evaluate(performance_sensor, resources=resources), dg.SkipReason)
    again = rollback_job.execute_in_process(run_config=request.run_config, resources=resources, raise_on_error=False)
    assert not again.success


def test_performance_sensor_small_drop_or_few_samples_do_nothing(deepfeed_env, empty_registry_db, tiny_llama):
    registry = Registry(deepfeed_env, empty_registry_db)
    v1 = registry.register(tiny_llama, "previous")
    v2 = registry.register(tiny_llama, "champion")
    locations = LocationsResource(home=str(deepfeed_env))
    resources = {
        "locations": locations,
        "monitoring_policy": MonitoringPolicyResource(),
        "mlflow": MlflowResource(tracking_uri=registry.uri, artifact_location=str(deepfeed_env / "mlartifacts")),
    }
    for i in range(200):
        locations.feedback_store().append(_fb(v1, float(i % 100 < 80)))
        locations.feedback_store().append(_fb(v2, float(i % 100 < 79)))  # 1.25% worse: within the 3%
    skip = evaluate(performance_sensor, resources=resources)
    assert isinstance(skip, dg.SkipReason) and "rollback at p < 0.01: no" in skip.skip_message
    registry.client.set_model_version_tag("deepfeed", v2, "deepfeed.baseline_metric", "0.9")
    few = evaluate(
        performance_sensor,
        resources={**resources, "monitoring_policy": MonitoringPolicyResource(rollback_min_samples=300)},
    )
    assert isinstance(few, dg.SkipReason) and "too few ratings" in few.skip_message
    tagged = evaluate(performance_sensor, resources=resources)
    assert isinstance(tagged, dg.RunRequest) and "0.9 -> 0.79" in json.dumps(tagged.run_config)


def test_loop_is_registered_and_scheduled():
    from deepfeed.definitions import defs

    assert {defs.resolve_sensor_def(n).name for n in ("feedback_sensor", "drift_sensor", "performance_sensor")}
    assert defs.resolve_sensor_def("feedback_sensor").job_name == "incremental_job"
    assert defs.resolve_sensor_def("performance_sensor").job_name == "rollback_job"
    assert defs.resolve_job_def("rollback_job") and defs.resolve_job_def("drift_report_job")
    chain = defs.resolve_job_def("full_chain_job")
    assert not {"drift_report", "ab_test_report"} & {
        k.to_user_string() for k in chain.asset_layer.executable_asset_keys
    }
    schedule = defs.resolve_schedule_def("daily_ab_test_report")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 12, 3, 6, tzinfo=UTC))
    assert len(schedule.evaluate_tick(context).run_requests) == 1 and schedule.job_name == "ab_test_report_job"


def test_monitoring_policy_comes_from_the_environment_with_clear_errors():
    policy = policy_from_environment({"DEEPFEED_DRIFT_ON_ALERT": "full", "DEEPFEED_ROLLBACK_MAX_RELATIVE_DROP": "0.05"})
    assert policy.drift_on_alert == "full" and policy.rollback_max_relative_drop == 0.05
    assert (
        policy.drift_alpha == 0.05 and policy.confidence_std == 0.15
    )  # the required defaults stay (docs/requirements.md §8)
    for bad in ({"DEEPFEED_DRIFT_ON_ALERT": "panic"}, {"DEEPFEED_DRIFT_ALPHA": "abc"}, {"DEEPFEED_DRIFT_ALPHA": "2"}):
        with pytest.raises(ValueError, match=list(bad)[0].removeprefix("DEEPFEED_").lower()):
            policy_from_environment(bad)
