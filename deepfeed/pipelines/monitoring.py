"""Jobs of the monitoring assets (requested by sensors, runnable by hand)."""

import dagster as dg

drift_report_job = dg.define_asset_job(
    "drift_report_job",
    selection=dg.AssetSelection.assets("drift_report"),
    description="Compare the recent inference window with the training data; fails on a drift alert.",
    tags={"deepfeed/stream": "monitoring"},
)

ab_test_report_job = dg.define_asset_job(
    "ab_test_report_job",
    selection=dg.AssetSelection.assets("ab_test_report"),
    description="Analyze the running A/B test and act on its decision.",
    tags={"deepfeed/stream": "monitoring"},
)

# docs/requirements.md §7: at least 72 hours of monitoring; a daily look decides as soon as that is reached.
daily_ab_test_report = dg.ScheduleDefinition(
    name="daily_ab_test_report",
    job=ab_test_report_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily A/B analysis at 06:00 UTC (decides only after 72 h of data).",
)
