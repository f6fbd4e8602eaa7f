"""performance_sensor: the champion's ratings significantly more than 3% below its baseline -> rollback_job."""

import dagster as dg

from deepfeed.core.loop.monitoring import performance_evidence
from deepfeed.core.loop.registry import CHAMPION, PREVIOUS
from deepfeed.core.loop.rollback import BASELINE_N_TAG, BASELINE_STD_TAG, BASELINE_TAG
from deepfeed.pipelines.rollback import rollback_job
from deepfeed.resources import MlflowResource
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource


def _tag(tags: dict, key: str, kind=float):
    value = (tags or {}).get(key)
    try:
        return kind(float(value)) if value not in (None, "") else None
    except ValueError:  # a hand-edited tag: ignore it rather than stop monitoring
        return None


def build_performance_sensor(interval_s: int = 300) -> dg.SensorDefinition:
    @dg.sensor(
        name="performance_sensor",
        job=rollback_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="One-sided test (monitoring_policy.rollback_alpha) that the champion's recent mean "
        "rating is more than rollback_max_relative_drop (3%) below its baseline -> rollback_job",
    )
    def performance_sensor(
        context: dg.SensorEvaluationContext,
        locations: LocationsResource,
        mlflow: MlflowResource,
        monitoring_policy: MonitoringPolicyResource,
    ):
        policy = monitoring_policy
        champion, previous = mlflow.version_by_alias(CHAMPION), mlflow.version_by_alias(PREVIOUS)
        if champion is None:
            return dg.SkipReason("no champion to monitor")
        tags = champion.tags or {}
        evidence = performance_evidence(
            locations.feedback_store().all_records(),
            str(champion.version),
            str(previous.version) if previous is not None else None,
            _tag(tags, BASELINE_TAG),
            policy.rollback_window,
            policy.rollback_min_samples,
            policy.rollback_max_relative_drop,
            policy.rollback_alpha,
            baseline_std=_tag(tags, BASELINE_STD_TAG),
            baseline_n=_tag(tags, BASELINE_N_TAG, int),
        )
        if not evidence.rollback:
            return dg.SkipReason(evidence.reason)
        if previous is None:
            return dg.SkipReason(f"rollback wanted ({evidence.reason}) but there is no '{PREVIOUS}' version")
        context.log.warning("rolling back v%s: %s", champion.version, evidence.reason)
        return dg.RunRequest(
            run_key=f"rollback-v{champion.version}",
            run_config={
                "ops": {
                    "rollback_champion": {
                        "config": {
                            "reason": f"performance_sensor: {evidence.reason}",
                            "expected_champion": str(champion.version),
                        }
                    }
                }
            },
            tags={"deepfeed/alert": "performance"},
        )

    return performance_sensor


performance_sensor = build_performance_sensor()
