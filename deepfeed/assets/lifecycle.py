"""candidate_model: the one trained version a run evaluates, whichever stream trained it.

compressed_model and evaluation_report read their checkpoint from this asset, so a full
retrain (finetuned_model) and an incremental round (incremental_model, one partition per
feedback batch) go through the same compression, evaluation and gate before either may
serve (docs/model-lifecycle.md). Entering evaluation also suspends a `challenger` alias the
version may hold: only a pass (champion_model) gives it back.
"""

import json

import dagster as dg

from deepfeed.assets.common import fail, handle_metadata
from deepfeed.core.loop.lifecycle import revoke_challenger
from deepfeed.core.platform.artifacts import MANIFEST, ArtifactHandle
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource

GROUP = "training"
STREAMS = ("finetuned_model", "incremental_model")


def _latest_materialization(instance: dg.DagsterInstance, name: str):
    records = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
    return records[0] if records else None


def _handle(store, name: str, metadata: dict) -> ArtifactHandle:
    version = metadata["version"].value
    manifest = json.loads((store.root / name / version / MANIFEST).read_text())
    manifest.pop("run_id", None)
    handle = ArtifactHandle(**manifest)
    registered = metadata.get("mlflow_model_version")
    if registered is None:
        raise fail(name, f"version {version} was never registered in MLflow; it cannot be evaluated for serving")
    return ArtifactHandle(**{**handle.to_dict(), "counts": {**handle.counts, "mlflow_version": str(registered.value)}})


@dg.asset(group_name=GROUP, kinds={"mlflow"}, deps=list(STREAMS))
def candidate_model(
    context: dg.AssetExecutionContext,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """The trained version this run evaluates: the finetuned_model or incremental_model checkpoint materialized in
    this run, else the newer of the two (re-evaluating by hand). Registered, not yet servable."""
    records = {name: _latest_materialization(context.instance, name) for name in STREAMS}
    records = {name: r for name, r in records.items() if r is not None}
    if not records:
        raise fail("candidate_model", "nothing trained yet: materialize finetuned_model or incremental_model first")
    this_run = {n: r for n, r in records.items() if r.run_id == context.run.run_id}
    name, record = max((this_run or records).items(), key=lambda item: item[1].timestamp)
    handle = _handle(artifact_store.store(), name, record.asset_materialization.metadata)
    version = handle.counts["mlflow_version"]
    # Under evaluation: not servable until its gate passes again.
    suspended = revoke_challenger(
        mlflow.client(),
        mlflow.registered_model_name,
        version,
        f"entering evaluation in run {context.run.run_id[:8]}",
        context.run.run_id,
        locations.audit_ledger(),
        stage="registered",
    )
    context.log.info(
        "candidate: %s %s (registry v%s)%s",
        name,
        handle.version,
        version,
        "; its challenger alias is suspended until the gate passes" if suspended else "",
    )
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "stream": name,
            "mlflow_model_version": version,
            "challenger_alias_suspended": suspended,
        },
    )
