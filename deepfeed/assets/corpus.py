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
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, IO_RETRY, counts_table, fail, handle_metadata
from deepfeed.core.artifacts import ArtifactHandle, ArtifactStore
from deepfeed.core.audit import AuditLedger
from deepfeed.core.clean_pipeline import AuditSpool, NothingLeft, Progress, clean_sources
from deepfeed.core.cleaning import CleaningConfig, CorpusCleaner, quarantine_entry, quasi_identifier_values
from deepfeed.core.corpus_checks import MAX_NOISE_RATIO, NoiseCounter, glossary_leftovers
from deepfeed.core.coverage import CoverageConfig, MiniLMEncoder, share_by_tag
from deepfeed.core.demo_corpus import ensure_demo_corpus
from deepfeed.core.dp import DEFAULT_MAX_EPSILON
from deepfeed.core.glossary import load_glossary
from deepfeed.core.ingest import (
    QUARANTINE_BLOBS, BlobLimits, CorpusSourceError, add_file_counts, as_source_path, iter_files, quarantine_schema, record_schema, source_files,
    source_fingerprint, write_quarantine_blobs,
)
from deepfeed.core.kanonymity import check_k_anonymity
from deepfeed.core.offline import deepfeed_home
from deepfeed.core.quality import QualityConfig
from deepfeed.core.tables import TableWriter
from deepfeed.resources import ArtifactStoreResource, MlflowResource
from deepfeed.settings import default_corpus_path, demo_corpus_dir

GROUP = "corpus"
AUDIT_CHUNK = 10_000


def audit_ledger() -> AuditLedger:
    """The ledger every stage appends to ($DEEPFEED_HOME/audit/ledger.jsonl)."""
    return AuditLedger(deepfeed_home() / "audit" / "ledger.jsonl")


def _append_audit(entries: list) -> tuple[int, str]:
    ledger = audit_ledger()
    for start in range(0, len(entries), AUDIT_CHUNK):
        ledger.append(entries[start:start + AUDIT_CHUNK])
    return ledger.head()


corpus_sources = dg.DynamicPartitionsDefinition(name="corpus_source")


def raw_artifact_name(source: str) -> str:
    """Artifact name of one source's raw_corpus versions (artifact root/raw_corpus/<source>/<version>)."""
    return f"raw_corpus/{source}"


def corpus_root(corpus_path: str) -> Path:
    """The configured corpus root, or the embedded demo corpus (written on first use)."""
    return as_source_path(corpus_path) if corpus_path else ensure_demo_corpus(demo_corpus_dir())


def latest_raw_versions(store: ArtifactStore, sources: list[str]) -> dict[str, Optional[ArtifactHandle]]:
    return {source: store.latest(raw_artifact_name(source)) for source in sorted(sources)}


class RawCorpusConfig(dg.Config):
    corpus_path: str = Field(
        default_factory=default_corpus_path,
        description="Corpus root: a folder whose sub-folders are the sources (one partition each; files lying in the root "
        "form the source '_root'), holding JSONL/JSON/CSV/TSV/Parquet/text/Markdown records, optionally .gz; a local path "
        "or a URL such as s3://bucket/prefix (needs the fsspec driver, e.g. s3fs). "
        "Empty: the embedded chatterbot demo corpus. Env: DEEPFEED_CORPUS.",
    )
    max_record_bytes: int = Field(default=1_000_000, description="Records (or lines) larger than this go to the quarantine.")
    quarantine_blob_max_bytes: int = Field(default=16 * 2**20, description="Largest quarantined item whose raw bytes are copied into quarantine_blobs/; "
                                           "larger ones keep size, sha256, file and locator, and raw_ref says the bytes stayed in the source.")
    quarantine_blob_budget_bytes: int = Field(default=2**30, description="Raw bytes copied into quarantine_blobs/ per ingest run, in quarantine order; past it, rows point to the source as above.")


@dg.asset(group_name=GROUP, kinds={"parquet"}, partitions_def=corpus_sources, retry_policy=IO_RETRY)
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, artifact_store: ArtifactStoreResource) -> dg.Output[ArtifactHandle]:
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

    # One file (or chunk of a large JSONL file) at a time, straight to disk.
    read, quarantine, per_file = 0, [], {}
    counts = {"source": source_name, "fingerprint": fingerprint}
    with artifact_store.store().new_version(raw_artifact_name(source_name), counts, run_id=context.run.run_id) as version:
        blob_bytes = 0
        with TableWriter(version.path / "records.parquet", record_schema()) as records, \
                TableWriter(version.path / "quarantine.parquet", quarantine_schema()) as quarantined:
            for done, (_, part) in enumerate(iter_files(files, root, config.max_record_bytes, limits), 1):
                records.write(part.records)
                quarantined.write(part.quarantine)
                # PRIVACY: the exact bytes of what could not be read, unscrubbed, so nothing is lost and a
                # fixed parser can re-read them. This folder is quarantine-only: nothing downstream reads
                # it (clean_corpus reads records.parquet) and it is never fed to training. It is raw input,
                # as records.parquet of this artifact is; the quarantine table people read holds scrubbed
                # snippets and points here through raw_ref.
                blob_bytes += write_quarantine_blobs(version.path, part.blobs)
                read += part.read
                quarantine.extend({k: v for k, v in q.items() if k != "raw"} for q in part.quarantine)
                add_file_counts(per_file, part.files)
                if done % 50 == 0:
                    context.log.info("source %s: %d of %d files, %d records read", source_name, done, len(files), read)
        if read == 0:
            raise fail("raw_corpus.config.corpus_path", f"source {source_name!r} of {str(root)!r} holds no records (files found: {len(files)})")
        version.counts.update({"read": read, "kept": records.rows, "quarantined": len(quarantine), "files": len(per_file),
                               "quarantine_blob_bytes": blob_bytes})
    context.log.info("source %s: read %d records from %d files: %d kept, %d quarantined", source_name, read, len(per_file), records.rows, len(quarantine))
    handle = version.handle
    entries, head = len(quarantine), _append_audit([quarantine_entry(q, context.run.run_id) for q in quarantine])
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "corpus_root": str(root),
            "quarantine_reasons": counts_table(Counter(q["reason"] for q in quarantine)),
            "quarantine_blobs": dg.MetadataValue.path(f"{handle.uri}/{QUARANTINE_BLOBS}"),
            "files": counts_table({f: c["kept"] for f, c in per_file.items()}, key="file"),
            "audit_entries": entries,
            "audit_ledger": dg.MetadataValue.path(str(audit_ledger().path)),
            "audit_head": head[1],
        },
    )


class CleanCorpusConfig(dg.Config):
    min_chars: int = Field(default=4, description="Shortest record kept, in effective characters of prompt + response "
                           "(whitespace not counted, a Han character counts 3). Low on purpose: dialog answers such as 'Yes.' are data.")
    max_chars: int = Field(default=8000, description="Records longer than this (effective characters) are removed.")
    eval_fraction: float = Field(default=0.1, description="Share of records held out for evaluation (stable by content hash).")
    split_seed: int = Field(default=17, description="Seed of the held-out split; change it only to draw a new split.")
    near_duplicate_threshold: float = Field(default=0.9, description="MinHash Jaccard similarity (character 5-grams) from which a record is a near-duplicate of an earlier one; in (0, 0.99].")
    use_glossary: bool = Field(default=True, description="Normalize domain terms through the glossary (3C Consistency).")
    glossary_path: str = Field(default="", description="YAML or CSV glossary (canonical term <- variants). Empty: the shipped ICD-10 example.")
    scrub_pii: bool = Field(default=True, description="Replace PII by typed placeholders (<EMAIL>, <PHONE>, <ID_CN>, ...) in every text field, tag and metadata value.")
    quasi_identifiers: list[str] = Field(default_factory=list, description="Metadata columns (keys of the record's meta) that are quasi-identifiers, e.g. age, gender, region, admission_date; generalized/suppressed to k-anonymity.")
    k: int = Field(default=20, description="k of k-anonymity over the quasi-identifiers (SPEC: at least 20).")
    max_suppression: float = Field(default=0.05, description="Largest share of records k-anonymity may suppress before it generalizes further.")
    dp_epsilon: float = Field(default=DEFAULT_MAX_EPSILON, description="Differential-privacy budget (ε, at most 0.5) of the corpus statistics released to metadata and MLflow.")
    coverage_embeddings: bool = Field(default=False, description="Also count MiniLM embedding outliers as long tail (Coverage); off: rare tags only. "
                                      "Opt-in: it encodes every record, ~44 vs ~950 records/s on 2 busy cores (benchmarks/bench_coverage_encoding.py).")
    workers: int = Field(default=1, description="Processes for the stateless cleaning steps (normalize, scrub PII, glossary, language, quality); "
                         "deduplication stays in order in the run's own process. 1: no pool (light, for tests and the demo); about the number of free cores for big corpora.")
    batch_size: int = Field(default=4096, description="Records per Arrow batch streamed through cleaning; memory holds about two batches of records besides the dedup index.")
    log_every_batches: int = Field(default=10, description="Log progress (batches, records/s) every this many batches.")


@functools.lru_cache(maxsize=1)
def _encoder() -> MiniLMEncoder:
    # Loading takes seconds; runs in one process (tests, the demo) share it.
    return MiniLMEncoder()


def _cleaning_config(config: CleanCorpusConfig) -> CleaningConfig:
    if not 0 < config.dp_epsilon <= DEFAULT_MAX_EPSILON:
        raise fail("clean_corpus.config.dp_epsilon", f"{config.dp_epsilon}: must be in (0, {DEFAULT_MAX_EPSILON}] (SPEC: ε ≤ 0.5)")
    for name in ("workers", "batch_size", "log_every_batches"):
        if getattr(config, name) < 1:
            raise fail(f"clean_corpus.config.{name}", f"{getattr(config, name)}: must be at least 1")
    if config.use_glossary and config.glossary_path and not Path(config.glossary_path).expanduser().is_file():
        raise fail("clean_corpus.config.glossary_path", f"{config.glossary_path!r} is not a file")
    try:
        return CleaningConfig(
            min_chars=config.min_chars, max_chars=config.max_chars, eval_fraction=config.eval_fraction, split_seed=config.split_seed,
            near_duplicate_threshold=config.near_duplicate_threshold,
            glossary_path=(str(Path(config.glossary_path).expanduser()) if config.glossary_path else None) if config.use_glossary else "",
            scrub_pii=config.scrub_pii, quasi_identifiers=tuple(config.quasi_identifiers), k=config.k, max_suppression=config.max_suppression,
            batch_size=config.batch_size,
        )
    except ValueError as exc:
        raise fail("clean_corpus.config", str(exc)) from exc


def _stats_table(values: dict[str, int], key: str) -> dg.MetadataValue:
    return counts_table(values, key=key, value="records (ε-DP, Laplace)")


def _raw_sources(context: dg.AssetExecutionContext, store: ArtifactStore) -> dict[str, ArtifactHandle]:
    """The latest raw_corpus artifact of every registered source; all of them or a failure."""
    registered = context.instance.get_dynamic_partitions(corpus_sources.name)
    if not registered:
        raise fail("raw_corpus", f"no corpus source is registered (dynamic partitions {corpus_sources.name!r}): "
                   "turn on corpus_source_sensor or run `deepfeed ingest`")
    handles = latest_raw_versions(store, registered)
    missing = sorted(source for source, handle in handles.items() if handle is None)
    if missing:
        # Training on part of the data would go unnoticed; stop and name what to materialize.
        raise fail("raw_corpus", f"registered source(s) never materialized: {', '.join(missing)} (materialize those partitions of raw_corpus)")
    return handles  # type: ignore[return-value]


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[raw_corpus], retry_policy=COMPUTE_RETRY)
def clean_corpus(
    context: dg.AssetExecutionContext,
    config: CleanCorpusConfig,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
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
        context.log.info("%s: %d batches, %d records, %.0f records/s", p.phase, p.batches, p.records, p.records_per_second)

    # Sorted sources: the first copy of a duplicate, which dedup keeps, does not depend on registration order.
    paths = [store.local_path(handle) / "records.parquet" for handle in sources.values()]
    scratch = deepfeed_home() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    # The audit spool lives outside the artifact (whose folder is hashed) and reaches the
    # ledger only after the version is published: a failed run leaves both untouched.
    with tempfile.TemporaryDirectory(prefix="clean_corpus-", dir=scratch) as spool_dir:
        spool = AuditSpool(Path(spool_dir) / "audit.jsonl")
        with store.new_version("clean_corpus", {}, run_id=run_id) as version:
            try:
                summary = clean_sources(paths, version.path, cleaner, audit_spool=spool, dp_epsilon=config.dp_epsilon, workers=config.workers,
                                        encoder=encoder, progress=log_progress, progress_every=config.log_every_batches)
            except NothingLeft as exc:
                raise fail("clean_corpus.config", str(exc)) from exc
            counts = {
                "read": sum(h.counts.get("read", 0) for h in sources.values()),
                "quarantined": sum(h.counts.get("quarantined", 0) for h in sources.values()),
                "kept_in": summary.kept_in,
                "cleaned": summary.cleaned,
                "removed": summary.removed,
                "changed": summary.changed,
                "train": summary.train,
                "eval": summary.eval,
                "long_tail": summary.long_tail,
                "pii_replaced": sum(summary.pii.values()),
                "glossary_replaced": sum(summary.glossary.values()),
                # What the checks re-run with: the settings this version was cleaned under.
                "min_chars": cleaning.min_chars,
                "max_chars": cleaning.max_chars,
                "near_duplicate_threshold": cleaning.near_duplicate_threshold,
                "glossary": "off" if cleaning.glossary_path == "" else (cleaning.glossary_path or "builtin"),
                "quasi_identifiers": list(cleaning.quasi_identifiers),
                "k": cleaning.k,
                # The raw_corpus versions read, so the accounting check and lineage see exactly these.
                "sources": {source: h.version for source, h in sources.items()},
            }
            version.counts.update(counts)
            statistics, accountant = summary.statistics, summary.accountant
            (version.path / "statistics_dp.json").write_text(json.dumps({**statistics, "privacy": accountant.to_dict()}, indent=2, ensure_ascii=False))
        handle = version.handle
        ledger = audit_ledger()
        entries = spool.replay(ledger.append, AUDIT_CHUNK)
        head = ledger.head()

    dp_metrics = {f"corpus_dp_lang_{k}": v for k, v in statistics["languages"].items()}
    dp_metrics.update({f"corpus_dp_length_{k}": v for k, v in statistics["length_histogram"].items()})
    mlflow.log(
        context,
        params={"data_hash": handle.content_hash, "audit_head": head[1], **config.model_dump()},
        metrics={**{f"corpus_{k}": v for k, v in counts.items() if isinstance(v, int)}, **dp_metrics,
                 "corpus_dp_epsilon_spent": accountant.spent, "corpus_dp_epsilon_budget": accountant.epsilon_budget},
        artifacts=[store.local_path(handle) / "statistics_dp.json"],
    )
    context.log.info("cleaned %d of %d records (%s); %d audit entries", summary.cleaned, summary.kept_in, dict(summary.reasons), entries)
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "sources": _sources_table(sources),
            "removed_reasons": counts_table(dict(summary.reasons)),
            "pii_replaced_by_kind": counts_table(dict(summary.pii), key="kind", value="replacements"),
            "glossary_terms_normalized": counts_table(dict(summary.glossary), key="canonical term", value="replacements"),
            "k_anonymity": dg.MetadataValue.json(summary.kanonymity or {"quasi_identifiers": []}),
            "languages_dp": _stats_table(statistics["languages"], "language"),
            "tags_dp": _stats_table(statistics["tags"], "tag"),
            "length_histogram_dp": _stats_table(statistics["length_histogram"], "characters"),
            "dp_epsilon_spent": accountant.spent,
            "dp_epsilon_budget": accountant.epsilon_budget,
            "audit_entries": entries,
            "audit_ledger": dg.MetadataValue.path(str(audit_ledger().path)),
            "audit_head": head[1],
        },
    )


def latest_raw_materialization(instance: dg.DagsterInstance, source: str) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=raw_corpus.key, asset_partitions=[source]), limit=1).records
    return records[0].asset_materialization


def _sources_table(sources: dict[str, ArtifactHandle]) -> dg.MetadataValue:
    lines = ["| source | version | read | kept | quarantined |", "|---|---|---:|---:|---:|"]
    lines += [f"| {s} | {h.version} | {h.counts.get('read')} | {h.counts.get('kept')} | {h.counts.get('quarantined')} |" for s, h in sources.items()]
    return dg.MetadataValue.md("\n".join(lines))


def _rows(store, handle: ArtifactHandle, name: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(store.local_path(handle) / name).metadata.num_rows


def _record_batches(artifact_store: ArtifactStoreResource, handle: ArtifactHandle, columns: Optional[list[str]] = None, batch_size: int = 4096):
    """The cleaned records in Arrow batches (only `columns`), so a check holds one batch at a time."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(artifact_store.store().local_path(handle) / "records.parquet").iter_batches(batch_size=batch_size, columns=columns):
        yield batch.to_pylist()


def _records(artifact_store: ArtifactStoreResource, handle: ArtifactHandle, columns: Optional[list[str]] = None):
    return (record for batch in _record_batches(artifact_store, handle, columns) for record in batch)


@dg.asset_check(asset=raw_corpus, blocking=True, description="Every record read is kept or quarantined: rows read = rows kept + rows quarantined, counted in the written files of this run's source.")
def raw_corpus_accounting(context: dg.AssetCheckExecutionContext, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
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


@dg.asset_check(asset=clean_corpus, blocking=True, description="Every record is accounted for: kept (summed over the raw_corpus versions of all sources it read) = cleaned + removed-with-reason, counted in the written files.")
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


@dg.asset_check(asset=clean_corpus, blocking=True, description="3C Consistency: no glossary variant remains un-normalized in any text field.")
def clean_corpus_consistency(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    glossary_setting = clean_corpus.counts.get("glossary", "builtin")
    if glossary_setting == "off":
        return dg.AssetCheckResult(passed=True, description="glossary normalization is off (clean_corpus.config.use_glossary)", metadata={"glossary": "off"})
    glossary = load_glossary(None if glossary_setting == "builtin" else glossary_setting)
    left = Counter()
    for batch in _record_batches(artifact_store, clean_corpus, ["prompt", "response", "text"]):
        left.update(glossary_leftovers(batch, glossary))
    return dg.AssetCheckResult(
        passed=not left,
        metadata={"glossary": glossary_setting, "terms": len(glossary), "records_with_variants": sum(left.values()),
                  "variants_left_by_term": counts_table(dict(left), key="canonical term")},
    )


@dg.asset_check(asset=clean_corpus, blocking=False, description="3C Coverage: share of long-tail records (rare tags, MiniLM embedding outliers) per domain tag; warns below 5%.")
def clean_corpus_coverage(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    # tee lags zip by one row: one pass over the table's two columns, batch by batch.
    rows, again = itertools.tee(_records(artifact_store, clean_corpus, ["tags", "long_tail"]))
    shares = share_by_tag(rows, (r.get("long_tail") for r in again))
    minimum = CoverageConfig().min_long_tail_share
    low = sorted(tag for tag, s in shares.items() if s["share"] < minimum)
    lines = ["| tag | records | long tail | share |", "|---|---:|---:|---:|"]
    lines += [f"| {tag} | {s['records']} | {s['long_tail']} | {s['share']:.1%} |" for tag, s in shares.items()]
    return dg.AssetCheckResult(
        passed=not low,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"long-tail share below {minimum:.0%} for: {', '.join(low)}" if low else None,
        metadata={"share_by_tag": dg.MetadataValue.md("\n".join(lines)), "tags_below_minimum": len(low),
                  "definition": "rare tag (<= 2% of records) or MiniLM embedding outlier (robust z < -2 of cosine similarity to the tag centroid)"},
    )


@dg.asset_check(asset=clean_corpus, blocking=True, description="3C Cleanliness: noise ratio (every quality detector, exact and near-duplicates, PII leftovers) re-run on the output is below 0.3%.")
def clean_corpus_cleanliness(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    counts = clean_corpus.counts
    quality = QualityConfig(min_length=counts.get("min_chars", 4), max_length=counts.get("max_chars", 8000))
    noise = NoiseCounter(quality, counts.get("near_duplicate_threshold", 0.9))
    for batch in _record_batches(artifact_store, clean_corpus):
        noise.add(batch)
    report = noise.report
    return dg.AssetCheckResult(
        passed=report.passed,
        description=None if report.passed else f"noise ratio {report.ratio:.3%} is not below {MAX_NOISE_RATIO:.1%}",
        metadata={"noise_ratio": report.ratio, "noisy_records": report.noisy, "records": report.records,
                  "flagged_by_detector": counts_table(report.flagged, key="detector")},
    )


@dg.asset_check(asset=clean_corpus, blocking=True, description="k-anonymity: every equivalence class of the configured quasi-identifiers has at least k records.")
def clean_corpus_k_anonymity(clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    qi: Optional[list] = clean_corpus.counts.get("quasi_identifiers") or []
    k = clean_corpus.counts.get("k", 20)
    if not qi:
        return dg.AssetCheckResult(passed=True, description="no quasi-identifiers configured (clean_corpus.config.quasi_identifiers)", metadata={"quasi_identifiers": 0})
    # Class sizes need every record's QI values at once: only those are held, read from the meta column batch by batch.
    values = quasi_identifier_values(_records(artifact_store, clean_corpus, ["meta"]), qi)
    ok, smallest, bad = check_k_anonymity(pd.DataFrame(values), qi, k=k)
    return dg.AssetCheckResult(passed=ok, metadata={"k": k, "smallest_class": smallest, "classes_below_k": bad, "quasi_identifiers": ", ".join(qi)})
