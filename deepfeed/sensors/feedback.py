"""feedback_sensor: seal feedback into batches, one dynamic partition + incremental run each."""

import datetime as dt

import dagster as dg

from deepfeed.pipelines.partitions import feedback_batches
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource

INCREMENTAL_JOB = "incremental_job"


def build_feedback_sensor(interval_s: int = 60) -> dg.SensorDefinition:
    """Seal the open batch when it holds the policy's ``feedback_min_batch`` records or its
    oldest is ``feedback_max_age_minutes`` old (small trickles still get trained on), then request one run
    per sealed batch the cursor has not seen. Run keys are batch ids, so a batch never
    trains twice even if the cursor were lost."""

    @dg.sensor(
        name="feedback_sensor",
        job_name=INCREMENTAL_JOB,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"New feedback batches (size and age from the monitoring_policy resource) "
        f"-> partition of {feedback_batches.name} + {INCREMENTAL_JOB} run.",
    )
    def feedback_sensor(
        context: dg.SensorEvaluationContext,
        locations: LocationsResource,
        monitoring_policy: MonitoringPolicyResource,
    ):
        min_batch, max_age_minutes = monitoring_policy.feedback_min_batch, monitoring_policy.feedback_max_age_minutes
        store = locations.feedback_store()
        pending, oldest = store.pending(), store.oldest_pending()
        age = (dt.datetime.now(dt.timezone.utc) - oldest) if oldest else dt.timedelta(0)
        sealed = None
        if pending >= min_batch or (pending and age >= dt.timedelta(minutes=max_age_minutes)):
            sealed = store.seal_batch()
        new = [b for b in store.batches() if context.cursor is None or b > context.cursor]
        if not new:
            return dg.SkipReason(f"no new feedback batch ({pending} records waiting, oldest {age} old)")
        context.log.info("sealed %s; requesting %d incremental run(s)", sealed, len(new))
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=f"feedback-{b}", partition_key=b, tags={"deepfeed/feedback_batch": b})
                for b in new
            ],
            dynamic_partitions_requests=[feedback_batches.build_add_request(new)],
            cursor=new[-1],
        )

    return feedback_sensor


feedback_sensor = build_feedback_sensor()
