"""The deepfeed code location: one Definitions object."""

from __future__ import annotations

import dagster as dg

from deepfeed.assets import ASSET_MODULES
from deepfeed.assets.incremental import incremental_model
from deepfeed.pipelines.jobs import full_chain_job, monthly_full_retrain
from deepfeed.pipelines.training import incremental_job, knowledge_review_job, quarterly_knowledge_review
from deepfeed.resources import ArtifactStoreResource, MlflowResource, ModelSourceResource

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules(ASSET_MODULES), incremental_model],
    asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
    jobs=[full_chain_job, incremental_job, knowledge_review_job],
    schedules=[monthly_full_retrain, quarterly_knowledge_review],
    resources={
        "artifact_store": ArtifactStoreResource(),
        "mlflow": MlflowResource(),
        "model_source": ModelSourceResource(),
    },
    # Training and evaluation each use every core of the embedded default's machine;
    # running steps side by side would only make them contend.
    executor=dg.in_process_executor,
)
