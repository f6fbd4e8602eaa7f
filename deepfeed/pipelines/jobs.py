"""Jobs and schedules over the asset graph."""

from __future__ import annotations

import dagster as dg

# The whole chain, from raw corpora to the promoted champion.
full_chain_job = dg.define_asset_job(
    "full_chain_job",
    # Monitoring assets read production traffic; they run from sensors and schedules.
    # The incremental stream is partitioned per feedback batch and runs from its own job.
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("monitoring") - dg.AssetSelection.assets("incremental_model"),
    description="Ingest, clean, augment, fine-tune, compress, evaluate and promote.",
    tags={"deepfeed/stream": "full"},
)

# SPEC §4: the base stream retrains on all data every month.
monthly_full_retrain = dg.ScheduleDefinition(
    name="monthly_full_retrain",
    job=full_chain_job,
    cron_schedule="0 2 1 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Full retrain on all data at 02:00 UTC on the 1st of every month.",
)
