"""clean_corpus as a stream: every source's records.parquet in Arrow record batches,
through :func:`cleaning.clean_stream`, to Parquet files written as the batches go.

Memory holds a batch or two of records and, per kept record, a few compact values
(domain tags, language, text length, quasi-identifier values, one similarity per
long-tail group), plus the dedup index; never the records themselves. What needs the
whole corpus is decided between two passes:

1. every batch is cleaned; kept records go to a staging Parquet file, removed ones to
   ``removed.parquet``, audit entries to a JSONL spool (outside the artifact), and, with
   an encoder, embeddings to a float16 file (read back through ``np.memmap``) while the
   per-tag centroid sums are added up;
2. between the passes: k-anonymity from the quasi-identifier columns, rare tags from
   the tag counts, embedding outliers from the memmap read in blocks
   (:func:`coverage.embedding_outliers_chunked`, the math the in-memory
   ``long_tail_reasons`` uses), the ε-DP statistics from the compact columns;
3. the staging file is read again in batches: k-anonymity suppression and
   generalization are applied, the long-tail reason set, and ``records.parquet`` written.

The result equals ``clean_records`` + ``long_tail_reasons`` + ``release_statistics`` on
the same records (same order, same audit entries in the same order); the audit spool
is appended to the ledger only by the caller, once the artifact is published
(:meth:`AuditSpool.replay`), so a failed run leaves the ledger untouched.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfeed.core.data.cleaning import (
    REMOVED_FIELDS,
    CleaningResult,
    CorpusCleaner,
    KAnonPlan,
    clean_stream,
    quasi_identifier_values,
    training_text,
)
from deepfeed.core.data.corpus_checks import CorpusColumns, release_statistics
from deepfeed.core.data.coverage import (
    CentroidSums,
    CoverageConfig,
    domain_tags,
    embedding_outliers_chunked,
    long_tail_reason,
    rare_tags_from_counts,
)
from deepfeed.core.data.dp import EpsilonLedger, PrivacyAccountant
from deepfeed.core.data.ingest import record_schema
from deepfeed.core.platform.audit import AuditSpool
from deepfeed.core.platform.progress import REPORT_SECONDS, Every, Heartbeat
from deepfeed.core.platform.tables import TableWriter

# The ingest schema (deepfeed.core.data.ingest.record_schema) and what cleaning adds. Fixed
# rather than inferred per batch: a batch whose texts are all None must not make the
# column null-typed and clash with the next batch.
CLEAN_SCHEMA = pa.schema(
    list(record_schema()) + [("changed", pa.bool_()), ("split", pa.string()), ("long_tail", pa.string())]
)
REMOVED_SCHEMA = pa.schema([(name, pa.string()) for name in REMOVED_FIELDS])
_STAGING = ".records.staging.parquet"
_EMBEDDINGS = ".embeddings.f16"
_BLOCK = 8192  # rows of the embedding memmap read at a time


class NothingLeft(ValueError):
    """Cleaning (with k-anonymity suppression) removed every record."""


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Progress:
    phase: str  # "clean" (pass 1) or "write" (pass 2)
    batches: int
    records: int  # records read (pass 1) or written / suppressed (pass 2) so far
    seconds: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CleanSummary:
    kept_in: int = 0  # records read from the sources
    cleaned: int = 0
    removed: int = 0
    changed: int = 0
    train: int = 0
    eval: int = 0
    long_tail: int = 0
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    glossary: Counter = field(default_factory=Counter)
    kanonymity: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    accountant: PrivacyAccountant | None = None
    audit_entries: int = 0
    # With a DatasetBudget: ε spent on the dataset over all runs, and the run whose
    # release was re-published when this one could not spend more (None: a new release).
    dp_dataset_spent: float | None = None
    dp_reused_from_run: str | None = None


@dataclass(frozen=True)
class DatasetBudget:
    """Where the ε spent on a dataset accumulates across runs, and how much may be."""

    ledger: EpsilonLedger
    dataset: str  # what identifies the data (e.g. a hash of the raw versions' contents)
    total: float
    run_id: str


def _read_batches(paths: Sequence[Path], batch_size: int, counter: list[int]) -> Iterator[list[dict[str, Any]]]:
    """Rows of every file in order, re-cut into batches of exactly `batch_size` across file
    boundaries (as clean_records batches the concatenated records), one file open at a time."""
    allowed = set(CLEAN_SCHEMA.names)
    buffer: list[dict[str, Any]] = []
    for path in paths:
        parquet = pq.ParquetFile(path)
        unknown = sorted(set(parquet.schema_arrow.names) - allowed)
        if unknown:
            # The output schema is fixed: an unknown column would be dropped silently.
            raise ValueError(
                f"{path}: unexpected column(s) {unknown}; "
                f"a raw_corpus records table has {sorted(allowed - {'changed', 'split', 'long_tail'})}"
            )
        for batch in parquet.iter_batches(batch_size=batch_size):
            rows = batch.to_pylist()
            counter[0] += len(rows)
            buffer.extend(rows)
            while len(buffer) >= batch_size:
                yield buffer[:batch_size]
                buffer = buffer[batch_size:]
    if buffer:
        yield buffer


class _Interner:
    """One shared object per distinct value, so a million records carrying the same few
    tags, languages or ages cost a pointer each."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def __call__(self, value: Any) -> Any:
        try:
            # By type too: 1, 1.0 and True are equal keys but must stay what they are.
            return self._seen.setdefault((type(value), value), value)
        except TypeError:  # unhashable (a list in the metadata): kept as is
            return value


@dataclass
class CleaningRun:
    """What both passes share: the cleaner, the audit spool, the removed-records table,
    the running summary, and where progress goes."""

    cleaner: CorpusCleaner
    audit_spool: AuditSpool
    removed_writer: TableWriter
    summary: CleanSummary = field(default_factory=CleanSummary)
    progress: Callable[[Progress], None] | None = None
    progress_every: int = 10
    progress_seconds: float | None = REPORT_SECONDS

    def record_removed(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.removed_writer.write(rows)
            self.summary.removed += len(rows)
            self.summary.reasons.update(row["reason"] for row in rows)

    def pass_progress(self, phase: str) -> "PassProgress":
        return PassProgress(self, phase)


class PassProgress:
    """One pass's progress lines: every `progress_every` batches or `progress_seconds`,
    whichever comes first, from a heartbeat thread while one batch outlasts the interval
    (the coverage embeddings on a loaded machine), and a closing line when the pass ends."""

    def __init__(self, run: CleaningRun, phase: str):
        self.run, self.phase = run, phase
        self.batches = self.records = 0
        self.started = time.perf_counter()
        self.due = Every(run.progress_every, seconds=run.progress_seconds)
        self._heartbeat = Heartbeat(self.due, self.report) if run.progress is not None else None

    def report(self) -> None:
        if self.run.progress is not None:
            self.run.progress(Progress(self.phase, self.batches, self.records, time.perf_counter() - self.started))

    def __enter__(self) -> "PassProgress":
        if self._heartbeat is not None:
            self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._heartbeat is not None:
            self._heartbeat.__exit__(*exc)
        if exc[0] is None:
            self.report()

    def advance(self, batches: int, records: int) -> None:
        """After each batch: the counts so far, and a line when one is due."""
        self.batches, self.records = batches, records
        if self.run.progress is not None and self.due.due():
            self.report()


@dataclass
class StagedCorpus:
    """What pass 1 keeps of the kept records besides the staging file: compact columns,
    quasi-identifier values, and the embeddings' file and per-tag centroid sums."""

    columns: CorpusColumns
    qi_values: dict[str, list[Any]]
    sums: CentroidSums | None = None
    embedded: int = 0  # rows in the embeddings file
    dim: int = 0


@dataclass
class PassDecisions:
    """What the second pass applies: k-anonymity's plan, and per final record its long-tail inputs."""

    plan: KAnonPlan | None
    final_columns: CorpusColumns
    rare: set[str]
    outliers: np.ndarray  # bool per final record


def clean_pass(
    run: CleaningRun,
    parquet_paths: Sequence[Path],
    staging_writer: TableWriter,
    embeddings_path: Path,
    workers: int = 1,
    encoder: Encoder | None = None,
) -> StagedCorpus:
    """Pass 1: clean every batch; kept records go to the staging table, removed ones to
    the removed table, audit entries to the spool, embeddings (with an encoder) to a
    float16 file; only compact columns stay in memory."""
    config, summary = run.cleaner.config, run.summary
    qi = list(config.quasi_identifiers)
    intern = _Interner()
    staged = StagedCorpus(CorpusColumns(), {c: [] for c in qi}, CentroidSums() if encoder is not None else None)
    columns = staged.columns
    read = [0]
    with (
        embeddings_path.open("wb") as embeddings_file,  # stays empty without an encoder
        run.pass_progress("clean") as progress,
    ):
        for result in clean_stream(_read_batches(parquet_paths, config.batch_size, read), run.cleaner, workers):
            summary.batches += 1
            run.record_removed(result.removed)
            run.audit_spool.write(result.audit)
            summary.pii.update(result.pii)
            summary.glossary.update(result.glossary)
            records = result.records
            if records:
                staging_writer.write(records)
                start = len(columns)
                for record in records:
                    columns.languages.append(intern(record.get("lang") or "other"))
                    columns.tag_lists.append(intern(tuple(domain_tags(record))))
                    columns.lengths.append(len(training_text(record)))
                quasi_identifier_values(records, qi, into=staged.qi_values)
                for values in staged.qi_values.values():
                    values[start:] = [intern(v) for v in values[start:]]
                if encoder is not None:
                    _embed(encoder, records, columns.tag_lists[start:], embeddings_file, staged)
            progress.advance(summary.batches, read[0])
        progress.records = read[0]  # the closing line counts every record read
    summary.kept_in = read[0]
    return staged


def _embed(encoder: Encoder, records: list[dict[str, Any]], tag_lists, embeddings_file, staged: StagedCorpus) -> None:
    """Append the records' embeddings (float16) to the file and to the centroid sums."""
    vectors = np.asarray(encoder.encode([training_text(r) for r in records]))
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ValueError(f"encoder returned embeddings of shape {vectors.shape} for {len(records)} texts")
    half = vectors.astype(np.float16)
    embeddings_file.write(np.ascontiguousarray(half).tobytes())
    staged.sums.add(tag_lists, half)
    staged.embedded, staged.dim = staged.embedded + len(half), half.shape[1]


def decide_between_passes(
    run: CleaningRun,
    staged: StagedCorpus,
    embeddings_path: Path,
    coverage: CoverageConfig = CoverageConfig(),
) -> PassDecisions:
    """What needs every kept record, from the compact columns: k-anonymity's plan (raises
    NothingLeft when it would suppress everything), rare tags, embedding outliers."""
    summary = run.summary
    plan = run.cleaner.kanonymity_plan(staged.qi_values) if staged.qi_values else None
    staged.qi_values = {}  # no longer needed: free them before the embeddings are read
    columns = staged.columns
    kept = len(columns)
    keep = np.ones(kept, bool)
    if plan is not None:
        keep[list(plan.suppressed)] = False
        summary.kanonymity = plan.summary
    final = int(keep.sum())
    if final == 0:
        reasons = summary.reasons + Counter({"k-anonymity suppression": kept})
        raise NothingLeft(f"cleaning removed all {summary.kept_in} records: {dict(reasons)}")
    gone = np.flatnonzero(~keep)
    gone_tags = [columns.tag_lists[i] for i in gone.tolist()]
    final_columns = columns if final == kept else columns.select(keep)
    staged.columns = final_columns
    del columns
    tag_counts = Counter(tag for tags in final_columns.tag_lists for tag in tags)
    rare = rare_tags_from_counts(tag_counts, final, coverage.rare_tag_share)
    outliers = np.zeros(final, bool)
    if staged.sums is not None and staged.embedded:
        embedded = staged.embedded
        matrix = np.memmap(embeddings_path, dtype=np.float16, mode="r", shape=(embedded, staged.dim))
        if len(gone):  # suppressed records are not part of any centroid
            staged.sums.add(gone_tags, matrix[gone], sign=-1.0)

        def blocks() -> Iterator[np.ndarray]:
            for start in range(0, embedded, _BLOCK):
                yield matrix[start : start + _BLOCK][keep[start : start + _BLOCK]]

        outliers = embedding_outliers_chunked(final_columns.tag_lists, blocks, coverage, sums=staged.sums)
        del matrix
    return PassDecisions(plan, final_columns, rare, outliers)


def release_dp_statistics(
    summary: CleanSummary,
    columns: CorpusColumns,
    dp_epsilon: float,
    dp_rng: np.random.Generator | int | None = None,
    dp_budget: DatasetBudget | None = None,
) -> None:
    """The ε-DP corpus statistics into `summary`; with a dataset budget, spent from it
    (or the earlier release re-published when the budget is used up)."""
    if dp_budget is None:
        summary.statistics, summary.accountant = release_statistics(columns, dp_epsilon, dp_rng)
        return
    released = dp_budget.ledger.release(
        dp_budget.dataset,
        dp_epsilon,
        dp_budget.total,
        dp_budget.run_id,
        lambda accountant: release_statistics(columns, dp_epsilon, dp_rng, accountant=accountant)[0],
    )
    summary.statistics, summary.accountant = released.statistics, released.accountant
    summary.dp_dataset_spent, summary.dp_reused_from_run = released.dataset_spent, released.reused_from_run


def write_pass(run: CleaningRun, staging_path: Path, records_writer: TableWriter, decisions: PassDecisions) -> None:
    """Pass 2: read the staging table again, apply k-anonymity suppression and
    generalization and the long-tail reason, and write the final records."""
    summary, plan = run.summary, decisions.plan
    index = position = batches = 0
    with run.pass_progress("write") as progress:
        for batch in pq.ParquetFile(staging_path).iter_batches(batch_size=run.cleaner.config.batch_size):
            result = CleaningResult()
            out = []
            for record in batch.to_pylist():
                if plan is None or run.cleaner.apply_kanonymity(result, record, index, plan):
                    record["long_tail"] = long_tail_reason(
                        decisions.final_columns.tag_lists[position], decisions.rare, bool(decisions.outliers[position])
                    )
                    summary.changed += bool(record["changed"])
                    summary.train += record["split"] == "train"
                    summary.eval += record["split"] == "eval"
                    summary.long_tail += record["long_tail"] is not None
                    out.append(record)
                    position += 1
                index += 1
            records_writer.write(out)
            summary.cleaned += len(out)
            run.record_removed(result.removed)
            run.audit_spool.write(result.audit)
            batches += 1
            progress.advance(batches, index)


def clean_sources(
    parquet_paths: Sequence[Path | str],
    out_dir: Path,
    cleaner: CorpusCleaner,
    *,
    audit_spool: AuditSpool,
    dp_epsilon: float,
    dp_rng: np.random.Generator | int | None = None,
    workers: int = 1,
    encoder: Encoder | None = None,
    coverage: CoverageConfig = CoverageConfig(),
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 10,
    progress_seconds: float | None = REPORT_SECONDS,
    dp_budget: DatasetBudget | None = None,
) -> CleanSummary:
    """Clean the sources (in the given order) into out_dir/records.parquet and
    out_dir/removed.parquet; audit entries go to `audit_spool`. Raises NothingLeft when
    no record survives. On any failure the spool is discarded and the staging files
    removed; what was written to out_dir is the caller's to throw away. `progress` is
    called after every `progress_every` batches or `progress_seconds`, whichever comes first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging_path, embeddings_path = out_dir / _STAGING, out_dir / _EMBEDDINGS
    writers: list[TableWriter] = []
    try:
        removed_writer = TableWriter(out_dir / "removed.parquet", REMOVED_SCHEMA)
        writers.append(removed_writer)
        run = CleaningRun(
            cleaner,
            audit_spool,
            removed_writer,
            progress=progress,
            progress_every=progress_every,
            progress_seconds=progress_seconds,
        )
        staging_writer = TableWriter(staging_path, CLEAN_SCHEMA)
        writers.append(staging_writer)
        staged = clean_pass(run, [Path(p) for p in parquet_paths], staging_writer, embeddings_path, workers, encoder)
        staging_writer.close()
        writers.remove(staging_writer)
        decisions = decide_between_passes(run, staged, embeddings_path, coverage)
        release_dp_statistics(run.summary, decisions.final_columns, dp_epsilon, dp_rng, dp_budget)
        records_writer = TableWriter(out_dir / "records.parquet", CLEAN_SCHEMA)
        writers.append(records_writer)
        write_pass(run, staging_path, records_writer, decisions)
        for writer in list(writers):
            writer.close()
            writers.remove(writer)
        audit_spool.close()
        run.summary.audit_entries = audit_spool.count
        return run.summary
    except BaseException:
        for writer in writers:
            try:
                writer.close()
            except Exception:  # the original error is the one to report
                pass
        audit_spool.discard()
        raise
    finally:
        staging_path.unlink(missing_ok=True)
        embeddings_path.unlink(missing_ok=True)
