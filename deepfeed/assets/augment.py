"""augmented_corpus: the train split plus augmented children with provenance, each child
in the audit ledger."""

import json
from collections import Counter, defaultdict
from dataclasses import fields

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, counts_table, fail, handle_metadata
from deepfeed.core.augment.corpus import audit_entries, augment_corpus
from deepfeed.core.augment.setup import AugmentSettings, AugmentSettingsError, build_augmenters, needs_model
from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.core.platform.audit import AUDIT_CHUNK
from deepfeed.core.platform.tables import read_table, write_table
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource

GROUP = "augment"


class AugmentedCorpusConfig(dg.Config):
    synonym_ratio: float = Field(
        default=0.5,
        description="Share of train records that get a contextual-synonym child (0 switches the technique off).",
    )
    structural_ratio: float = Field(
        default=0.5,
        description="Share of train records that get a sentence- or clause-reordered child, where order carries no meaning.",
    )
    fgsm_ratio: float = Field(
        default=0.1,
        description="Share of train records that get an FGSM adversarial child from the base model's gradients.",
    )
    fgsm_max_records: int = Field(
        default=16,
        description="Most records attacked with FGSM per run (each costs a forward and backward pass of the model); the rest are skipped with the reason.",
    )
    synonym_rate: float = Field(default=0.15, description="Share of the eligible words replaced in a synonym child.")
    similarity_threshold: float = Field(
        default=0.85,
        description="Least cosine similarity (MiniLM sentence embeddings) between a synonym or FGSM child and its parent, where MiniLM can read the text.",
    )
    meaning_lm: bool = Field(
        default=True,
        description="Judge the meaning of children MiniLM cannot read (mostly [UNK] to it: Chinese) by the base causal LM's log-probability change; off: those children stand on the lexical gate alone.",
    )
    lm_threshold: float = Field(
        default=-12.0,
        description="Least log-probability change (nats, child minus parent) under the base LM for a child the LM judges.",
    )
    max_unk_share: float = Field(
        default=0.1,
        description="Largest share of [UNK] word pieces in MiniLM's reading of a text for MiniLM to judge it; above it the LM judges.",
    )
    synonym_variants: int = Field(
        default=2,
        description="Candidate variants scored per record; the most similar one above the threshold is kept (or, with synonym_lm_rank, the most probable one).",
    )
    synonym_lm_rank: bool = Field(
        default=False,
        description="Rank the synonym variants that pass the similarity threshold by their sentence log-probability under the base causal LM (batched; slower, so off by default). MiniLM similarity stays the filter. Lexicon path only: not with masked_lm_path.",
    )
    masked_lm_path: str = Field(
        default="",
        description="Local masked-LM folder (BERT-style, with its head): use nlpaug's fill-mask replacement instead of WordNet/Cilin. Empty: lexicons.",
    )
    glossary_path: str = Field(
        default="",
        description="Glossary (.yaml/.csv) whose terms are never altered. Empty: the shipped ICD-10 example.",
    )
    fgsm_epsilon: float = Field(default=0.1, description="FGSM step size ε in embedding space (at most 0.5).")
    fgsm_max_modification_rate: float = Field(
        default=0.15,
        description="Most words an FGSM child may change, as a share of its words (at least one swap where any word may change).",
    )
    fgsm_side: str = Field(
        default="prompt",
        description="Which side of a pair FGSM perturbs: 'prompt' (robustness: the reference answer stays the target) or 'response' (measurement only: it teaches perturbed answers).",
    )
    max_chars: int = Field(default=2000, description="Longer records are passed through unaugmented (reason recorded).")
    near_duplicate_threshold: float = Field(
        default=0.9,
        description="Children whose MinHash Jaccard similarity to an existing record reaches this are dropped.",
    )
    seed: int = Field(default=0, description="Seed of every random choice, for reproducible corpora.")


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
    settings = AugmentSettings(**{f.name: getattr(config, f.name) for f in fields(AugmentSettings)})
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
