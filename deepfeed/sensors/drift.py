"""drift_sensor: input (KS per feature, Holm-corrected) and output (confidence std) drift."""

import datetime as dt

import dagster as dg

from deepfeed.core.data.embedding_summary import shared_summarizer
from deepfeed.core.loop.monitoring import drift_evidence, reference_features
from deepfeed.pipelines.jobs import full_chain_job
from deepfeed.pipelines.monitoring import drift_report_job
from deepfeed.pipelines.partitions import feedback_batches
from deepfeed.pipelines.training import incremental_job
from deepfeed.resources import ArtifactStoreResource
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource


def build_drift_sensor(interval_s: int = 900) -> dg.SensorDefinition:
    """On an alert: a drift_report_job run (which fails, carrying the evidence) and, by the
    policy's ``drift_on_alert``, a retrain as well: ``full`` (full_chain_job) or
    ``incremental`` (the waiting feedback sealed now and trained on at once, instead of
    when the batch fills). One alert per window end hour (run key)."""

    @dg.sensor(
        name="drift_sensor",
        jobs=[drift_report_job, full_chain_job, incremental_job],
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="KS drift of prompt features (Holm-corrected) or a wide confidence spread over the "
        "recent inference window -> drift_report_job, plus a retrain if the "
        "monitoring_policy resource says so. Thresholds: the monitoring_policy resource.",
    )
    def drift_sensor(
        context: dg.SensorEvaluationContext,
        locations: LocationsResource,
        artifact_store: ArtifactStoreResource,
        monitoring_policy: MonitoringPolicyResource,
    ):
        policy = monitoring_policy
        store = artifact_store.store()
        corpus = store.latest("clean_corpus")
        if corpus is None:
            return dg.SkipReason("no clean_corpus artifact yet to take reference features from")
        end = dt.datetime.now(dt.timezone.utc)
        summarizer = shared_summarizer() if policy.drift_embedding_features else None
        reference = reference_features(store.local_path(corpus), summarizer=summarizer)
        evidence = drift_evidence(
            locations.inference_log(),
            reference,
            end,
            policy.drift_window_hours,
            policy.drift_alpha,
            policy.drift_min_samples,
            "holm",
            policy.confidence_std,
        )
        if not evidence.alert:
            return dg.SkipReason(evidence.reason)
        key = end.strftime("%Y%m%dT%H")
        config = {
            "window_hours": policy.drift_window_hours,
            "window_end": end.isoformat(),
            "alpha": policy.drift_alpha,
            "min_samples": policy.drift_min_samples,
            "confidence_std": policy.confidence_std,
            "serving_home": locations.home,
            "embedding_features": policy.drift_embedding_features,
        }
        tags = {"deepfeed/alert": "drift", "deepfeed/drift_reason": evidence.reason[:200]}
        requests = [
            dg.RunRequest(
                run_key=f"drift-{key}",
                job_name="drift_report_job",
                tags=tags,
                run_config={"ops": {"drift_report": {"config": config}}},
            )
        ]
        context.log.warning("drift alert: %s", evidence.reason)
        if policy.drift_on_alert == "full":
            requests.append(dg.RunRequest(run_key=f"drift-retrain-{key}", job_name="full_chain_job", tags=tags))
        elif policy.drift_on_alert == "incremental":
            batch = locations.feedback_store().seal_batch()
            if batch is None:
                context.log.warning("no feedback waiting: nothing for an incremental run to train on")
            else:
                # Same run key as feedback_sensor's, so the batch never trains twice.
                requests.append(
                    dg.RunRequest(
                        run_key=f"feedback-{batch}", job_name="incremental_job", partition_key=batch, tags=tags
                    )
                )
                return dg.SensorResult(
                    run_requests=requests, dynamic_partitions_requests=[feedback_batches.build_add_request([batch])]
                )
        return requests

    return drift_sensor


drift_sensor = build_drift_sensor()
