"""Every MLflow run of the chain is ended: FINISHED on success, FAILED on failure, and the
registered version is an MLflow model a real client loads."""

import dagster as dg
import mlflow
import pandas as pd

from deepfeed.resources.mlflow_tracking import FAILED, FINISHED, RUNNING
from deepfeed.sensors.mlflow_runs import mlflow_run_failed_sensor, mlflow_run_finished_sensor
from tests.dagster.test_chain import materialize, resources

TRAIN = ["clean_corpus", "augmented_corpus", "base_model", "finetuned_model"]


def _runs(home, base_model):
    client = resources(home, base_model)["mlflow"].client()
    experiment = client.get_experiment_by_name("deepfeed")
    return client.search_runs([experiment.experiment_id])


def test_chain_runs_end_finished_and_a_failing_one_failed(deepfeed_env, tiny_llama, tiny_corpus, instance, monkeypatch):
    result = materialize(["raw_corpus", *TRAIN], deepfeed_env, tiny_llama, tiny_corpus, instance)
    assert result.success
    runs = _runs(deepfeed_env, tiny_llama)
    assert runs and {r.info.status for r in runs} == {FINISHED}
    assert all(r.info.end_time for r in runs)
    # Each asset that logged links to its MLflow run.
    finetuned = instance.get_latest_materialization_event(dg.AssetKey("finetuned_model")).asset_materialization
    [train_run] = [r for r in runs if r.data.tags["dagster_run_id"] == result.run_id]
    run_page = f"/#/experiments/{train_run.info.experiment_id}/runs/{train_run.info.run_id}"
    assert finetuned.metadata["mlflow_run"].value.endswith(run_page)
    assert isinstance(finetuned.metadata["artifact_path"], dg.PathMetadataValue)

    # The version finetuned_model registered loads as an MLflow model and generates.
    mlflow_resource = resources(deepfeed_env, tiny_llama)["mlflow"]
    [version] = mlflow_resource.client().search_model_versions("name = 'deepfeed'")
    assert version.tags["mlflow_flavor"] == "python_function"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_resource.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/deepfeed/{version.version}")
    [text] = model.predict(pd.DataFrame({"prompt": ["What is a fever?"]}), params={"max_new_tokens": 3})
    assert isinstance(text, str)

    # clean_corpus logs to MLflow, then finetuned_model fails on its config: the run is FAILED.
    failed = materialize(
        TRAIN,
        deepfeed_env,
        tiny_llama,
        tiny_corpus,
        instance,
        raise_on_error=False,
        finetuned_model={"config": {"start_from": "nowhere"}},
    )
    assert not failed.success
    [run] = [r for r in _runs(deepfeed_env, tiny_llama) if r.data.tags["dagster_run_id"] == failed.run_id]
    assert run.info.status == FAILED and run.info.end_time


def _killed_run(instance, mlflow_resource, status: dg.DagsterRunStatus):
    """A Dagster run that ended without its process ending its MLflow run (SIGKILL)."""
    run = instance.create_run_for_job(dg.GraphDefinition("killed").to_job(), run_id=None)
    client = mlflow_resource.client()
    experiment = mlflow_resource._experiment_id(client)
    mlflow_run = client.create_run(experiment, tags={"dagster_run_id": run.run_id})
    if status == dg.DagsterRunStatus.FAILURE:
        instance.report_run_failed(run)
    else:
        instance.report_dagster_event(
            dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name), run_id=run.run_id
        )
    return instance.get_run_by_id(run.run_id), mlflow_run.info.run_id


def _event(instance, run_id, event_type):
    [record] = instance.get_records_for_run(run_id, of_type=event_type).records
    return record.event_log_entry.dagster_event


def test_run_status_sensors_end_runs_a_killed_process_left_running(deepfeed_env, tiny_llama, instance):
    mlflow_resource = resources(deepfeed_env, tiny_llama)["mlflow"]
    failed_run, failed_mlflow = _killed_run(instance, mlflow_resource, dg.DagsterRunStatus.FAILURE)
    ok_run, ok_mlflow = _killed_run(instance, mlflow_resource, dg.DagsterRunStatus.SUCCESS)
    client = mlflow_resource.client()
    assert client.get_run(failed_mlflow).info.status == RUNNING

    with dg.build_run_status_sensor_context(
        sensor_name=mlflow_run_failed_sensor.name,
        dagster_instance=instance,
        dagster_run=failed_run,
        dagster_event=_event(instance, failed_run.run_id, dg.DagsterEventType.RUN_FAILURE),
        resources={"mlflow": mlflow_resource},
    ) as context:
        mlflow_run_failed_sensor(context.for_run_failure())
    assert client.get_run(failed_mlflow).info.status == FAILED

    with dg.build_run_status_sensor_context(
        sensor_name=mlflow_run_finished_sensor.name,
        dagster_instance=instance,
        dagster_run=ok_run,
        dagster_event=_event(instance, ok_run.run_id, dg.DagsterEventType.RUN_SUCCESS),
        resources={"mlflow": mlflow_resource},
    ) as context:
        mlflow_run_finished_sensor(context)
    assert client.get_run(ok_mlflow).info.status == FINISHED
    # A FAILED run is never turned FINISHED by a later, successful report.
    mlflow_resource.end_runs(failed_run.run_id, FINISHED)
    assert client.get_run(failed_mlflow).info.status == FAILED


def test_mlflow_sensors_are_in_the_definitions():
    from deepfeed.definitions import defs

    for name in ("mlflow_run_finished_sensor", "mlflow_run_failed_sensor", "mlflow_run_canceled_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
