"""raw_corpus and clean_corpus with their checks: privacy, 3C, audit, blocking, and PII
canaries that must not reach any artifact of the whole chain."""

import hashlib
import json
import sqlite3
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from deepfeed.assets.corpus import latest_raw_materialization
from deepfeed.core.artifacts import ArtifactStore
from deepfeed.core.audit import AuditLedger
from deepfeed.core.ingest import resolve_quarantine_ref
from deepfeed.core.tables import read_table
from deepfeed.resources import ArtifactStoreResource
from deepfeed.sensors.corpus import build_corpus_source_sensor
from tests.dagster.test_chain import ASSETS, CHECKS, ingest, materialize, resources, run_config

CANARIES = {
    "EMAIL": "zq.canary.7731@example.org",
    "PHONE": "13917730042",
    "ID_CN": "11010519491231002X",
    "BANK_CARD": "6222 0212 3456 7894",
}


def canary_corpus(folder: Path) -> Path:
    from tests.conftest import write_corpus

    write_corpus(folder)
    rows = [
        {"prompt": f"My e-mail is {CANARIES['EMAIL']}, can you write to me?", "response": "Yes, we will reply by e-mail soon.", "tags": ["support"], "ward": "north"},
        {"prompt": f"Call me at {CANARIES['PHONE']} about the results.", "response": "We will call you this afternoon.", "tags": ["support"]},
        {"prompt": "Here is my resident ID for the form.", "response": f"Thanks, ID {CANARIES['ID_CN']} is on file now.", "tags": ["records"]},
        {"text": f"Refund to card {CANARIES['BANK_CARD']} was approved by the clinic office.", "tags": ["billing"], "contact": CANARIES["EMAIL"]},
    ]
    with (folder / "pairs.jsonl").open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    # a malformed line holding a canary: it must be quarantined without the raw PII
    with (folder / "broken.jsonl").open("w") as fh:
        fh.write('{"text": "write to ' + CANARIES["EMAIL"] + '"\n')
    return folder


@pytest.fixture
def instance(deepfeed_env):
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance


def _materialize(selection, home, base_model, corpus, instance, clean=None, raise_on_error=True):
    extra = {"clean_corpus": {"config": clean}} if clean else {}
    return materialize(selection, home, base_model, corpus, instance, raise_on_error=raise_on_error, **extra)


def _checks(result) -> dict:
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def test_k_anonymity_over_configured_quasi_identifiers(deepfeed_env, tiny_llama, tmp_path, instance):
    folder = tmp_path / "qi"
    folder.mkdir()
    rows = [{"prompt": f"Patient question number {i} about the ward routine?", "response": f"Answer {i}: visiting hours end at {8 + i % 5} pm.",
             "age": 20 + i % 40, "region": ["深圳", "广州", "杭州"][i % 3]} for i in range(90)]
    (folder / "notes.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    clean = {"quasi_identifiers": ["age", "region"], "k": 20, "coverage_embeddings": False}
    result = _materialize(["raw_corpus", "clean_corpus"], deepfeed_env, tiny_llama, folder, instance, clean=clean)
    check = _checks(result)["clean_corpus_k_anonymity"]
    assert check.passed and check.metadata["smallest_class"].value >= 20
    actions = {e["action"] for e in AuditLedger(deepfeed_env / "audit" / "ledger.jsonl").iter_entries(run_id=result.run_id)}
    assert "generalized" in actions


def test_pii_left_in_the_corpus_blocks_the_chain(deepfeed_env, tiny_llama, tmp_path, instance):
    corpus = canary_corpus(tmp_path / "corpus")
    selection = ["raw_corpus", "clean_corpus", "augmented_corpus"]
    result = _materialize(selection, deepfeed_env, tiny_llama, corpus, instance, clean={"scrub_pii": False, "coverage_embeddings": False}, raise_on_error=False)
    check = _checks(result)["clean_corpus_cleanliness"]
    assert not check.passed and "noise ratio" in check.description
    assert not result.asset_materializations_for_node("augmented_corpus")


def test_bad_clean_config_names_the_field(deepfeed_env, tiny_llama, tiny_corpus, instance):
    assert _materialize(["raw_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance).success
    for clean, field in [({"dp_epsilon": 5.0}, "clean_corpus.config.dp_epsilon"), ({"glossary_path": "/nope.yaml"}, "clean_corpus.config.glossary_path")]:
        result = _materialize(["clean_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance, clean=clean, raise_on_error=False)
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
        assert field in failure.step_failure_data.error.to_string()


def _haystacks(home: Path):
    """Every file the chain wrote, as searchable text (Parquet decoded, SQLite dumped)."""
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            yield path, json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str)
        elif path.suffix == ".db":
            with sqlite3.connect(path) as db:
                yield path, "\n".join(db.iterdump())
        else:
            yield path, path.read_bytes().decode("utf-8", "replace")


def test_pii_canaries_reach_no_artifact_of_the_chain(deepfeed_env, tiny_llama, tmp_path, instance):
    corpus = canary_corpus(tmp_path / "corpus")
    raw = ingest(deepfeed_env, tiny_llama, corpus, instance)
    assert list(raw) == ["_root"] and _checks(raw["_root"])["raw_corpus_accounting"].passed
    selection = [k.to_user_string() for a in ASSETS for k in a.keys if k.to_user_string() != "raw_corpus"]
    result = _materialize(selection, deepfeed_env, tiny_llama, corpus, instance, raise_on_error=False)
    # Only the first-champion gate refuses (a 4-step tiny fine-tune does not beat its base); every artifact was written.
    blocked = [n for n, c in _checks(result).items() if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
    assert result.success or blocked == ["promotion_gate"]

    # The corpus checks on this run: the tiny corpus is clean, consistent and has no QIs.
    checks = _checks(result)
    assert {n: c.passed for n, c in checks.items() if n.startswith("clean_corpus") and n != "clean_corpus_coverage"} == {
        "clean_corpus_accounting": True, "clean_corpus_consistency": True,
        "clean_corpus_cleanliness": True, "clean_corpus_k_anonymity": True}
    assert checks["clean_corpus_cleanliness"].metadata["noise_ratio"].value == 0.0
    coverage = checks["clean_corpus_coverage"]
    assert coverage.severity == dg.AssetCheckSeverity.WARN and "share_by_tag" in coverage.metadata

    meta = instance.get_latest_materialization_event(dg.AssetKey("clean_corpus")).asset_materialization.metadata
    assert 0 < meta["dp_epsilon_spent"].value <= 0.5
    assert meta["pii_replaced"].value >= 5 and meta["glossary_replaced"].value > 0
    for table in ("languages_dp", "tags_dp", "length_histogram_dp"):
        assert "ε-DP" in meta[table].value
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    assert ledger.verify(anchor=meta["audit_head"].value).ok  # the head recorded by clean_corpus is in the chain
    actions = {e["action"] for e in ledger.iter_entries(run_id=result.run_id)}
    assert {"anonymized", "modified", "dropped"} <= actions
    assert "quarantined" in {e["action"] for e in ledger.iter_entries(stage="raw_corpus")}  # the ingest runs, one per source

    scanned = blobs_with_canary = 0
    for path, text in _haystacks(deepfeed_env):
        relative = path.relative_to(deepfeed_env).as_posix()
        # The ingested copy of the sources is the input itself, before anonymization:
        # the scan must find the canaries there, or it could not find them anywhere.
        if relative.startswith("artifacts/raw_corpus/") and path.name == "records.parquet":
            assert all(canary in text for canary in CANARIES.values())
            continue
        # The raw bytes of quarantined items (here the malformed line holding the e-mail canary)
        # are raw input too, kept for re-reading and never fed to training; the scan sees them.
        if relative.startswith("artifacts/raw_corpus/") and path.parent.name == "quarantine_blobs":
            blobs_with_canary += CANARIES["EMAIL"] in text
            continue
        scanned += 1
        for kind, canary in CANARIES.items():
            assert canary not in text and canary.replace(" ", "") not in text, f"{kind} canary in {relative}"
    assert scanned > 10 and blobs_with_canary == 1
    assert list((deepfeed_env / "artifacts" / "augmented_corpus").glob("*/records.parquet")) and list((deepfeed_env / "mlartifacts").rglob("statistics_dp.json"))


def _source(root: Path, name: str, topic: str, extra: bytes = b"") -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"prompt": f"Question {i} about {topic}, asked by the {name} team?",
                        "response": f"Answer {i}: the {topic} guide covers case number {i * 7} in detail.", "tags": [name]})
            for i in range(6)]
    (folder / "pairs.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + extra)


def test_sources_are_partitions_ingested_alone_and_cleaned_together(deepfeed_env, tiny_llama, tmp_path, instance):
    root = tmp_path / "sources"
    _source(root, "clinic", "blood pressure", extra=b'{"prompt": "unterminated\n')
    _source(root, "wiki", "train timetables")
    (root / "wiki" / "blob.txt").write_bytes(b"\x00\x01binary in a text file")
    store = ArtifactStore(deepfeed_env / "artifacts")
    sensor = build_corpus_source_sensor(corpus_path=str(root))

    def tick():
        return sensor(dg.build_sensor_context(instance=instance, resources={"artifact_store": ArtifactStoreResource(root=str(store.root))}))

    def run(requests):
        for request in requests:  # what the daemon does with the sensor's result
            assert dg.materialize([*ASSETS, *CHECKS], selection=["raw_corpus"], partition_key=request.partition_key, run_config=request.run_config,
                                  resources=resources(deepfeed_env, tiny_llama), instance=instance).success

    first = tick()
    assert [r.partition_key for r in first.run_requests] == ["clinic", "wiki"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["clinic", "wiki"]
    instance.add_dynamic_partitions("corpus_source", ["clinic", "wiki"])
    run(first.run_requests)
    assert isinstance(tick(), dg.SkipReason)  # nothing new: nothing re-read

    # Per partition: the accounting metadata and every quarantine row's raw bytes.
    for source, quarantined in [("clinic", 1), ("wiki", 1)]:
        event = latest_raw_materialization(instance, source)
        assert event.metadata["read"].value == event.metadata["kept"].value + quarantined and event.metadata["quarantined"].value == quarantined
        folder = store.local_path(store.latest(f"raw_corpus/{source}"))
        for row in read_table(folder / "quarantine.parquet"):
            assert hashlib.sha256(resolve_quarantine_ref(folder, row["raw_ref"])).hexdigest() == row["raw_sha256"]
    blob = store.local_path(store.latest("raw_corpus/wiki"))
    assert resolve_quarantine_ref(blob, read_table(blob / "quarantine.parquet")[0]["raw_ref"]) == b"\x00\x01binary in a text file"

    # A third source: only it is registered and ingested.
    _source(root, "forum", "garden tools")
    third = tick()
    assert [r.partition_key for r in third.run_requests] == ["forum"] and third.dynamic_partitions_requests[0].partition_keys == ["forum"]
    instance.add_dynamic_partitions("corpus_source", ["forum"])
    run(third.run_requests)
    assert {s: len(store.versions(f"raw_corpus/{s}")) for s in ("clinic", "wiki", "forum")} == {"clinic": 1, "wiki": 1, "forum": 1}
    # A changed source is ingested again, alone, under a new run key.
    (root / "wiki" / "more.txt").write_text("Timetables change twice a year, in spring and in autumn.\n")
    changed = tick()
    assert [r.partition_key for r in changed.run_requests] == ["wiki"] and not changed.dynamic_partitions_requests
    assert changed.run_requests[0].run_key != first.run_requests[1].run_key
    run(changed.run_requests)

    result = _materialize(["clean_corpus"], deepfeed_env, tiny_llama, root, instance, clean={"coverage_embeddings": False})
    assert _checks(result)["clean_corpus_accounting"].passed
    assert _checks(result)["clean_corpus_accounting"].metadata["sources"].value == 3
    meta = result.asset_materializations_for_node("clean_corpus")[0].metadata
    raw = {s: store.latest(f"raw_corpus/{s}") for s in ("clinic", "forum", "wiki")}
    assert meta["read"].value == sum(h.counts["read"] for h in raw.values()) == (6 + 1) + (6 + 1 + 1) + 6
    assert meta["quarantined"].value == 2 and meta["kept_in"].value == meta["cleaned"].value + meta["removed"].value == 6 * 3 + 1
    assert all(f"| {s} | {h.version} |" in meta["sources"].value for s, h in raw.items())
    clean = store.local_path(store.latest("clean_corpus"))
    seen = {r["source"].split("/")[0] for r in read_table(clean / "records.parquet") + read_table(clean / "removed.parquet")}
    assert seen == {"clinic", "forum", "wiki"}
