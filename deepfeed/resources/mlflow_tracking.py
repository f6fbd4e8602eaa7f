from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

from deepfeed.core.platform.home import deepfeed_home
from deepfeed.settings import default_mlflow_artifact_location, default_mlflow_uri

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
DAGSTER_RUN_TAG = "dagster_run_id"


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry: one MLflow run per Dagster run."""

    tracking_uri: str = Field(
        default_factory=default_mlflow_uri,
        description="MLflow tracking URI ($MLFLOW_TRACKING_URI; default sqlite:///$DEEPFEED_HOME/mlflow.db).",
    )
    experiment_name: str = Field(default="deepfeed", description="MLflow experiment that receives the runs.")
    artifact_location: str = Field(
        default_factory=default_mlflow_artifact_location,
        description="Artifact location for a newly created experiment (ignored for an existing one).",
    )
    registered_model_name: str = Field(
        default="deepfeed", description="Registered model holding the versions and the champion/challenger aliases."
    )

    # MLflow runs this process opened for its Dagster run; ended in teardown_after_execution.
    _opened: set[str] = PrivateAttr(default_factory=set)

    def client(self):
        from mlflow import MlflowClient

        from deepfeed.core.platform.home_move import settle_home

        settle_home(deepfeed_home(), self.tracking_uri)  # a moved home: registry locations follow it
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client) -> str:
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)

    def run_id(self, context: dg.AssetExecutionContext) -> str:
        """The MLflow run of this Dagster run, created by whichever step asks first.

        Steps of one Dagster run may live in separate processes, so get-or-create is
        serialized with a file lock (embedded default: all on one machine).
        """
        from filelock import FileLock

        dagster_run_id = context.run.run_id
        lock_dir = deepfeed_home()
        lock_dir.mkdir(parents=True, exist_ok=True)
        client = self.client()
        with FileLock(str(lock_dir / ".mlflow-run.lock"), timeout=60):
            experiment_id = self._experiment_id(client)
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.dagster_run_id = '{dagster_run_id}'", max_results=1
            )
            if found:
                run_id = found[0].info.run_id
                # A step in a later process (multiprocess executor, a retry) reopens the run an
                # earlier step's process ended; a FAILED run stays FAILED.
                if found[0].info.status == FINISHED:
                    client.update_run(run_id, status=RUNNING)
            else:
                run_id = client.create_run(
                    experiment_id,
                    run_name=f"dagster-{dagster_run_id[:8]}",
                    tags={"dagster_run_id": dagster_run_id, "dagster_job": context.run.job_name},
                ).info.run_id
        self._opened.add(dagster_run_id)
        return run_id

    def mlflow_runs_of(self, dagster_run_id: str) -> list:
        """Every MLflow run tagged with this Dagster run (normally one)."""
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return []
        return client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'"
        )

    def end_runs(self, dagster_run_id: str, status: str) -> list[str]:
        """End the MLflow run(s) of a Dagster run with `status` (FINISHED, FAILED or KILLED).

        Idempotent, and a FAILED run is never turned FINISHED: a step that failed earlier in
        another process, or the run monitor's verdict on a killed run, wins."""
        client = self.client()
        ended = []
        for run in self.mlflow_runs_of(dagster_run_id):
            status = FAILED if status == FINISHED and run.info.status == FAILED else status
            if run.info.status != status or run.info.end_time is None:
                client.set_terminated(run.info.run_id, status=status)
            ended.append(run.info.run_id)
        return ended

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """End the MLflow run when this process is done with its steps of the Dagster run.

        With the in-process executor (the embedded default) this is the end of the Dagster run.
        With one process per step a later step reopens the run (see `run_id`), and
        `mlflow_run_status_sensor` ends it again from the run's final status, which also covers
        a process that was killed and never got here."""
        if context.dagster_run is None or context.dagster_run.run_id not in self._opened:
            return
        dagster_run_id = context.dagster_run.run_id
        failures = (
            context.instance.get_records_for_run(
                dagster_run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1
            ).records
            if context.instance is not None
            else []
        )
        self.end_runs(dagster_run_id, FAILED if failures else FINISHED)
        self._opened.discard(dagster_run_id)

    def log(
        self,
        context: dg.AssetExecutionContext,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        series: dict[str, list[float]] | None = None,
        artifacts: list[Path] | None = None,
        artifact_dir: str | None = None,
    ) -> str:
        """Log under the asset's name: params prefixed (each asset logs its own), metrics
        as given, `series` as per-step metrics, files as artifacts."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client()
        run_id = self.run_id(context)
        asset = context.asset_key.to_user_string()
        import time

        now = int(time.time() * 1000)
        metric_rows = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        for name, values in (series or {}).items():
            metric_rows.extend(Metric(name, float(v), now, step) for step, v in enumerate(values))
        param_rows = [Param(f"{asset}.{k}", str(v)[:6000]) for k, v in (params or {}).items()]
        tags = [RunTag(f"asset.{asset}", "materialized")]
        for start in range(0, max(len(metric_rows), 1), 1000):
            client.log_batch(
                run_id,
                metrics=metric_rows[start : start + 1000],
                params=param_rows if start == 0 else [],
                tags=tags if start == 0 else [],
            )
        for path in artifacts or []:
            client.log_artifact(run_id, str(path), artifact_path=artifact_dir or asset)
        try:  # a link from the asset's page to what it logged
            context.add_output_metadata({"mlflow_run": dg.MetadataValue.url(self.run_url(run_id))})
        except dg.DagsterInvariantViolationError:
            pass  # a step with several outputs: the run is found by its dagster_run_id tag
        return run_id

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI: the tracking server itself, or for a database store
        the UI `make mlflow-ui` starts ($DEEPFEED_MLFLOW_UI_URL overrides)."""
        import os

        scheme = urlparse(self.tracking_uri).scheme.lower()
        base = (
            self.tracking_uri
            if scheme in ("http", "https")
            else os.environ.get("DEEPFEED_MLFLOW_UI_URL", "http://127.0.0.1:5000")
        )
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def check_registrable(self, source_is_local: bool) -> None:
        """Raise ValueError when the registry will refuse the model-version sources we would
        give it. An MLflow *server* rejects sources on a local disk ("Invalid model version
        source"): a path on one machine means nothing to the others. Checked before training,
        so hours of training are not lost to a registration error at the end."""
        scheme = urlparse(self.tracking_uri).scheme.lower()
        if source_is_local and scheme in ("http", "https"):
            raise ValueError(
                f"MLFLOW_TRACKING_URI {self.tracking_uri} is an MLflow server, which refuses model versions whose "
                "checkpoint is on a local disk, and the artifact store is local. Set DEEPFEED_ARTIFACT_ROOT to an "
                "object store everyone reaches (s3://bucket/prefix), or point MLFLOW_TRACKING_URI at the server's "
                "database (postgresql+psycopg2://…) on a single machine. See docs/deploying.md, 'MLflow in "
                "server mode'."
            )

    def register_version(self, context: dg.AssetExecutionContext, source: str, tags: dict[str, str]) -> str:
        """A new model version, with no alias: nothing serves it until its evaluation gate
        passes (docs/model-lifecycle.md; the aliases move only in deepfeed.core.loop.registry)."""
        from mlflow.exceptions import MlflowException

        from deepfeed.core.loop.lifecycle import registration_tags

        client = self.client()
        try:
            client.create_registered_model(self.registered_model_name)
        except MlflowException:
            pass  # already registered
        version = client.create_model_version(
            self.registered_model_name,
            source=source,
            run_id=self.run_id(context),
            tags={**tags, **registration_tags(), "dagster_run_id": context.run.run_id, **model_flavor_tags(source)},
        )
        return str(version.version)

    def version_by_alias(self, alias: str):
        """The version holding `alias` (deepfeed.core.loop.registry names them), or None."""
        from deepfeed.core.loop.registry import version_by_alias

        return version_by_alias(self.client(), self.registered_model_name, alias)


def model_flavor_tags(source: str) -> dict[str, str]:
    """Whether the version loads with mlflow.pyfunc.load_model (its folder holds an MLmodel)."""
    from deepfeed.core.platform.mlflow_model import is_mlflow_model

    return {"mlflow_flavor": "python_function" if is_mlflow_model(source) else "none"}


def mlflow_ui_command() -> str:
    uri = default_mlflow_uri()
    return f"mlflow ui --backend-store-uri {uri} --port 5000"
