"""Production monitoring assets: the drift report and the A/B test report."""

import datetime as dt
import json

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import fail, handle_metadata
from deepfeed.core.data.embedding_summary import shared_summarizer
from deepfeed.core.loop.abtest import ARMS, ABTestSettings, analyze_ab
from deepfeed.core.loop.lifecycle import conclude_ab_test
from deepfeed.core.loop.monitoring import DriftSettings, ab_events, drift_evidence, reference_features
from deepfeed.core.loop.registry import CHALLENGER
from deepfeed.core.loop.rollback import BASELINE_N_TAG, BASELINE_STD_TAG, BASELINE_TAG
from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource

GROUP = "monitoring"


def _serving_locations(serving_home: str, locations: LocationsResource) -> LocationsResource:
    """The home the server writes to: the run's `serving_home` when a sensor or an operator
    names one (a server with its own home), else the code location's `locations`."""
    return LocationsResource(home=serving_home) if serving_home else locations


DriftReportConfig = dagster_config(
    DriftSettings,
    name="DriftReportConfig",
    doc="Settings of drift_report: the window of the inference log and the drift test.",
    window_end=(str, Field(default="", description="End of the window, ISO 8601 UTC (empty = now).")),
    fail_on_alert=(
        bool,
        Field(default=True, description="Fail the run on an alert, so run-failure notifications carry the evidence."),
    ),
    serving_home=(
        str,
        Field(default="", description="Folder the server writes inference_log/ into (empty = $DEEPFEED_HOME)."),
    ),
)


def _markdown_features(evidence: dict) -> str:
    rows = ["| feature | n ref | n cur | KS D | p | p adj | drifted |", "|---|---:|---:|---:|---:|---:|---|"]
    for f in evidence["input"]["features"].values():
        if f["skipped"]:
            rows.append(f"| {f['feature']} | {f['n_reference']} | {f['n_current']} | | | | skipped: {f['skipped']} |")
        else:
            rows.append(
                f"| {f['feature']} | {f['n_reference']} | {f['n_current']} | {f['statistic']:.3f} | "
                f"{f['p_value']:.3g} | {f['p_adjusted']:.3g} | {'**yes**' if f['drifted'] else 'no'} |"
            )
    return "\n".join(rows)


@dg.asset(group_name=GROUP, kinds={"python"})
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    artifact_store: ArtifactStoreResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """KS drift of prompt features (inference log vs the training split) and the spread of output confidence."""
    serving = _serving_locations(config.serving_home, locations)
    store = artifact_store.store()
    corpus = store.latest("clean_corpus")
    if corpus is None:
        raise fail("clean_corpus", "no clean_corpus artifact yet: the reference features come from its training split")
    try:
        end = dt.datetime.fromisoformat(config.window_end) if config.window_end else dt.datetime.now(dt.timezone.utc)
    except ValueError as exc:
        raise fail("drift_report.config.window_end", f"not an ISO 8601 time: {config.window_end!r}") from exc
    end = end if end.tzinfo else end.replace(tzinfo=dt.timezone.utc)
    try:
        summarizer = shared_summarizer() if config.embedding_features else None
        reference = reference_features(store.local_path(corpus), summarizer=summarizer)
        settings = to_core(config, DriftSettings)
        evidence = drift_evidence(
            serving.inference_log(),
            reference,
            end,
            settings.window_hours,
            settings.alpha,
            settings.min_samples,
            settings.correction,
            settings.confidence_std,
        ).to_dict()
    except ValueError as exc:
        raise fail("drift_report.config", str(exc)) from exc
    with store.new_version(
        "drift_report", {"alert": evidence["alert"], "requests": evidence["requests"]}, run_id=context.run.run_id
    ) as version:
        (version.path / "drift.json").write_text(json.dumps(evidence, indent=2, default=str))
    metadata = {
        **handle_metadata(version.handle),
        "alert": evidence["alert"],
        "reason": evidence["reason"],
        "reference_version": corpus.version,
        "features": dg.MetadataValue.md(_markdown_features(evidence)),
        "confidence_std": evidence["output"]["std"],
        "window_start": evidence["window_start"],
        "window_end": evidence["window_end"],
    }
    if evidence["alert"] and config.fail_on_alert:
        # The report is kept (new version above); the failed run is the notification.
        raise dg.Failure(description=f"drift alert: {evidence['reason']}", metadata=metadata)
    return dg.Output(version.handle, metadata=metadata)


ABTestReportConfig = dagster_config(
    ABTestSettings,
    name="ABTestReportConfig",
    doc="Settings of ab_test_report: the sequential test and whether its decision is acted on.",
    act_on_decision=(
        bool,
        Field(
            default=True,
            description="promote: the decision goes through the promotion gate (challenger becomes champion "
            "if it holds); keep, or a failed promotion gate: the challenger alias is removed.",
        ),
    ),
    serving_home=(
        str,
        Field(default="", description="Folder the server writes feedback/ and audit/ into (empty = $DEEPFEED_HOME)."),
    ),
)


@dg.asset(group_name=GROUP, kinds={"mlflow"})
def ab_test_report(
    context: dg.AssetExecutionContext,
    config: ABTestReportConfig,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """Sequential test (mSPRT) of per-user mean ratings, challenger vs champion; its decision feeds the
    promotion gate."""
    serving = _serving_locations(config.serving_home, locations)
    aliases = {arm: mlflow.version_by_alias(arm) for arm in ARMS}
    missing = [arm for arm, v in aliases.items() if v is None]
    if missing:
        raise fail("mlflow", f"no A/B test is running: alias(es) {missing} missing on {mlflow.registered_model_name!r}")
    versions = {arm: str(v.version) for arm, v in aliases.items()}
    events = ab_events(serving.feedback_store().all_records(), versions)
    try:
        settings = to_core(config, ABTestSettings)
        result = analyze_ab(
            events,
            settings.min_hours,
            settings.alpha,
            split=settings.split if settings.split >= 0 else None,
            min_users_per_arm=settings.min_users_per_arm,
            mixture_sd=settings.mixture_sd,
        )
    except ValueError as exc:
        raise fail("ab_test_report.config", str(exc)) from exc
    report = {**result.to_dict(), "versions": versions}
    client = mlflow.client()
    client.set_model_version_tag(mlflow.registered_model_name, versions[CHALLENGER], "ab_decision", result.decision)
    action, verdict = "none", None
    if config.act_on_decision:
        action, verdict = conclude_ab_test(
            client,
            mlflow.registered_model_name,
            versions,
            result.decision,
            result.reason,
            context.run.run_id,
            serving.audit_ledger(),
        )
    if verdict is not None:
        report["promotion_gate"] = {"passed": verdict.passed, "conditions": verdict.conditions}
    if verdict is not None and verdict.passed:
        # The level the A/B test measured (and its spread and count) is what the performance
        # sensor's rollback test holds the new champion to.
        ratings = events.loc[events["arm"] == CHALLENGER, "metric"]
        for tag, value in (
            (BASELINE_TAG, ratings.mean()),
            (BASELINE_STD_TAG, ratings.std(ddof=1)),
            (BASELINE_N_TAG, len(ratings)),
        ):
            client.set_model_version_tag(mlflow.registered_model_name, versions[CHALLENGER], tag, str(value))
    report["action"] = action
    store = artifact_store.store()
    with store.new_version(
        "ab_test_report", {"decision": result.decision, "events": len(events)}, run_id=context.run.run_id
    ) as version:
        (version.path / "ab_test.json").write_text(json.dumps(report, indent=2, default=str))
    arms_md = "| arm | version | events | users | mean | std |\n|---|---|---:|---:|---:|---:|\n" + "\n".join(
        f"| {arm} | v{versions[arm]} | {s['events']} | {s['users']} | {s['mean']} | {s['std']} |"
        for arm, s in report["arms"].items()
    )
    mlflow.log(
        context,
        metrics={
            k: report[k]
            for k in ("p_value", "welch_p", "difference", "cohen_d", "duration_hours")
            if isinstance(report.get(k), (int, float))
        },
    )
    return dg.Output(
        version.handle,
        metadata={
            **handle_metadata(version.handle),
            "decision": result.decision,
            "reason": result.reason,
            "action": action,
            "p_value": report.get("p_value"),
            "difference": report.get("difference"),
            "ci_low": report.get("ci_low"),
            "ci_high": report.get("ci_high"),
            "duration_hours": report["duration_hours"],
            "test": report["test"],
            "looks": report["looks"],
            "welch_p_fixed_horizon": report.get("welch_p"),
            "promotion_gate": dg.MetadataValue.json(report.get("promotion_gate", {})),
            "arms": dg.MetadataValue.md(arms_md),
        },
    )
