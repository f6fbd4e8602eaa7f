"""Ends each Dagster run's MLflow run from the Dagster run's final status.

The resource ends the MLflow run itself when its process finishes (see
`MlflowResource.teardown_after_execution`). These sensors are the authority for what a
step process cannot report: a run whose process was killed (the run monitor marks it
failed), a run canceled from the UI, and runs with one process per step.
"""

from __future__ import annotations

import dagster as dg

from deepfeed.resources.mlflow_tracking import FAILED, FINISHED, KILLED, MlflowResource


def _end(context: dg.RunStatusSensorContext, mlflow: MlflowResource, status: str) -> dg.SkipReason | None:
    run_id = context.dagster_run.run_id
    ended = mlflow.end_runs(run_id, status)
    context.log.info("Dagster run %s: MLflow run(s) %s ended %s", run_id, ended, status)
    return None if ended else dg.SkipReason(f"Dagster run {run_id} logged nothing to MLflow")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="mlflow_run_finished_sensor",
    description="Marks the MLflow run of a successful Dagster run FINISHED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def mlflow_run_finished_sensor(context: dg.RunStatusSensorContext, mlflow: MlflowResource):
    return _end(context, mlflow, FINISHED)


@dg.run_failure_sensor(
    name="mlflow_run_failed_sensor",
    description="Marks the MLflow run of a failed Dagster run (including one the run monitor found dead) FAILED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def mlflow_run_failed_sensor(context: dg.RunFailureSensorContext, mlflow: MlflowResource):
    return _end(context, mlflow, FAILED)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    name="mlflow_run_canceled_sensor",
    description="Marks the MLflow run of a canceled Dagster run KILLED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def mlflow_run_canceled_sensor(context: dg.RunStatusSensorContext, mlflow: MlflowResource):
    return _end(context, mlflow, KILLED)
