"""performance_sensor: a 3% drop of the champion's rating vs its baseline -> rollback_job."""

import dagster as dg

from deepfeed.core.monitoring import performance_evidence
from deepfeed.core.rollback import BASELINE_TAG, CHAMPION, PREVIOUS
from deepfeed.pipelines.rollback import rollback_job
from deepfeed.resources import MlflowResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource
from deepfeed.resources.serving_data import ServingDataResource


def build_performance_sensor(interval_s: int = 300) -> dg.SensorDefinition:
    @dg.sensor(name="performance_sensor", job=rollback_job, minimum_interval_seconds=interval_s,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Mean feedback rating of the champion's recent answers drops below its baseline "
                           "by the monitoring_policy resource's rollback_max_relative_drop (SPEC: 3%) -> rollback_job")
    def performance_sensor(context: dg.SensorEvaluationContext, serving_data: ServingDataResource,
                           mlflow: MlflowResource, monitoring_policy: MonitoringPolicyResource):
        policy = monitoring_policy
        champion, previous = mlflow.version_by_alias(CHAMPION), mlflow.version_by_alias(PREVIOUS)
        if champion is None:
            return dg.SkipReason("no champion to monitor")
        tag = (champion.tags or {}).get(BASELINE_TAG)
        evidence = performance_evidence(
            serving_data.feedback_store().all_records(), str(champion.version),
            str(previous.version) if previous is not None else None,
            float(tag) if tag not in (None, "") else None, policy.rollback_window, policy.rollback_min_samples,
            policy.rollback_max_relative_drop)
        if not evidence.rollback:
            return dg.SkipReason(evidence.reason)
        if previous is None:
            return dg.SkipReason(f"rollback wanted ({evidence.reason}) but there is no '{PREVIOUS}' version")
        context.log.warning("rolling back v%s: %s", champion.version, evidence.reason)
        return dg.RunRequest(
            run_key=f"rollback-v{champion.version}",
            run_config={"ops": {"rollback_champion": {"config": {
                "reason": f"performance_sensor: {evidence.reason}", "expected_champion": str(champion.version)}}}},
            tags={"deepfeed/alert": "performance"},
        )

    return performance_sensor


performance_sensor = build_performance_sensor()
