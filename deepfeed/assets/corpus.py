"""raw_corpus and clean_corpus: reading the sources and cleaning them, every record accounted for."""

from collections import Counter
from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import counts_table, fail, handle_metadata
from deepfeed.core.artifacts import ArtifactHandle
from deepfeed.core.cleaning import CleaningConfig, clean_records
from deepfeed.core.demo_corpus import ensure_demo_corpus
from deepfeed.core.ingest import QUARANTINE_FIELDS, RECORD_FIELDS, CorpusSourceError, ingest_folder
from deepfeed.core.tables import read_table, write_table
from deepfeed.resources import ArtifactStoreResource, MlflowResource
from deepfeed.settings import default_corpus_path, demo_corpus_dir

GROUP = "corpus"


class RawCorpusConfig(dg.Config):
    corpus_path: str = Field(
        default_factory=default_corpus_path,
        description="Folder (or file) of JSONL/JSON/CSV/TSV/Parquet/text/Markdown records. "
        "Empty: the embedded chatterbot demo corpus. Env: DEEPFEED_CORPUS.",
    )
    max_record_bytes: int = Field(default=1_000_000, description="Records larger than this go to the quarantine.")


@dg.asset(group_name=GROUP, kinds={"parquet"})
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, artifact_store: ArtifactStoreResource) -> dg.Output[ArtifactHandle]:
    """Every readable record of the corpus, normalized to one schema; the rest quarantined with a reason."""
    source = Path(config.corpus_path).expanduser() if config.corpus_path else ensure_demo_corpus(demo_corpus_dir())
    try:
        result = ingest_folder(source, max_record_bytes=config.max_record_bytes)
    except CorpusSourceError as exc:
        raise fail("raw_corpus.config.corpus_path", str(exc)) from exc
    if result.read == 0:
        raise fail("raw_corpus.config.corpus_path", f"{str(source)!r} holds no records (files found: {len(result.files)})")
    context.log.info("read %d records from %d files: %d kept, %d quarantined", result.read, len(result.files), len(result.records), len(result.quarantine))

    counts = {"read": result.read, "kept": len(result.records), "quarantined": len(result.quarantine), "files": len(result.files)}
    with artifact_store.store().new_version("raw_corpus", counts, run_id=context.run.run_id) as version:
        write_table(version.path / "records.parquet", result.records, RECORD_FIELDS)
        write_table(version.path / "quarantine.parquet", result.quarantine, QUARANTINE_FIELDS)
    handle = version.handle
    langs = Counter(r["lang"] or "unknown" for r in result.records)
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "source": str(source),
            "quarantine_reasons": counts_table(Counter(q["reason"] for q in result.quarantine)),
            "languages": counts_table(dict(langs), key="language"),
            "files": counts_table({f: c["kept"] for f, c in result.files.items()}, key="file"),
        },
    )


class CleanCorpusConfig(dg.Config):
    min_chars: int = Field(default=2, description="Records shorter than this (prompt + response) are removed.")
    max_chars: int = Field(default=8000, description="Records longer than this are removed.")
    eval_fraction: float = Field(default=0.1, description="Share of records held out for evaluation (stable by content hash).")
    split_seed: int = Field(default=17, description="Seed of the held-out split; change it only to draw a new split.")


@dg.asset(group_name=GROUP, kinds={"parquet"})
def clean_corpus(
    context: dg.AssetExecutionContext,
    config: CleanCorpusConfig,
    raw_corpus: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Normalized, deduplicated records with a stable train/eval split; removals kept with reasons."""
    store = artifact_store.store()
    records = read_table(store.local_path(raw_corpus) / "records.parquet")
    result = clean_records(records, CleaningConfig(**config.model_dump()))
    if not result.records:
        raise fail("clean_corpus.config", f"cleaning removed all {len(records)} records: {result.reasons()}")
    splits = Counter(r["split"] for r in result.records)
    counts = {
        "kept_in": len(records),
        "cleaned": len(result.records),
        "removed": len(result.removed),
        "changed": sum(1 for r in result.records if r["changed"]),
        "train": splits.get("train", 0),
        "eval": splits.get("eval", 0),
    }
    with store.new_version("clean_corpus", counts, run_id=context.run.run_id) as version:
        write_table(version.path / "records.parquet", result.records)
        write_table(version.path / "removed.parquet", result.removed, ("record_id", "source", "reason", "detail"))
    handle = version.handle
    mlflow.log(context, params={"data_hash": handle.content_hash, **config.model_dump()}, metrics={f"corpus_{k}": v for k, v in counts.items()})
    context.log.info("cleaned %d of %d records (%s)", len(result.records), len(records), result.reasons())
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "removed_reasons": counts_table(result.reasons()),
            "languages": counts_table(dict(Counter(r["lang"] or "unknown" for r in result.records)), key="language"),
        },
    )


def _rows(store, handle: ArtifactHandle, name: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(store.local_path(handle) / name).metadata.num_rows


@dg.asset_check(asset=raw_corpus, blocking=True, description="Every record read is kept or quarantined: rows read = rows kept + rows quarantined, counted in the written files.")
def raw_corpus_accounting(raw_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifact_store.store()
    kept, quarantined = _rows(store, raw_corpus, "records.parquet"), _rows(store, raw_corpus, "quarantine.parquet")
    read = raw_corpus.counts["read"]
    return dg.AssetCheckResult(
        passed=read == kept + quarantined,
        metadata={"read": read, "kept_rows": kept, "quarantined_rows": quarantined},
    )


@dg.asset_check(asset=clean_corpus, blocking=True, additional_ins={"raw_corpus": dg.AssetIn("raw_corpus")}, description="Every record is accounted for: kept = cleaned + removed-with-reason, counted in the written files.")
def clean_corpus_accounting(raw_corpus: ArtifactHandle, clean_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifact_store.store()
    kept = _rows(store, raw_corpus, "records.parquet")
    cleaned, removed = _rows(store, clean_corpus, "records.parquet"), _rows(store, clean_corpus, "removed.parquet")
    balanced = kept == cleaned + removed
    return dg.AssetCheckResult(
        passed=balanced,
        metadata={"kept": kept, "cleaned": cleaned, "removed": removed},
        description=None if balanced else "records were lost between raw_corpus and clean_corpus",
    )
