"""Jobs and schedules of the training streams beyond the monthly full retrain."""

import dagster as dg

from deepfeed.pipelines.partitions import feedback_batches
from deepfeed.pipelines.presets import KNOWLEDGE_REVIEW

# One run per sealed feedback batch; the feedback sensor requests them by partition key.
# The incremental checkpoint goes through the same compression, evaluation and gate as a
# full retrain before it may serve: candidate_model hands this run's checkpoint on, and
# champion_model gives it the challenger alias only after the gate passed
# (docs/model-lifecycle.md).
INCREMENTAL_CHAIN = ("incremental_model", "candidate_model", "compressed_model", "evaluation_report", "champion_model")

incremental_job = dg.define_asset_job(
    "incremental_job",
    selection=dg.AssetSelection.assets(*INCREMENTAL_CHAIN),
    partitions_def=feedback_batches,
    description="Train the champion on one sealed feedback batch (replay + EWC + elastic LR), then compress, "
    "evaluate and gate it; a pass makes it the A/B challenger.",
    tags={"deepfeed/stream": "incremental"},
)

# Against forgetting: every quarter, retrain from the champion on the whole
# history (augmented corpus + every feedback batch) with EWC, then compress, evaluate
# and promote through the same gate as any other candidate (the preset: presets.py).
knowledge_review_job = dg.define_asset_job(
    "knowledge_review_job",
    selection=dg.AssetSelection.assets("finetuned_model").downstream() - dg.AssetSelection.groups("monitoring"),
    config={"ops": {"finetuned_model": {"config": KNOWLEDGE_REVIEW}}},
    description="Quarterly knowledge review: retrain from the champion on all data and feedback with EWC.",
    tags={"deepfeed/stream": "review"},
)

quarterly_knowledge_review = dg.ScheduleDefinition(
    name="quarterly_knowledge_review",
    job=knowledge_review_job,
    cron_schedule="0 3 1 1,4,7,10 *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Knowledge review at 03:00 UTC on the 1st of January, April, July and October.",
)
