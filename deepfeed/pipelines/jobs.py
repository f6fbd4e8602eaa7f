"""Jobs and schedules over the asset graph."""

from __future__ import annotations

import dagster as dg

# The whole chain from the ingested sources to the promoted champion. raw_corpus is
# partitioned per source and ingested by corpus_ingest_job (from corpus_source_sensor or
# `deepfeed ingest`); clean_corpus reads the latest version of every source, so the full
# retrain sees all data without re-reading sources that did not change.
full_chain_job = dg.define_asset_job(
    "full_chain_job",
    # Monitoring assets read production traffic; they run from sensors and schedules.
    # The incremental stream is partitioned per feedback batch and runs from its own job.
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.groups("monitoring")
    - dg.AssetSelection.assets("incremental_model", "raw_corpus"),
    description="Clean (all sources), augment, fine-tune, compress, evaluate and promote.",
    tags={"deepfeed/stream": "full"},
)

corpus_ingest_job = dg.define_asset_job(
    "corpus_ingest_job",
    selection=dg.AssetSelection.assets("raw_corpus"),
    description="Ingest one source of the corpus root (one partition of raw_corpus) into records and a quarantine.",
)

# docs/requirements.md §4: the base stream retrains on all data every month.
monthly_full_retrain = dg.ScheduleDefinition(
    name="monthly_full_retrain",
    job=full_chain_job,
    cron_schedule="0 2 1 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Full retrain on all data at 02:00 UTC on the 1st of every month.",
)
