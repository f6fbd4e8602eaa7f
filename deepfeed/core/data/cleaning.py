"""Cleaning ingested records: normalize, scrub PII, normalize glossary terms, filter,
deduplicate, k-anonymize the quasi-identifiers, and split off a stable held-out set.

Order of the steps (each feeds the next):

1. ``quality.normalize_text`` (mojibake repair, NFKC, controls, HTML/Markdown debris,
   whitespace) and ``strip_boilerplate_lines`` on every text field;
2. PII scrubbing with typed placeholders (``<EMAIL>``, ``<ID_CN>``, ...) on every text
   field, the tags and the string values of the metadata;
3. glossary normalization (every variant to its canonical form);
4. language identification per record (zh / en / other, replaces the declared one);
5. quality filters (``quality.check_quality``) on the training text;
6. exact duplicates (content hash) and near-duplicates (MinHash LSH);
7. k-anonymity of the configured quasi-identifier columns of ``meta`` (over all kept
   records, so it runs once at the end).

Every record that leaves is accounted for: kept = cleaned + removed-with-reason, and
every change is described by an ``AuditEntry`` (hashes only, never the text).

Batches are independent except for the dedup state, so :class:`CorpusCleaner` can be fed
a stream of batches (Arrow record batches turned into rows) with flat memory apart from
the dedup index.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from deepfeed.core.data.dedup import NearDuplicateIndex, exact_key
from deepfeed.core.data.glossary import Glossary, load_glossary
from deepfeed.core.data.kanonymity import DEFAULT_K, anonymize
from deepfeed.core.data.pii import scrub
from deepfeed.core.data.quality.config import QualityConfig
from deepfeed.core.data.quality.detectors import check_quality, strip_boilerplate_lines
from deepfeed.core.data.quality.language import detect_languages
from deepfeed.core.data.quality.normalize import normalize_text as _normalize_quality
from deepfeed.core.platform.audit import AuditEntry, content_hash
from deepfeed.core.platform.settings import setting

TEXT_FIELDS = ("prompt", "response", "text")
STAGE = "clean_corpus"
REMOVED_FIELDS = ("record_id", "source", "reason", "detail")


@dataclass(frozen=True)
class CleaningConfig:
    """How clean_corpus cleans; its Dagster config is generated from these fields."""

    # Effective length (whitespace not counted, a Han character counts 3): dialog pairs
    # such as "Hi" / "Yes." are real training data, so the floor is far below
    # quality.QualityConfig's 20, which was tuned for documents.
    min_chars: int = setting(
        4,
        "Shortest record kept, in effective characters of prompt + response "
        "(whitespace not counted, a Han character counts 3). Low on purpose: dialog answers such as 'Yes.' are data.",
    )
    max_chars: int = setting(8000, "Records longer than this (effective characters) are removed.")
    eval_fraction: float = setting(0.1, "Share of records held out for evaluation (stable by content hash).")
    split_seed: int = setting(17, "Seed of the held-out split; change it only to draw a new split.")
    near_duplicate_threshold: float = setting(
        0.9,
        "MinHash Jaccard similarity (character 5-grams) from which a record is a near-duplicate of an earlier one; "
        "in (0, 0.99].",
    )
    # Off ("") by default: a domain glossary rewrites general text too (ICD-10's
    # "depression" in "a slight depression in the surface").
    glossary_path: str | None = setting(
        "", "Glossary normalizing domain terms: '' = off, None = the shipped ICD-10 example, or a YAML/CSV path."
    )
    glossary_tags: tuple[str, ...] = setting(
        (),
        "Domain tags the glossary is scoped to: only records carrying one of them are normalized "
        "(and checked for leftovers). Empty: every record.",
    )
    scrub_pii: bool = setting(
        True,
        "Replace PII by typed placeholders (<EMAIL>, <PHONE>, <ID_CN>, ...) in every text field, tag and metadata "
        "value.",
    )
    quasi_identifiers: tuple[str, ...] = setting(
        (),
        "Metadata columns (keys of the record's meta) that are quasi-identifiers, e.g. age, gender, region, "
        "admission_date; generalized/suppressed to k-anonymity.",
    )
    k: int = setting(DEFAULT_K, "k of k-anonymity over the quasi-identifiers (at least 20 by policy, docs/privacy.md).")
    max_suppression: float = setting(
        0.05, "Largest share of records k-anonymity may suppress before it generalizes further."
    )
    batch_size: int = setting(
        4096,
        "Records per Arrow batch streamed through cleaning; memory holds about two batches of records besides the "
        "dedup index.",
    )

    def __post_init__(self):
        # datasketch cannot lay out LSH bands for a threshold of 1 (or above 0.99 with
        # 128 permutations); exact duplicates are caught by the content hash anyway.
        if not 0.0 < self.near_duplicate_threshold <= 0.99:
            raise ValueError(f"near_duplicate_threshold must be in (0, 0.99], got {self.near_duplicate_threshold}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def quality(self) -> QualityConfig:
        return QualityConfig(min_length=self.min_chars, max_length=self.max_chars)


@dataclass
class CleaningResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    pii: Counter = field(default_factory=Counter)
    glossary: Counter = field(default_factory=Counter)
    kanonymity: dict[str, Any] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.removed))

    def extend(self, other: "CleaningResult") -> None:
        self.records.extend(other.records)
        self.removed.extend(other.removed)
        self.audit.extend(other.audit)
        self.pii.update(other.pii)
        self.glossary.update(other.glossary)


def normalize_text(text: str | None) -> str | None:
    """quality.normalize_text for an optional field; None when nothing is left."""
    if text is None:
        return None
    return strip_boilerplate_lines(_normalize_quality(text)) or None


def content_key(record: dict[str, Any]) -> str:
    """Identity of a record's content, independent of where it came from."""
    body = "\x1f".join((record.get(f) or "").casefold() for f in TEXT_FIELDS)
    return hashlib.sha256(body.encode()).hexdigest()


def training_text(record: dict[str, Any]) -> str:
    if record.get("kind") == "pair":
        return f"{record['prompt']}\n{record['response']}"
    return record.get("text") or ""


def assign_split(record: dict[str, Any], eval_fraction: float, seed: int) -> str:
    """A stable train/eval split by hash of the content, so the same record lands in
    the same split on every run and its augmented siblings can be kept out of training."""
    digest = hashlib.sha256(f"{seed}:{content_key(record)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if bucket < eval_fraction else "train"


def _scrub_value(value: Any, counts: Counter) -> Any:
    if isinstance(value, str):
        result = scrub(value)
        counts.update(result.counts)
        return result.text
    if isinstance(value, dict):
        return {k: _scrub_value(v, counts) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, counts) for v in value]
    return value


# Joins a batch into one string for scrubbing and glossary normalization. No PII or
# glossary pattern can match across it (each needs letters, digits or CJK on both
# sides, and normalized text holds no NUL), and each pattern sees it as a text edge.
_JOIN = "\n\x00\n"


def _add(total: dict[str, int], found: dict[str, int]) -> None:
    for key, value in found.items():
        total[key] = total.get(key, 0) + value


def _scrub_one(text: str) -> tuple[str, dict[str, int]]:
    result = scrub(text)
    return result.text, result.counts


@functools.lru_cache(maxsize=65536)
def _scrub_cached(text: str) -> tuple[str, dict[str, int]]:
    # Tags repeat across most records of a corpus; their scrub is computed once.
    return _scrub_one(text)


def _apply_batched(
    records: list[dict[str, Any]], name: str, apply: Callable[[str], tuple[str, dict]]
) -> Iterator[tuple[int, dict]]:
    """Run `apply` on field `name` of every record, rewriting it in place; yields
    (index, counts) for the records it changed.

    One call over the joined batch replaces thousands of per-record calls, each of
    which pays Python overhead for a handful of regex scans. A text the joined pass
    leaves alone is unchanged; a text it changes is redone on its own, and that
    result (with its counts) is the one kept, so the output is the per-record one.
    """
    index = [i for i, r in enumerate(records) if r.get(name)]
    if not index:
        return
    texts = [records[i][name] for i in index]
    parts = apply(_JOIN.join(texts))[0].split(_JOIN)
    if len(parts) != len(texts):  # cannot happen by construction; stay correct anyway
        parts = [None] * len(texts)
    for i, text, part in zip(index, texts, parts):
        if part == text:
            continue
        new, counts = apply(text)
        if new != text:
            records[i][name] = new
            yield i, dict(counts)


def glossary_in_scope(record: dict[str, Any], tags: Iterable[str]) -> bool:
    """Whether the glossary applies to the record: no scope configured, or the record
    carries one of the scope's domain tags."""
    scope = set(tags)
    return not scope or not scope.isdisjoint(record.get("tags") or ())


def meta_dict(record: dict[str, Any]) -> dict[str, Any]:
    raw = record.get("meta")
    if not raw:
        return {}
    value = json.loads(raw) if isinstance(raw, str) else raw
    return value if isinstance(value, dict) else {"value": value}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is cleaned.

    A batch allocates hundreds of thousands of short-lived, acyclic objects (freed by
    reference counting), and every collection they trigger would also traverse the
    ever-growing dedup index: 7-8% of the cleaning time on the benchmark corpus (20,000 records)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class CorpusCleaner:
    """Cleans batches of records; keeps the dedup state between batches."""

    def __init__(self, config: CleaningConfig, run_id: str = "", collect_audit: bool = True):
        self.config = config
        self.run_id = run_id or "unknown-run"
        self.collect_audit = collect_audit
        self.quality = config.quality()
        self.glossary: Glossary | None = None if config.glossary_path == "" else load_glossary(config.glossary_path)
        self.near = NearDuplicateIndex(threshold=config.near_duplicate_threshold)
        self._exact: dict[str, str] = {}

    def _entry(
        self,
        result: CleaningResult,
        record_id: str,
        action: str,
        reason: str,
        before: str | None,
        after: str | None,
        **extra: Any,
    ) -> None:
        if self.collect_audit:
            result.audit.append(
                AuditEntry.from_texts(record_id, STAGE, action, reason, self.run_id, before, after, extra or None)
            )

    def _remove(self, result: CleaningResult, record: dict[str, Any], reason: str, detail: str, before: str) -> None:
        result.removed.append(
            {"record_id": record["record_id"], "source": record["source"], "reason": reason, "detail": detail}
        )
        self._entry(result, record["record_id"], "dropped", detail, before, None, rule=reason)

    def _scrub_fields(self, cleaned: list[dict[str, Any]], originals: list[dict[str, Any]]) -> list[dict[str, int]]:
        counts: list[dict[str, int]] = [{} for _ in cleaned]
        for name in TEXT_FIELDS:
            for i, found in _apply_batched(cleaned, name, _scrub_one):
                _add(counts[i], found)
        for i, (record, original) in enumerate(zip(cleaned, originals)):
            tags = original.get("tags") or []
            if tags:
                scrubbed_tags = [_scrub_cached(t) if isinstance(t, str) else (t, {}) for t in tags]
                record["tags"] = [t for t, _ in scrubbed_tags]
                for _, found in scrubbed_tags:
                    _add(counts[i], found)
            if original.get("meta") not in (None, "", "{}"):
                meta, found = meta_dict(original), Counter()
                scrubbed_meta = _scrub_value(meta, found)
                if scrubbed_meta != meta:
                    record["meta"] = json.dumps(scrubbed_meta, ensure_ascii=False, default=str, sort_keys=True)
                    _add(counts[i], found)
        return counts

    def _transform(
        self, records: list[dict[str, Any]], result: CleaningResult
    ) -> list[tuple[dict[str, Any], str | None]]:
        """Per record: the normalized, scrubbed, glossary-normalized copy, or why it is empty.

        Scrubbing and glossary normalization run over the whole batch at once (see
        _apply_batched and Glossary.normalize_many).
        """
        out: list[tuple[dict[str, Any], str | None]] = []
        live: list[int] = []
        for record in records:
            cleaned = dict(record)
            for name in TEXT_FIELDS:
                cleaned[name] = normalize_text(record.get(name))
            empty = (cleaned["kind"] == "pair" and not (cleaned["prompt"] and cleaned["response"])) or (
                cleaned["kind"] == "text" and not cleaned["text"]
            )
            if not empty:
                live.append(len(out))
            out.append((cleaned, "empty after normalization" if empty else None))
        batch = [out[i][0] for i in live]
        originals = [records[i] for i in live]
        normalized = [training_text(r) for r in batch]
        pii = self._scrub_fields(batch, originals) if self.config.scrub_pii else [{} for _ in batch]
        scrubbed = [training_text(r) for r in batch]
        terms: list[dict[str, int]] = [{} for _ in batch]
        if self.glossary is not None:
            scope = [i for i, r in enumerate(batch) if glossary_in_scope(r, self.config.glossary_tags)]
            for name in TEXT_FIELDS:
                index = [i for i in scope if batch[i].get(name)]
                for i, (new, found) in zip(index, self.glossary.normalize_many([batch[i][name] for i in index], _JOIN)):
                    if new != batch[i][name]:
                        batch[i][name] = new
                        _add(terms[i], dict(found))
        for cleaned, original, norm, scrub_text, found_pii, found_terms in zip(
            batch, originals, normalized, scrubbed, pii, terms
        ):
            record_id, before, final = original["record_id"], training_text(original), training_text(cleaned)
            if norm != before:
                self._entry(
                    result,
                    record_id,
                    "modified",
                    "normalized text (NFKC, controls, markup, boilerplate, whitespace)",
                    before,
                    norm,
                )
            if found_pii:
                result.pii.update(found_pii)
                kinds = ", ".join(f"{k}x{v}" for k, v in sorted(found_pii.items()))
                self._entry(
                    result,
                    record_id,
                    "anonymized",
                    f"PII replaced by typed placeholders: {kinds}",
                    norm,
                    scrub_text,
                    **found_pii,
                )
            if found_terms:
                result.glossary.update(found_terms)
                codes = ", ".join(f"{k}x{v}" for k, v in sorted(found_terms.items()))
                self._entry(result, record_id, "modified", f"glossary terms normalized: {codes}", scrub_text, final)
            cleaned["changed"] = final != before or bool(found_pii)
        return out

    def prepare(self, records: list[dict[str, Any]]) -> tuple[CleaningResult, list[tuple[dict[str, Any], str, str]]]:
        """The stateless part of a batch (normalize, scrub, glossary, language, quality):
        what it removed, and the survivors as (cleaned record, raw text, final text)."""
        result = CleaningResult()
        candidates: list[tuple[dict[str, Any], str, str]] = []
        for record, (cleaned, empty) in zip(records, self._transform(records, result)):
            if empty:
                self._remove(result, record, empty, empty, training_text(record))
            else:
                candidates.append((cleaned, training_text(record), training_text(cleaned)))
        if not candidates:
            return result, []
        texts = [final for _, _, final in candidates]
        survivors = []
        for candidate, lang, verdict in zip(candidates, detect_languages(texts), check_quality(texts, self.quality)):
            cleaned, raw, _ = candidate
            cleaned["lang"] = lang
            if verdict is not None:
                self._remove(
                    result,
                    cleaned,
                    f"quality: {verdict}",
                    f"quality filter {verdict!r} (min_chars={self.config.min_chars}, "
                    f"max_chars={self.config.max_chars})",
                    raw,
                )
            else:
                survivors.append(candidate)
        return result, survivors

    def deduplicate(self, result: CleaningResult, candidates: list[tuple[dict[str, Any], str, str]]) -> CleaningResult:
        """Exact then near-duplicates against everything kept so far (the stateful part)."""
        survivors = []
        for cleaned, raw, final in candidates:
            key = exact_key(final)
            first = self._exact.get(key)
            if first is not None:
                self._remove(result, cleaned, "exact duplicate", f"exact duplicate of {first}", raw)
                continue
            self._exact[key] = cleaned["record_id"]
            survivors.append((cleaned, raw, final))
        matches = self.near.add_batch([c["record_id"] for c, _, _ in survivors], [f for _, _, f in survivors])
        for (cleaned, raw, _), match in zip(survivors, matches):
            if match is not None:
                self._remove(
                    result,
                    cleaned,
                    "near duplicate",
                    f"near duplicate (Jaccard >= {self.config.near_duplicate_threshold}) of {match}",
                    raw,
                )
                continue
            cleaned["split"] = assign_split(cleaned, self.config.eval_fraction, self.config.split_seed)
            result.records.append(cleaned)
        return result

    def clean_batch(self, records: list[dict[str, Any]]) -> CleaningResult:
        """One batch through every step but k-anonymity (which needs all kept records)."""
        with _gc_paused():
            return self.deduplicate(*self.prepare(records))

    def kanonymity_plan(self, qi_values: dict[str, list[Any]]) -> "KAnonPlan | None":
        """What k-anonymity does to the kept records, from their quasi-identifier values
        alone (column -> one value per record, in order); None when none are configured."""
        qi = list(self.config.quasi_identifiers)
        n = len(next(iter(qi_values.values()), []))
        if not qi or n == 0:
            return None
        frame = pd.DataFrame({"id": np.arange(n), **{c: qi_values.get(c, [None] * n) for c in qi}})
        outcome = anonymize(frame, qi, k=self.config.k, max_suppression=self.config.max_suppression)
        kept = outcome.records
        generalized = {}
        for c in qi:
            if outcome.levels.get(c):
                values = np.empty(n, dtype=object)
                values[kept["id"].to_numpy()] = kept[c].to_numpy(dtype=object)
                generalized[c] = values
        suppressed = {int(s.record_id): s.reason for s in outcome.suppressed}
        summary = {
            "k": self.config.k,
            "quasi_identifiers": qi,
            "levels": outcome.levels,
            "suppressed": len(suppressed),
            "min_class_size": outcome.min_class_size,
            "classes": outcome.n_classes,
        }
        return KAnonPlan(suppressed, generalized, summary)

    def apply_kanonymity(self, result: CleaningResult, record: dict[str, Any], index: int, plan: "KAnonPlan") -> bool:
        """Suppress (False, into result.removed) or generalize record number `index` of
        the plan; every change goes to result.audit."""
        if index in plan.suppressed:
            self._remove(result, record, "k-anonymity suppression", plan.suppressed[index], training_text(record))
            return False
        if plan.generalized:
            meta = meta_dict(record)
            new_meta = {**meta, **{c: values[index] for c, values in plan.generalized.items()}}
            if new_meta != meta:
                before_json = record.get("meta") or ""
                record["meta"] = json.dumps(new_meta, ensure_ascii=False, default=str, sort_keys=True)
                self._entry(
                    result,
                    record["record_id"],
                    "generalized",
                    f"quasi-identifiers generalized to levels {plan.summary['levels']} for k={self.config.k}",
                    before_json,
                    record["meta"],
                )
        return True

    def anonymize(self, result: CleaningResult) -> None:
        """Generalize / suppress the quasi-identifiers of all kept records to k-anonymity."""
        plan = self.kanonymity_plan(quasi_identifier_values(result.records, self.config.quasi_identifiers))
        if plan is None:
            return
        result.records = [
            record for i, record in enumerate(result.records) if self.apply_kanonymity(result, record, i, plan)
        ]
        result.kanonymity = plan.summary


@dataclass
class KAnonPlan:
    suppressed: dict[int, str]  # record index -> why
    generalized: dict[str, np.ndarray]  # QI column above level 0 -> generalized value per record index
    summary: dict[str, Any]  # what clean_corpus reports (levels, suppressed, classes)


def quasi_identifier_values(
    records: Iterable[dict[str, Any]], columns: Iterable[str], into: dict[str, list[Any]] | None = None
) -> dict[str, list[Any]]:
    """Column -> the value of that key of each record's meta (None when missing), appended to `into`."""
    out = into if into is not None else {c: [] for c in columns}
    if not out:
        return out
    for record in records:
        meta = meta_dict(record)
        for c, values in out.items():
            values.append(meta.get(c))
    return out


_worker: CorpusCleaner | None = None


def _init_worker(config: CleaningConfig, run_id: str, collect_audit: bool) -> None:
    global _worker
    _worker = CorpusCleaner(config, run_id, collect_audit)


def _prepare_in_worker(records: list[dict[str, Any]]):
    assert _worker is not None
    with _gc_paused():
        return _worker.prepare(records)


@contextlib.contextmanager
def _streaming_gc(young_threshold: int = 50_000) -> Iterator[None]:
    """Collections that do not grow with the corpus, for the length of a stream.

    Between the paused steps the stream still builds and frees a batch's worth of
    records at a time (reading, results from the workers, the caller writing them),
    and at the default threshold of 700 that starts a collection every few hundred
    records, each full one walking the whole heap. The objects that exist when the
    stream starts (modules, models, the caller's state) are frozen out of every
    collection, and the young threshold is raised: on 2M records the collections took
    20% of the run and grew faster than the corpus. Both are restored at the end.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young_threshold, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def clean_stream(
    batches: Iterable[list[dict[str, Any]]], cleaner: CorpusCleaner, workers: int = 1
) -> Iterator[CleaningResult]:
    """Clean a stream of batches, in order. With workers > 1 the stateless steps run in
    a process pool (they are pure Python per record, so threads would not help) while
    this process deduplicates, which must see the batches in order."""
    with _streaming_gc():
        yield from _clean_stream(batches, cleaner, workers)


def _clean_stream(
    batches: Iterable[list[dict[str, Any]]], cleaner: CorpusCleaner, workers: int
) -> Iterator[CleaningResult]:
    if workers <= 1:
        for batch in batches:
            yield cleaner.clean_batch(batch)
        return
    import multiprocessing

    global _worker
    fork = sys.platform.startswith("linux")
    context = multiprocessing.get_context("fork" if fork else "spawn")
    # Forked workers inherit this cleaner (its compiled glossary and pattern caches) instead
    # of building their own, which costs a second or more per worker before the first batch.
    _worker = cleaner if fork else None
    init = None if fork else _init_worker
    try:
        with context.Pool(
            workers, init, (cleaner.config, cleaner.run_id, cleaner.collect_audit) if init else ()
        ) as pool:
            # A window of submitted batches instead of pool.imap: imap reads ahead without
            # bound, so when deduplication is the slower side the prepared batches pile up
            # here, memory grows with the corpus and every garbage collection walks them
            # (2N records took 2.2-2.5x the time of N). Two per worker keeps them busy.
            pending: deque = deque()
            source = iter(batches)
            for batch in itertools.islice(source, 2 * workers):
                pending.append(pool.apply_async(_prepare_in_worker, (batch,)))
            while pending:
                prepared = pending.popleft().get()
                for batch in itertools.islice(source, 1):
                    pending.append(pool.apply_async(_prepare_in_worker, (batch,)))
                with _gc_paused():
                    result = cleaner.deduplicate(*prepared)
                yield result
    finally:
        _worker = None  # the dedup index is not kept alive by this module


def clean_records(records: Iterable[dict[str, Any]], config: CleaningConfig, run_id: str = "") -> CleaningResult:
    """Clean a whole corpus (in batches of ``config.batch_size``), k-anonymity last."""
    cleaner = CorpusCleaner(config, run_id)
    result = CleaningResult()
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= config.batch_size:
            result.extend(cleaner.clean_batch(batch))
            batch = []
    if batch:
        result.extend(cleaner.clean_batch(batch))
    cleaner.anonymize(result)
    return result


def quarantine_entry(row: dict[str, Any], run_id: str) -> AuditEntry:
    """The audit trail of one quarantined ingest item: where it was and why, no content."""
    return AuditEntry(
        record_id=f"{row['source']}#{row['locator']}",
        stage="raw_corpus",
        action="quarantined",
        reason=row["reason"],
        run_id=run_id or "unknown-run",
        hash_before=row.get("raw_sha256") or content_hash(row.get("raw") or b""),
        extra={"raw_bytes": row.get("raw_bytes")},
    )
