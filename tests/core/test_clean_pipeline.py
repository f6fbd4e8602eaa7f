"""clean_sources (the streamed clean_corpus) against the in-memory functions, its
failure behaviour, and its memory: it must not hold the records of the corpus."""

import hashlib
import json
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from deepfeed.core.data.clean_pipeline import AuditSpool, NothingLeft, clean_sources
from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner, clean_records, training_text
from deepfeed.core.data.corpus_checks import release_statistics
from deepfeed.core.data.coverage import long_tail_reasons
from deepfeed.core.data.ingest import RECORD_FIELDS
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.tables import read_table, write_table

TOPICS = ["blood pressure", "garden tools", "train timetables", "tax forms"]
REGIONS = ["深圳", "广州", "杭州", "宁波"]


class HashEncoder:
    """A deterministic embedding of a text: a topic direction plus noise seeded by the
    text's hash, rounded to float16 (what the streamed run stores), so both paths see
    the same numbers and the test compares the streaming math, not the rounding."""

    dim = 16

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            vec = np.random.default_rng(seed).standard_normal(self.dim) * 0.3
            for t, topic in enumerate(TOPICS):
                if topic in text:
                    vec[t] += 2.0
            out[i] = vec / np.linalg.norm(vec)
        return out.astype(np.float16).astype(np.float32)


def _record(i, prompt, response, meta=None, tags=("general",)):
    body = f"{prompt}\n{response}"
    return {
        "record_id": hashlib.sha1(f"{i}:{body}".encode()).hexdigest()[:16],
        "source": f"s{i % 2}",
        "locator": f"line {i}",
        "kind": "pair",
        "prompt": prompt,
        "response": response,
        "text": None,
        "lang": None,
        "tags": list(tags),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def corpus(n=240):
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        tags = [topic.split()[0]] + (["rare"] if i % 97 == 5 else [])
        meta = {"age": 20 + (i * 7) % 50, "region": REGIONS[i % 4], "ward": i % 3}
        if i % 61 == 7:
            meta = {"age": 99, "region": "拉萨"}  # an outlier class, suppressed at k=5
        prompt = f"Question {i} about {topic}: what should I check first?"
        response = f"Answer {i}: look at the {topic} notes, page {i * 13 % 101}."
        if i % 17 == 3:
            response += f" Mail me at user{i}@example.org or call 1381234{i:04d}."
        if i % 23 == 4:
            prompt = "What is high blood pressure?"  # glossary variant, and exact duplicates of each other
        if i % 29 == 9:
            prompt, response = "a", "b"  # too short
        rows.append(_record(i, prompt, response, meta, tags))
    rows.append(
        _record(
            n,
            "Question 1 about garden tools: what should I check first?",
            "Answer 1: look at the garden tools notes, page 13.",
        )
    )
    rows.append(
        _record(
            n + 1, "A far away question on an unrelated matter entirely?", "An unrelated answer with nothing in common."
        )
    )
    return rows


def _write_sources(tmp_path, records):
    half = len(records) // 2 + 7  # not a multiple of the batch size: batches span the two files
    paths = [tmp_path / "a" / "records.parquet", tmp_path / "b" / "records.parquet"]
    write_table(paths[0], records[:half], RECORD_FIELDS)
    write_table(paths[1], records[half:], RECORD_FIELDS)
    return paths


CONFIG = CleaningConfig(
    glossary_path=None, quasi_identifiers=("age", "region"), k=5, max_suppression=0.1, batch_size=32
)


def test_streamed_equals_in_memory(tmp_path):
    records = corpus()
    paths = _write_sources(tmp_path, records)
    encoder = HashEncoder()

    expected = clean_records(read_table(paths[0]) + read_table(paths[1]), CONFIG, run_id="run-1")
    embeddings = encoder.encode([training_text(r) for r in expected.records])
    for record, reason in zip(expected.records, long_tail_reasons(expected.records, embeddings)):
        record["long_tail"] = reason
    statistics, accountant = release_statistics(expected.records, 0.5, rng=11)
    # The corpus exercises every branch compared below.
    reasons = expected.reasons()
    assert {"exact duplicate", "k-anonymity suppression"} <= set(reasons) and any(
        r.startswith("quality") for r in reasons
    )
    assert (
        expected.pii
        and expected.glossary
        and expected.kanonymity["levels"]
        and any(expected.kanonymity["levels"].values())
    )
    tails = [r["long_tail"] for r in expected.records if r["long_tail"]]
    assert any("rare tag" in t for t in tails) and any("embedding outlier" in t for t in tails)

    out = tmp_path / "out"
    spool = AuditSpool(tmp_path / "spool" / "audit.jsonl")
    progress = []
    summary = clean_sources(
        paths,
        out,
        CorpusCleaner(CONFIG, "run-1"),
        audit_spool=spool,
        dp_epsilon=0.5,
        dp_rng=11,
        encoder=encoder,
        progress=progress.append,
        progress_every=2,
    )

    assert read_table(out / "records.parquet") == expected.records
    assert read_table(out / "removed.parquet") == expected.removed
    assert sorted(p.name for p in out.iterdir()) == ["records.parquet", "removed.parquet"]  # staging and memmap gone
    spooled = [e for chunk in spool.entries(50) for e in chunk]
    assert spooled == expected.audit and summary.audit_entries == len(expected.audit)
    assert summary.kanonymity == expected.kanonymity and summary.reasons == Counter(reasons)
    assert summary.pii == expected.pii and summary.glossary == expected.glossary
    assert (summary.kept_in, summary.cleaned, summary.removed) == (
        len(records),
        len(expected.records),
        len(expected.removed),
    )
    assert summary.long_tail == len(tails) and summary.changed == sum(r["changed"] for r in expected.records)
    assert summary.train + summary.eval == summary.cleaned and summary.eval == sum(
        r["split"] == "eval" for r in expected.records
    )
    assert summary.statistics == statistics and summary.accountant.spent == accountant.spent
    assert [r["epsilon"] for r in summary.accountant.to_dict()["releases"]] == [
        r["epsilon"] for r in accountant.to_dict()["releases"]
    ]
    assert progress[-1].phase == "write" and any(p.phase == "clean" and p.records > 0 for p in progress)


def test_two_workers_write_the_same_files(tmp_path):
    paths = _write_sources(tmp_path, corpus(120))
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        clean_sources(
            paths,
            out,
            CorpusCleaner(CONFIG, "run-1"),
            audit_spool=AuditSpool(tmp_path / f"spool{workers}.jsonl"),
            dp_epsilon=0.5,
            dp_rng=1,
            workers=workers,
        )
        outputs.append((read_table(out / "records.parquet"), read_table(out / "removed.parquet")))
    assert outputs[0] == outputs[1] and outputs[0][0]


def _publish(store, ledger, paths, spool_path, **kwargs):
    """What the clean_corpus asset does: clean inside new_version, append the audit after."""
    spool = AuditSpool(spool_path)
    with store.new_version("clean_corpus", {}) as version:
        clean_sources(paths, version.path, CorpusCleaner(CONFIG, "run"), audit_spool=spool, dp_epsilon=0.5, **kwargs)
    return spool.replay(ledger.append, 40)


def test_a_failure_in_pass_two_publishes_nothing_and_leaves_the_ledger_alone(tmp_path):
    paths = _write_sources(tmp_path, corpus(120))
    store, ledger = ArtifactStore(tmp_path / "artifacts"), AuditLedger(tmp_path / "ledger.jsonl")
    assert _publish(store, ledger, paths, tmp_path / "spool.jsonl") > 0
    good, head = store.versions("clean_corpus"), ledger.head()

    def fail_while_writing(progress):
        if progress.phase == "write":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _publish(store, ledger, paths, tmp_path / "spool.jsonl", progress=fail_while_writing, progress_every=1)
    assert store.versions("clean_corpus") == good and ledger.head() == head and ledger.verify().ok
    assert not (tmp_path / "spool.jsonl").exists()
    assert not [p for p in (tmp_path / "artifacts" / "clean_corpus").iterdir() if p.name.startswith(".staging")]


def test_nothing_left_is_an_error_naming_the_reasons(tmp_path):
    paths = _write_sources(tmp_path, [_record(i, "a", "b") for i in range(5)])
    spool = AuditSpool(tmp_path / "spool.jsonl")
    with pytest.raises(NothingLeft, match="removed all 5 records"):
        clean_sources(paths, tmp_path / "out", CorpusCleaner(CONFIG), audit_spool=spool, dp_epsilon=0.5)
    assert not spool.path.exists()


def test_unknown_columns_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "records.parquet"
    write_table(path, [{**_record(0, "Question?", "An answer here."), "secret_column": "x"}])
    with pytest.raises(ValueError, match="secret_column"):
        clean_sources(
            [path],
            tmp_path / "out",
            CorpusCleaner(CONFIG),
            audit_spool=AuditSpool(tmp_path / "s.jsonl"),
            dp_epsilon=0.5,
        )


def _transient_peak(tmp_path, n, name):
    """Peak traced memory of a run minus what stays allocated after it (the dedup index,
    bounded caches): what the run held only while it ran."""
    rows = [
        _record(
            i,
            f"Question {i} about {TOPICS[i % 4]} and case {i * 7919 % 100003}?",
            f"Answer {i}: see page {i * 31 % 997} of the notes.",
        )
        for i in range(n)
    ]
    path = tmp_path / f"{name}.parquet"
    write_table(path, rows, RECORD_FIELDS)
    del rows
    cleaner = CorpusCleaner(CleaningConfig(glossary_path="", batch_size=100), "run")
    tracemalloc.start()
    try:
        summary = clean_sources(
            [path], tmp_path / name, cleaner, audit_spool=AuditSpool(tmp_path / f"{name}.jsonl"), dp_epsilon=0.5
        )
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.cleaned == n
    return peak - current


def test_memory_does_not_grow_with_the_records(tmp_path):
    n = 1500
    small, large = _transient_peak(tmp_path, n, "n"), _transient_peak(tmp_path, 4 * n, "4n")
    # What holding the 3n extra records as rows would cost, measured the same way.
    tracemalloc.start()
    held = read_table(tmp_path / "4n" / "records.parquet")[n:]
    cost = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    # The compact columns (language, tags, length) do grow, by a few dozen bytes a record;
    # the records themselves must not: far below the cost of holding them.
    assert large - small < 0.2 * cost, (small, large, cost)


def test_noise_counted_batch_by_batch_equals_the_whole_report():
    from deepfeed.core.data.corpus_checks import NoiseCounter, noise_report
    from deepfeed.core.data.quality import QualityConfig

    records = corpus(120) + corpus(30)  # duplicates of earlier batches, PII, short records
    whole = noise_report(records, QualityConfig(min_length=4), 0.9)
    counter = NoiseCounter(QualityConfig(min_length=4), 0.9)
    for start in range(0, len(records), 16):
        counter.add(records[start : start + 16])
    assert counter.report == whole and whole.flagged["exact_duplicate"] > 0 and whole.flagged["pii"] > 0
