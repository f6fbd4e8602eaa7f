"""The deepfeed code location: one Definitions object."""

from __future__ import annotations

import dagster as dg

from deepfeed.assets import ALL_ASSET_MODULES
from deepfeed.pipelines.jobs import corpus_ingest_job, full_chain_job, monthly_full_retrain
from deepfeed.pipelines.monitoring import ab_test_report_job, daily_ab_test_report, drift_report_job
from deepfeed.pipelines.rollback import rollback_job
from deepfeed.pipelines.training import incremental_job, knowledge_review_job, quarterly_knowledge_review
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource
from deepfeed.resources.handle_io import ArtifactHandleIOManager
from deepfeed.resources.monitoring_policy import policy_from_environment
from deepfeed.sensors import MLFLOW_RUN_SENSORS, corpus_source_sensor, drift_sensor, feedback_sensor, performance_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(ALL_ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(ALL_ASSET_MODULES),
    jobs=[
        full_chain_job,
        corpus_ingest_job,
        incremental_job,
        knowledge_review_job,
        drift_report_job,
        ab_test_report_job,
        rollback_job,
    ],
    schedules=[monthly_full_retrain, quarterly_knowledge_review, daily_ab_test_report],
    sensors=[corpus_source_sensor, feedback_sensor, drift_sensor, performance_sensor, *MLFLOW_RUN_SENSORS],
    resources={
        # Handles stored as JSON; the asset page's `path` is the artifact folder (resources/handle_io.py).
        "io_manager": ArtifactHandleIOManager(),
        "artifact_store": ArtifactStoreResource(),
        "mlflow": MlflowResource(),
        "model_source": ModelSourceResource(),
        "locations": LocationsResource(),
        "monitoring_policy": policy_from_environment(),
    },
    # Training and evaluation each use every core of the embedded default's machine;
    # running steps side by side would only make them contend.
    executor=dg.in_process_executor,
)
