"""augmented_corpus: the train split plus augmented children with provenance, each child
in the audit ledger."""

import json
from collections import Counter, defaultdict

import dagster as dg

from deepfeed.assets.common import COMPUTE_RETRY, counts_table, fail, handle_metadata
from deepfeed.core.augment.corpus import audit_entries, augment_corpus
from deepfeed.core.augment.setup import AugmentSettings, AugmentSettingsError, build_augmenters, needs_model
from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.core.platform.audit import AUDIT_CHUNK
from deepfeed.core.platform.tables import read_table, write_table
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource

GROUP = "augment"


# Every AugmentSettings setting, with its default and description.
AugmentedCorpusConfig = dagster_config(
    AugmentSettings,
    name="AugmentedCorpusConfig",
    doc="Settings of augmented_corpus: contextual synonyms, structural reordering and FGSM children, and their gates.",
)


def _summary_table(records: list[dict]) -> dg.MetadataValue:
    similarities = defaultdict(list)
    for record in records:
        if record["technique"] != "original" and record.get("similarity") is not None:
            similarities[record["technique"]].append(record["similarity"])
    lines = ["| technique | children | mean similarity | min similarity |", "|---|---:|---:|---:|"]
    lines += [f"| {t} | {len(v)} | {sum(v) / len(v):.3f} | {min(v):.3f} |" for t, v in sorted(similarities.items())]
    return dg.MetadataValue.md("\n".join(lines) if similarities else "_no augmented records_")


def _examples(records: list[dict], per_technique: int = 2) -> dg.MetadataValue:
    parents = {r["record_id"]: r for r in records if r["technique"] == "original"}
    shown: Counter = Counter()
    lines = ["| technique | original | augmented |", "|---|---|---|"]
    for child in records:
        if child["technique"] == "original" or shown[child["technique"]] >= per_technique:
            continue
        shown[child["technique"]] += 1
        side = json.loads(child.get("aug_params") or "{}").get("side")
        field = side or ("response" if child.get("kind") == "pair" else "text")
        cell = lambda s: (s or "")[:160].replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {child['technique']} | {cell(parents[child['parent_id']][field])} | {cell(child[field])} |")
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(group_name=GROUP, kinds={"parquet"}, retry_policy=COMPUTE_RETRY)
def augmented_corpus(
    context: dg.AssetExecutionContext,
    config: AugmentedCorpusConfig,
    clean_corpus: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    model_source: ModelSourceResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """Train-split originals plus contextual-synonym, structural and FGSM children with provenance;
    eval records are never augmented (no leakage); every child is an `augmented` entry in the audit ledger."""
    store = artifact_store.store()
    records = read_table(store.local_path(clean_corpus) / "records.parquet")
    settings = to_core(config, AugmentSettings)
    try:
        plan = settings.plan()
        augmenters = build_augmenters(settings, model_source.resolve() if needs_model(settings) else None)
    except AugmentSettingsError as exc:
        raise fail(f"augmented_corpus.config.{exc.field}", str(exc)) from exc
    result = augment_corpus(records, plan, augmenters)
    techniques = Counter(r["technique"] for r in result.records)
    counts = {
        "records": len(result.records),
        "originals": techniques.get("original", 0),
        "augmented": len(result.records) - techniques.get("original", 0),
    }
    run_id = context.run.run_id
    # As clean_corpus does: entries are spooled outside the artifact and reach the ledger
    # once the version is published, bracketed by publishing/published entries (a crash in
    # between is repaired by the next run's recovery or `deepfeed audit recover`).
    ledger = locations.audit_ledger()
    for line in ledger.recover(AUDIT_CHUNK):
        context.log.warning("audit recovery: %s", line)
    with ledger.audited_version(store, "augmented_corpus", run_id, counts, AUDIT_CHUNK) as (version, spool):
        write_table(version.path / "records.parquet", result.records)
        spool.write(audit_entries(result.records, run_id))
    handle = version.handle
    entries = spool.count
    head = ledger.head()
    mlflow.log(
        context,
        params={**config.model_dump(), "audit_head": head[1]},
        metrics={f"augmented_{k}": v for k, v in techniques.items()},
    )
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "techniques": counts_table(dict(techniques), key="technique"),
            "similarity": _summary_table(result.records),
            "examples": _examples(result.records),
            "not_augmented": counts_table(result.skipped),
            "audit_entries": entries,
            "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
            "audit_head": head[1],
        },
    )
