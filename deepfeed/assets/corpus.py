"""raw_corpus and clean_corpus: reading the sources and cleaning them, every record
accounted for, every change in the audit ledger; the 3C and k-anonymity asset checks.

raw_corpus has one dynamic partition per source of the corpus root (a sub-folder, or
``_root`` for the files lying in the root itself): a new or changed source is ingested
alone (corpus_source_sensor or `deepfeed ingest` registers and requests it). clean_corpus
is not partitioned: it reads the latest artifact of every registered source, so the full
retrain always sees all data."""

import functools
import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, IO_RETRY, counts_table, fail, handle_metadata
from deepfeed.core.data.clean_pipeline import DatasetBudget, NothingLeft, Progress, clean_sources
from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner, quarantine_entry, quasi_identifier_values
from deepfeed.core.data.corpus_checks import MAX_NOISE_RATIO, NoiseCounter, glossary_leftovers
from deepfeed.core.data.coverage import CoverageConfig, MiniLMEncoder, share_by_tag
from deepfeed.core.data.dp import DEFAULT_MAX_EPSILON, PrivacyBudgetExceeded
from deepfeed.core.data.glossary import load_glossary
from deepfeed.core.data.ingest import (
    QUARANTINE_BLOBS,
    BlobLimits,
    CorpusSourceError,
    add_file_counts,
    iter_files,
    quarantine_schema,
    record_schema,
    source_files,
    source_fingerprint,
    write_quarantine_blobs,
)
from deepfeed.core.data.kanonymity import check_k_anonymity
from deepfeed.core.data.quality import QualityConfig
from deepfeed.core.data.raw_store import ENV_KEY, ENV_PATH, RawStore, RawStoreError, default_raw_store_path
from deepfeed.core.platform.artifacts import ArtifactHandle, ArtifactStore
from deepfeed.core.platform.audit import AUDIT_CHUNK, AuditEntry, AuditLedger
from deepfeed.core.platform.progress import REPORT_SECONDS, Every
from deepfeed.core.platform.tables import TableWriter
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.pipelines.partitions import corpus_root, corpus_sources, latest_raw_versions, raw_artifact_name
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource
from deepfeed.settings import default_corpus_path

GROUP = "corpus"


def _append_audit(ledger: AuditLedger, entries: list) -> tuple[int, str]:
    for start in range(0, len(entries), AUDIT_CHUNK):
        ledger.append(entries[start : start + AUDIT_CHUNK])
    return ledger.head()


def dataset_key(sources: dict[str, ArtifactHandle]) -> str:
    """What the ε ledger charges: the contents of the raw versions read, so re-ingesting
    the same files (a new version, the same data) does not reset the budget."""
    import hashlib

    text = json.dumps(sorted((source, handle.content_hash) for source, handle in sources.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _anonymized_entry(item: tuple[str, str, str, dict[str, int]], run_id: str) -> AuditEntry:
    """The ledger entry of a record scrubbed at ingest (hashes of the texts only)."""
    record_id, before, after, kinds = item
    reason = "PII replaced by typed placeholders at ingest: " + ", ".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
    return AuditEntry.from_texts(record_id, "raw_corpus", "anonymized", reason, run_id, before, after, kinds)


class RawCorpusConfig(dg.Config):
    corpus_path: str = Field(
        default_factory=default_corpus_path,
        description="Corpus root: a folder whose sub-folders are the sources (one partition each; files lying in the "
        "root "
        "form the source '_root'), holding JSONL/JSON/CSV/TSV/Parquet/text/Markdown records, optionally .gz; "
        "a local path "
        "or a URL such as s3://bucket/prefix (needs the fsspec driver, e.g. s3fs). "
        "Empty: the embedded chatterbot demo corpus. Env: DEEPFEED_CORPUS.",
    )
    max_record_bytes: int = Field(
        default=1_000_000, description="Records (or lines) larger than this go to the quarantine."
    )
    quarantine_blob_max_bytes: int = Field(
        default=16 * 2**20,
        description="Largest quarantined item whose raw bytes are copied into quarantine_blobs/; "
        "larger ones keep size, sha256, file and locator, and raw_ref says the bytes stayed in the source.",
    )
    quarantine_blob_budget_bytes: int = Field(
        default=2**30,
        description="Raw bytes copied into quarantine_blobs/ per ingest run, in quarantine order; past it, rows point "
        "to the source as above.",
    )
    raw_store_path: str = Field(
        default_factory=lambda: str(default_raw_store_path()),
        description="The guarded raw store: the only place raw (unscrubbed) bytes rest, here the quarantined items' "
        "(<path>/<source>/quarantine_blobs/<sha256>), folders 0700 and files 0600, Fernet-encrypted when the secret "
        f"{ENV_KEY} is set. Records in the artifact are PII-scrubbed at ingest. Env: {ENV_PATH} "
        "(default $DEEPFEED_HOME/raw_store). See docs/privacy.md.",
    )


@dg.asset(group_name=GROUP, kinds={"parquet"}, partitions_def=corpus_sources, retry_policy=IO_RETRY)
def raw_corpus(
    context: dg.AssetExecutionContext,
    config: RawCorpusConfig,
    artifact_store: ArtifactStoreResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """One source's readable records, normalized to one schema; the rest quarantined with a reason and its raw bytes."""
    source_name = context.partition_key
    root = corpus_root(config.corpus_path)
    try:
        limits = BlobLimits(config.quarantine_blob_max_bytes, config.quarantine_blob_budget_bytes)
    except ValueError as exc:
        raise fail("raw_corpus.config.quarantine_blob_max_bytes", str(exc)) from exc
    try:
        root, files = source_files(root, source_name)
    except CorpusSourceError as exc:
        raise fail("raw_corpus.config.corpus_path", f"partition {source_name!r}: {exc}") from exc
    fingerprint = source_fingerprint(files)
    try:
        raw_store = RawStore(config.raw_store_path, os.environ.get(ENV_KEY) or None)
        raw_folder = raw_store.source(source_name)
    except RawStoreError as exc:
        raise fail("raw_corpus.config.raw_store_path", str(exc)) from exc
    run_id = context.run.run_id

    # One file (or chunk of a large JSONL file) at a time, straight to disk.
    read, quarantine, per_file, anonymized, pii = 0, [], {}, [], Counter()
    counts = {"source": source_name, "fingerprint": fingerprint}
    with artifact_store.store().new_version(
        raw_artifact_name(source_name), counts, run_id=context.run.run_id
    ) as version:
        blob_bytes = 0
        with (
            TableWriter(version.path / "records.parquet", record_schema()) as records,
            TableWriter(version.path / "quarantine.parquet", quarantine_schema()) as quarantined,
        ):
            report = Every(50, seconds=REPORT_SECONDS)  # a line at least every 10 s (docs/operations.md)
            for done, (_, part) in enumerate(iter_files(files, root, config.max_record_bytes, limits), 1):
                records.write(part.records)
                quarantined.write(part.quarantine)
                # PRIVACY: the exact bytes of what could not be read, unscrubbed, so nothing is lost and a
                # fixed parser can re-read them. They go to the guarded raw store (0600/0700, encrypted
                # with a key), never into the artifact: records.parquet holds scrubbed text only, the
                # quarantine table scrubbed snippets that point into the raw store through raw_ref.
                try:
                    blob_bytes += write_quarantine_blobs(raw_folder.folder, part.blobs, raw_store.key)
                except RawStoreError as exc:
                    raise fail("raw_corpus.config.raw_store_path", str(exc)) from exc
                read += part.read
                pii.update(part.pii)
                anonymized.extend(_anonymized_entry(item, run_id) for item in part.anonymized)
                quarantine.extend({k: v for k, v in q.items() if k != "raw"} for q in part.quarantine)
                add_file_counts(per_file, part.files)
                if report.due():
                    context.log.info("source %s: %d of %d files, %d records read", source_name, done, len(files), read)
        if read == 0:
            raise fail(
                "raw_corpus.config.corpus_path",
                f"source {source_name!r} of {str(root)!r} holds no records (files found: {len(files)})",
            )
        version.counts.update(
            {
                "read": read,
                "kept": records.rows,
                "quarantined": len(quarantine),
                "files": len(per_file),
                "quarantine_blob_bytes": blob_bytes,
                "pii_replaced": sum(pii.values()),
                "raw_store": str(raw_folder.folder),
                "raw_store_encrypted": raw_folder.encrypted,
            }
        )
    context.log.info(
        "source %s: read %d records from %d files: %d kept, %d quarantined",
        source_name,
        read,
        len(per_file),
        records.rows,
        len(quarantine),
    )
    handle = version.handle
    audit = [quarantine_entry(q, run_id) for q in quarantine] + anonymized
    ledger = locations.audit_ledger()
    entries, head = len(audit), _append_audit(ledger, audit)
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "corpus_root": str(root),
            "quarantine_reasons": counts_table(Counter(q["reason"] for q in quarantine)),
            "quarantine_blobs": dg.MetadataValue.path(str(raw_folder.folder / QUARANTINE_BLOBS)),
            "pii_replaced_by_kind": counts_table(dict(pii), key="kind", value="replacements"),
            "files": counts_table({f: c["kept"] for f, c in per_file.items()}, key="file"),
            "audit_entries": entries,
            "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
            "audit_head": head[1],
        },
    )


# CleaningConfig's settings, with the glossary as a switch plus a path (the core's tri-state
# glossary_path is built from them), and the run's privacy budget and process pool.
CleanCorpusConfig = dagster_config(
    CleaningConfig,
    name="CleanCorpusConfig",
    doc="Settings of clean_corpus: filters, deduplication, glossary, PII, k-anonymity and the privacy budget.",
    exclude=("glossary_path",),
    use_glossary=(
        bool,
        Field(
            default=False,
            description="Normalize domain terms through the glossary (3C Consistency). Off by default: a domain "
            "glossary rewrites general text too (ICD-10 turns 'a slight depression in a surface' into F32); switch "
            "it on for a domain corpus, ideally scoped with glossary_tags.",
        ),
    ),
    glossary_path=(
        str,
        Field(
            default="",
            description="YAML or CSV glossary (canonical term <- variants). Empty: the shipped ICD-10 example.",
        ),
    ),
    dp_epsilon=(
        float,
        Field(
            default=DEFAULT_MAX_EPSILON,
            description="Differential-privacy budget (ε, at most 0.5) of the corpus statistics released to metadata "
            "and MLflow by this run.",
        ),
    ),
    dp_epsilon_total=(
        float,
        Field(
            default=DEFAULT_MAX_EPSILON,
            description="Total ε that may ever be spent on one dataset (the contents of the raw_corpus versions "
            "read), summed over every run in $DEEPFEED_HOME/privacy/epsilon_ledger.json. Once spent, a run "
            "re-publishes the "
            "dataset's last noisy release instead of drawing new noise (docs/privacy.md).",
        ),
    ),
    coverage_embeddings=(
        bool,
        Field(
            default=False,
            description="Also count MiniLM embedding outliers as long tail (Coverage); off: rare tags only. "
            "Opt-in: it encodes every record, ~44 vs ~950 records/s on 2 busy cores "
            "(benchmarks/bench_coverage_encoding.py).",
        ),
    ),
    workers=(
        int,
        Field(
            default=1,
            description="Processes for the stateless cleaning steps (normalize, scrub PII, glossary, language, "
            "quality); deduplication stays in order in the run's own process. 1: no pool (light, for tests and the "
            "demo); about the number of free cores for big corpora.",
        ),
    ),
    log_every_batches=(
        int,
        Field(default=10, description="Log progress (batches, records/s) every this many batches."),
    ),
)


@functools.lru_cache(maxsize=1)
def _encoder() -> MiniLMEncoder:
    # Loading takes seconds; runs in one process (tests, the demo) share it.
    return MiniLMEncoder()


def _cleaning_config(config: CleanCorpusConfig) -> CleaningConfig:
    if not 0 < config.dp_epsilon <= DEFAULT_MAX_EPSILON:
        raise fail(
            "clean_corpus.config.dp_epsilon",
            f"{config.dp_epsilon}: must be in (0, {DEFAULT_MAX_EPSILON}] (the privacy cap, docs/privacy.md)",
        )
    if not config.dp_epsilon <= config.dp_epsilon_total <= DEFAULT_MAX_EPSILON:
        raise fail(
            "clean_corpus.config.dp_epsilon_total",
            f"{config.dp_epsilon_total}: must be in [dp_epsilon={config.dp_epsilon}, {DEFAULT_MAX_EPSILON}] "
            "(docs/privacy.md)",
        )
    for name in ("workers", "batch_size", "log_every_batches"):
        if getattr(config, name) < 1:
            raise fail(f"clean_corpus.config.{name}", f"{getattr(config, name)}: must be at least 1")
    if config.use_glossary and config.glossary_path and not Path(config.glossary_path).expanduser().is_file():
        raise fail("clean_corpus.config.glossary_path", f"{config.glossary_path!r} is not a file")
    # '' switches the glossary off, None selects the shipped example (CleaningConfig.glossary_path).
    glossary = (
        (str(Path(config.glossary_path).expanduser()) if config.glossary_path else None) if config.use_glossary else ""
    )
    try:
        return to_core(config, CleaningConfig, glossary_path=glossary)
    except ValueError as exc:
        raise fail("clean_corpus.config", str(exc)) from exc


def _stats_table(values: dict[str, int], key: str) -> dg.MetadataValue:
    return counts_table(values, key=key, value="records (ε-DP, Laplace)")


def _raw_sources(context: dg.AssetExecutionContext, store: ArtifactStore) -> dict[str, ArtifactHandle]:
    """The latest raw_corpus artifact of every registered source; all of them or a failure."""
    registered = context.instance.get_dynamic_partitions(corpus_sources.name)
    if not registered:
        raise fail(
            "raw_corpus",
            f"no corpus source is registered (dynamic partitions {corpus_sources.name!r}): "
            "turn on corpus_source_sensor or run `deepfeed ingest`",
        )
    handles = latest_raw_versions(store, registered)
    missing = sorted(source for source, handle in handles.items() if handle is None)
    if missing:
        # Training on part of the data would go unnoticed; stop and name what to materialize.
        raise fail(
            "raw_corpus",
            f"registered source(s) never materialized: {', '.join(missing)} (materialize those partitions of "
            f"raw_corpus)",
        )
    return handles  # type: ignore[return-value]


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[raw_corpus], retry_policy=COMPUTE_RETRY)
def clean_corpus(
    context: dg.AssetExecutionContext,
    config: CleanCorpusConfig,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """Normalized, PII-scrubbed, glossary-normalized, deduplicated and k-anonymous records of all sources, with a
    stable train/eval split and long-tail flags; removals kept with reasons, every change in the audit ledger."""
    cleaning = _cleaning_config(config)
    store = artifact_store.store()
    sources = _raw_sources(context, store)
    run_id = context.run.run_id
    try:
        cleaner = CorpusCleaner(cleaning, run_id=run_id)
    except (OSError, ValueError) as exc:  # a glossary that does not parse, mostly
        raise fail("clean_corpus.config.glossary_path", f"{type(exc).__name__}: {exc}") from exc
    encoder = _encoder() if config.coverage_embeddings else None

    def log_progress(p: Progress) -> None:
        context.log.info(
            "%s: %d batches, %d records, %.0f records/s", p.phase, p.batches, p.records, p.records_per_second
        )

    # Sorted sources: the first copy of a duplicate, which dedup keeps, does not depend on registration order.
    paths = [store.local_path(handle) / "records.parquet" for handle in sources.values()]
    # The audit spool lives outside the artifact (whose folder is hashed) and reaches the
    # ledger only once the version is published, bracketed by publishing/published entries;
    # a crash in between is repaired here, on the next run (and by `deepfeed audit recover`).
    ledger = locations.audit_ledger()
    for line in ledger.recover(AUDIT_CHUNK):
        context.log.warning("audit recovery: %s", line)
    budget = DatasetBudget(locations.epsilon_ledger(), dataset_key(sources), config.dp_epsilon_total, run_id)
    with ledger.audited_version(store, "clean_corpus", run_id, chunk=AUDIT_CHUNK) as (version, spool):
        try:
            summary = clean_sources(
                paths,
                version.path,
                cleaner,
                audit_spool=spool,
                dp_epsilon=config.dp_epsilon,
                workers=config.workers,
                encoder=encoder,
                progress=log_progress,
                progress_every=config.log_every_batches,
                dp_budget=budget,
            )
        except NothingLeft as exc:
            raise fail("clean_corpus.config", str(exc)) from exc
        except PrivacyBudgetExceeded as exc:
            raise fail("clean_corpus.config.dp_epsilon_total", str(exc)) from exc
        at_ingest = sum(h.counts.get("pii_replaced", 0) for h in sources.values())
        counts = {
            "read": sum(h.counts.get("read", 0) for h in sources.values()),
            "quarantined": sum(h.counts.get("quarantined", 0) for h in sources.values()),
            "kept_in": summary.kept_in,
            "cleaned": summary.cleaned,
            "removed": summary.removed,
            "changed": summary.changed,
            "train": summary.train,
            "eval": summary.eval,
            # Raw text is scrubbed at ingest; what cleaning still finds (raw_corpus versions
            # written before that, or text that turns into PII once normalized) comes on top.
            "pii_replaced_at_ingest": at_ingest,
            "pii_replaced": sum(summary.pii.values()) + at_ingest,
            "glossary_replaced": sum(summary.glossary.values()),
            # What the checks re-run with: the settings this version was cleaned under.
            "min_chars": cleaning.min_chars,
            "max_chars": cleaning.max_chars,
            "near_duplicate_threshold": cleaning.near_duplicate_threshold,
            "glossary": "off" if cleaning.glossary_path == "" else (cleaning.glossary_path or "builtin"),
            "glossary_tags": list(cleaning.glossary_tags),
            "quasi_identifiers": list(cleaning.quasi_identifiers),
            "k": cleaning.k,
            # The raw_corpus versions read, so the accounting check and lineage see exactly these.
            "sources": {source: h.version for source, h in sources.items()},
        }
        version.counts.update(counts)
        statistics, accountant = summary.statistics, summary.accountant
        reused = summary.dp_reused_from_run
        dp_release = f"re-published from run {reused} (ε total spent)" if reused else "new"
        (version.path / "statistics_dp.json").write_text(
            json.dumps({**statistics, "privacy": accountant.to_dict()}, indent=2, ensure_ascii=False)
        )
    handle = version.handle
    entries = spool.count
    head = ledger.head()

    # Only noisy statistics reach MLflow: its runs are read far more widely than the data.
    # The total is the sum of the noisy per-language counts (post-processing, no extra ε).
    dp_metrics = {f"corpus_dp_lang_{k}": v for k, v in statistics["languages"].items()}
    dp_metrics.update({f"corpus_dp_length_{k}": v for k, v in statistics["length_histogram"].items()})
    dp_metrics["corpus_dp_records"] = sum(statistics["languages"].values())
    mlflow.log(
        context,
        params={
            "data_hash": handle.content_hash,
            "audit_head": head[1],
            "dp_release": dp_release,
            **config.model_dump(),
        },
        metrics={
            **dp_metrics,
            "corpus_dp_epsilon_spent": accountant.spent,
            "corpus_dp_epsilon_budget": accountant.epsilon_budget,
            "corpus_dp_epsilon_spent_on_dataset": summary.dp_dataset_spent,
        },
        artifacts=[store.local_path(handle) / "statistics_dp.json"],
    )
    context.log.info(
        "cleaned %d of %d records (%s); %d audit entries",
        summary.cleaned,
        summary.kept_in,
        dict(summary.reasons),
        entries,
    )
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "sources": _sources_table(sources),
            "removed_reasons": counts_table(dict(summary.reasons)),
            "pii_replaced_by_kind": counts_table(dict(summary.pii), key="kind", value="replacements"),
            "glossary_terms_normalized": counts_table(
                dict(summary.glossary), key="canonical term", value="replacements"
            ),
            "k_anonymity": dg.MetadataValue.json(summary.kanonymity or {"quasi_identifiers": []}),
            "languages_dp": _stats_table(statistics["languages"], "language"),
            "tags_dp": _stats_table(statistics["tags"], "tag"),
            "length_histogram_dp": _stats_table(statistics["length_histogram"], "characters"),
            "dp_epsilon_spent": accountant.spent,
            "dp_epsilon_budget": accountant.epsilon_budget,
            "dp_epsilon_spent_on_dataset": summary.dp_dataset_spent,
            "dp_epsilon_total": config.dp_epsilon_total,
            "dp_release": dp_release,
            "audit_entries": entries,
            "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
            "audit_head": head[1],
        },
    )


def latest_raw_materialization(instance: dg.DagsterInstance, source: str) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=raw_corpus.key, asset_partitions=[source]), limit=1
    ).records
    return records[0].asset_materialization


def _sources_table(sources: dict[str, ArtifactHandle]) -> dg.MetadataValue:
    lines = ["| source | version | read | kept | quarantined |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {s} | {h.version} | {h.counts.get('read')} | {h.counts.get('kept')} | {h.counts.get('quarantined')} |"
        for s, h in sources.items()
    ]
    return dg.MetadataValue.md("\n".join(lines))


def _released_statistics(artifact_store: ArtifactStoreResource, handle: ArtifactHandle) -> dict:
    path = artifact_store.store().local_path(handle) / "statistics_dp.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _rows(store, handle: ArtifactHandle, name: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(store.local_path(handle) / name).metadata.num_rows


def _record_batches(
    artifact_store: ArtifactStoreResource,
    handle: ArtifactHandle,
    columns: Optional[list[str]] = None,
    batch_size: int = 4096,
):
    """The cleaned records in Arrow batches (only `columns`), so a check holds one batch at a time."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(artifact_store.store().local_path(handle) / "records.parquet").iter_batches(
        batch_size=batch_size, columns=columns
    ):
        yield batch.to_pylist()


def _records(artifact_store: ArtifactStoreResource, handle: ArtifactHandle, columns: Optional[list[str]] = None):
    return (record for batch in _record_batches(artifact_store, handle, columns) for record in batch)


@dg.asset_check(
    asset=raw_corpus,
    blocking=True,
    description="Every record read is kept or quarantined: rows read = rows kept + rows quarantined, counted in the "
    "written files of this run's source.",
)
def raw_corpus_accounting(
    context: dg.AssetCheckExecutionContext, artifact_store: ArtifactStoreResource
) -> dg.AssetCheckResult:
    # Not an input: Dagster would load the value of every partition; this run's source is the one checked.
    source = context.op_execution_context.partition_key
    materialization = latest_raw_materialization(context.instance, source)
    store = artifact_store.store()
    # "path" is the IO manager's (the pickled handle); the version names the artifact.
    uri = str(store.root / raw_artifact_name(source) / materialization.metadata["version"].value)
    kept, quarantined = _rows(store, uri, "records.parquet"), _rows(store, uri, "quarantine.parquet")
    read = materialization.metadata["read"].value
    return dg.AssetCheckResult(
        passed=read == kept + quarantined,
        metadata={"source": source, "read": read, "kept_rows": kept, "quarantined_rows": quarantined},
    )


@dg.asset_check(
    asset=clean_corpus,
    blocking=True,
    description="Every record is accounted for: kept (summed over the raw_corpus versions of all sources it read) = "
    "cleaned + removed-with-reason, counted in the written files.",
)
def clean_corpus_accounting(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifact_store.store()
    versions = clean_corpus.counts.get("sources") or {}
    kept = sum(_rows(store, str(store.root / raw_artifact_name(s) / v), "records.parquet") for s, v in versions.items())
    cleaned, removed = _rows(store, clean_corpus, "records.parquet"), _rows(store, clean_corpus, "removed.parquet")
    balanced = bool(versions) and kept == cleaned + removed
    return dg.AssetCheckResult(
        passed=balanced,
        metadata={"sources": len(versions), "kept": kept, "cleaned": cleaned, "removed": removed},
        description=None if balanced else "records were lost between raw_corpus and clean_corpus",
    )


@dg.asset_check(
    asset=clean_corpus,
    blocking=True,
    description="3C Consistency: no glossary variant remains un-normalized in any text field.",
)
def clean_corpus_consistency(
    clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource
) -> dg.AssetCheckResult:
    glossary_setting = clean_corpus.counts.get("glossary", "builtin")
    if glossary_setting == "off":
        return dg.AssetCheckResult(
            passed=True,
            description="glossary normalization is off (clean_corpus.config.use_glossary)",
            metadata={"glossary": "off"},
        )
    glossary = load_glossary(None if glossary_setting == "builtin" else glossary_setting)
    left = Counter()
    scope = clean_corpus.counts.get("glossary_tags") or []
    for batch in _record_batches(artifact_store, clean_corpus, ["prompt", "response", "text", "tags"]):
        left.update(glossary_leftovers(batch, glossary, scope))
    return dg.AssetCheckResult(
        passed=not left,
        metadata={
            "glossary": glossary_setting,
            "scope": ", ".join(scope) or "all records",
            "terms": len(glossary),
            "records_with_variants": sum(left.values()),
            "variants_left_by_term": counts_table(dict(left), key="canonical term"),
        },
    )


@dg.asset_check(
    asset=clean_corpus,
    blocking=False,
    description="3C Coverage: share of long-tail records (rare tags, MiniLM embedding outliers) per domain tag; warns "
    "below 5%.",
)
def clean_corpus_coverage(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    # tee lags zip by one row: one pass over the table's two columns, batch by batch.
    rows, again = itertools.tee(_records(artifact_store, clean_corpus, ["tags", "long_tail"]))
    shares = share_by_tag(rows, (r.get("long_tail") for r in again))
    minimum = CoverageConfig().min_long_tail_share
    low = sorted(tag for tag, s in shares.items() if s["share"] < minimum)
    # Records per tag are protected statistics: the table shows the ε-DP counts released
    # with this version (statistics_dp.json), never the exact ones, and no long-tail counts.
    noisy = _released_statistics(artifact_store, clean_corpus).get("tags", {})
    lines = ["| tag | records (ε-DP) | long-tail share |", "|---|---:|---:|"]
    lines += [f"| {tag} | {noisy.get(tag, 'not released')} | {s['share']:.0%} |" for tag, s in shares.items()]
    return dg.AssetCheckResult(
        passed=not low,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"long-tail share below {minimum:.0%} for: {', '.join(low)}" if low else None,
        metadata={
            "share_by_tag": dg.MetadataValue.md("\n".join(lines)),
            "tags_below_minimum": len(low),
            "definition": "rare tag (<= 2% of records) or MiniLM embedding outlier (robust z < -2 of cosine "
            "similarity to the tag centroid)",
        },
    )


@dg.asset_check(
    asset=clean_corpus,
    blocking=True,
    description="3C Cleanliness: noise ratio (every quality detector, exact and near-duplicates, PII leftovers) "
    "re-run on the output is below 0.3%.",
)
def clean_corpus_cleanliness(
    clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource
) -> dg.AssetCheckResult:
    counts = clean_corpus.counts
    quality = QualityConfig(min_length=counts.get("min_chars", 4), max_length=counts.get("max_chars", 8000))
    noise = NoiseCounter(quality, counts.get("near_duplicate_threshold", 0.9))
    for batch in _record_batches(artifact_store, clean_corpus):
        noise.add(batch)
    report = noise.report
    return dg.AssetCheckResult(
        passed=report.passed,
        description=None if report.passed else f"noise ratio {report.ratio:.3%} is not below {MAX_NOISE_RATIO:.1%}",
        metadata={
            "noise_ratio": report.ratio,
            "noisy_records": report.noisy,
            "records": report.records,
            "flagged_by_detector": counts_table(report.flagged, key="detector"),
        },
    )


@dg.asset_check(
    asset=clean_corpus,
    blocking=True,
    description="k-anonymity: every equivalence class of the configured quasi-identifiers has at least k records.",
)
def clean_corpus_k_anonymity(
    clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource
) -> dg.AssetCheckResult:
    qi: Optional[list] = clean_corpus.counts.get("quasi_identifiers") or []
    k = clean_corpus.counts.get("k", 20)
    if not qi:
        return dg.AssetCheckResult(
            passed=True,
            description="no quasi-identifiers configured (clean_corpus.config.quasi_identifiers)",
            metadata={"quasi_identifiers": 0},
        )
    # Class sizes need every record's QI values at once: only those are held, read from the meta column batch by batch.
    values = quasi_identifier_values(_records(artifact_store, clean_corpus, ["meta"]), qi)
    ok, smallest, bad = check_k_anonymity(pd.DataFrame(values), qi, k=k)
    return dg.AssetCheckResult(
        passed=ok,
        metadata={"k": k, "smallest_class": smallest, "classes_below_k": bad, "quasi_identifiers": ", ".join(qi)},
    )
