"""raw_corpus and clean_corpus with their checks: privacy, 3C, audit, blocking, and PII
canaries that must not reach any artifact of the whole chain."""

import gzip
import hashlib
import json
import os
import sqlite3
import stat
import zipfile
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from deepfeed.assets.corpus import latest_raw_materialization
from deepfeed.core.data.ingest import iter_files, quarantine_schema, record_schema, resolve_quarantine_ref, source_files
from deepfeed.core.data.raw_store import ENV_KEY, RawStore, new_key
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.tables import TableWriter, read_table
from deepfeed.resources import ArtifactStoreResource
from deepfeed.sensors.corpus import build_corpus_source_sensor
from tests.dagster.test_chain import ASSETS, CHECKS, ingest, materialize, resources

CANARIES = {
    "EMAIL": "zq.canary.7731@example.org",
    "PHONE": "13917730042",
    "ID_CN": "11010519491231002X",
    "BANK_CARD": "6222 0212 3456 7894",
    "IP": "172.30.114.9",
}
# The same canaries disguised as people (or tools) write them; the scan looks for these too.
DISGUISED = {
    "EMAIL_PERCENT": "zq.canary.7731%40example.org",
    "EMAIL_SPELLED": "zq dot canary dot 7731 at example dot org",
    "PHONE_ZERO_WIDTH": "139\u200b1773\u200b0042",
    "PHONE_SPACED": "1 3 9 1 7 7 3 0 0 4 2",
}


def canary_corpus(folder: Path) -> Path:
    from tests.conftest import write_corpus

    write_corpus(folder)
    rows = [
        {
            "prompt": f"My e-mail is {CANARIES['EMAIL']}, can you write to me?",
            "response": "Yes, we will reply by e-mail soon.",
            "tags": ["support"],
            "ward": "north",
        },
        {
            "prompt": f"Call me at {CANARIES['PHONE']} about the results.",
            "response": "We will call you this afternoon.",
            "tags": ["support"],
        },
        {
            "prompt": "Here is my resident ID for the form.",
            "response": f"Thanks, ID {CANARIES['ID_CN']} is on file now.",
            "tags": ["records"],
        },
        {
            "text": f"Refund to card {CANARIES['BANK_CARD']} was approved by the clinic office.",
            "tags": ["billing"],
            "contact": CANARIES["EMAIL"],
        },
        {
            "prompt": f"The portal logged me in from {CANARIES['IP']}, is that right?",
            "response": "Yes, that address is the clinic's.",
            "tags": ["support"],
        },
        {
            "prompt": f"Write to {DISGUISED['EMAIL_PERCENT']} or {DISGUISED['EMAIL_SPELLED']} please.",
            "response": "Noted, we will write.",
            "tags": ["support"],
        },
        {
            "prompt": f"My number is {DISGUISED['PHONE_ZERO_WIDTH']}, or {DISGUISED['PHONE_SPACED']} at work.",
            "response": "We will call back.",
            "tags": ["support"],
        },
    ]
    with (folder / "pairs.jsonl").open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    # plain text, read as paragraphs
    (folder / "letter.txt").write_text(
        f"Dear office,\nmy resident ID is {CANARIES['ID_CN']} and my card {CANARIES['BANK_CARD']}.\n", encoding="utf-8"
    )
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
    rows = [
        {
            "prompt": f"Patient question number {i} about the ward routine?",
            "response": f"Answer {i}: visiting hours end at {8 + i % 5} pm.",
            "age": 20 + i % 40,
            "region": ["深圳", "广州", "杭州"][i % 3],
        }
        for i in range(90)
    ]
    (folder / "notes.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    clean = {"quasi_identifiers": ["age", "region"], "k": 20, "coverage_embeddings": False}
    result = _materialize(["raw_corpus", "clean_corpus"], deepfeed_env, tiny_llama, folder, instance, clean=clean)
    check = _checks(result)["clean_corpus_k_anonymity"]
    assert check.passed and check.metadata["smallest_class"].value >= 20
    actions = {
        e["action"] for e in AuditLedger(deepfeed_env / "audit" / "ledger.jsonl").iter_entries(run_id=result.run_id)
    }
    assert "generalized" in actions


def _unscrubbed_raw_version(home: Path, corpus: Path, source: str = "_root") -> None:
    """A raw_corpus version holding raw text, as versions written before ingest scrubbed PII did."""
    root, files = source_files(corpus, source)
    store = ArtifactStoreResource(root=str(home / "artifacts")).store()
    with store.new_version(f"raw_corpus/{source}", {"source": source}) as version:
        read = kept = 0
        with (
            TableWriter(version.path / "records.parquet", record_schema()) as records,
            TableWriter(version.path / "quarantine.parquet", quarantine_schema()) as quarantined,
        ):
            for _, part in iter_files(files, root, scrub_pii=False):
                records.write(part.records)
                quarantined.write(part.quarantine)
                read, kept = read + part.read, kept + len(part.records)
        version.counts.update({"read": read, "kept": kept, "quarantined": read - kept})


def test_pii_left_in_the_corpus_blocks_the_chain(deepfeed_env, tiny_llama, tmp_path, instance):
    corpus = canary_corpus(tmp_path / "corpus")
    assert ingest(deepfeed_env, tiny_llama, corpus, instance)["_root"].success
    _unscrubbed_raw_version(deepfeed_env, corpus)
    selection = ["clean_corpus", "augmented_corpus"]
    result = _materialize(
        selection,
        deepfeed_env,
        tiny_llama,
        corpus,
        instance,
        clean={"scrub_pii": False, "coverage_embeddings": False},
        raise_on_error=False,
    )
    check = _checks(result)["clean_corpus_cleanliness"]
    assert not check.passed and "noise ratio" in check.description
    assert not result.asset_materializations_for_node("augmented_corpus")


def test_bad_clean_config_names_the_field(deepfeed_env, tiny_llama, tiny_corpus, instance):
    assert _materialize(["raw_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance).success
    for clean, field in [
        ({"dp_epsilon": 5.0}, "clean_corpus.config.dp_epsilon"),
        ({"use_glossary": True, "glossary_path": "/nope.yaml"}, "clean_corpus.config.glossary_path"),
        ({"dp_epsilon": 0.3, "dp_epsilon_total": 0.2}, "clean_corpus.config.dp_epsilon_total"),
    ]:
        result = _materialize(
            ["clean_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance, clean=clean, raise_on_error=False
        )
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
        assert field in failure.step_failure_data.error.to_string()


def _decoded(path: Path, data: bytes) -> str:
    """A file's content as searchable text, whatever its container: Parquet (compressed
    pages) read back through pyarrow, SQLite dumped, gzip and zip opened."""
    if data[:4] == b"PAR1":
        return json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str)
    if data[:16] == b"SQLite format 3\x00":
        with sqlite3.connect(path) as db:
            return "\n".join(db.iterdump())
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data).decode("utf-8", "replace")
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            return "\n".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
    return data.decode("utf-8", "replace")


def _haystacks(home: Path):
    """Every file under the home, as searchable text."""
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        yield path, _decoded(path, path.read_bytes())


def _canary_hits(text: str) -> list[str]:
    needles = {**CANARIES, **DISGUISED, "BANK_CARD_DIGITS": CANARIES["BANK_CARD"].replace(" ", "")}
    return [kind for kind, needle in needles.items() if needle in text]


def _scan_home(home: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(files outside the raw store with canaries in them, files inside it with canaries
    in readable form): every file under the home, whatever it is."""
    outside, inside = {}, {}
    for path, text in _haystacks(home):
        relative = path.relative_to(home).as_posix()
        hits = _canary_hits(text)
        if hits:
            (inside if relative.startswith("raw_store/") else outside)[relative] = hits
    return outside, inside


def _assert_private(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} has mode {mode:04o}"


def test_pii_canaries_reach_no_file_of_the_chain_outside_the_encrypted_raw_store(
    deepfeed_env, tiny_llama, tmp_path, instance, monkeypatch
):
    """The whole chain on a corpus with five PII canaries (some disguised), the raw store
    encrypted: no file under the home holds a canary in readable form, raw_corpus's
    records.parquet included."""
    monkeypatch.setenv(ENV_KEY, new_key())
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
    assert {
        n: c.passed for n, c in checks.items() if n.startswith("clean_corpus") and n != "clean_corpus_coverage"
    } == {
        "clean_corpus_accounting": True,
        "clean_corpus_consistency": True,
        "clean_corpus_cleanliness": True,
        "clean_corpus_k_anonymity": True,
    }
    assert checks["clean_corpus_cleanliness"].metadata["noise_ratio"].value == 0.0
    coverage = checks["clean_corpus_coverage"]
    assert coverage.severity == dg.AssetCheckSeverity.WARN and "share_by_tag" in coverage.metadata

    raw_meta = raw["_root"].asset_materializations_for_node("raw_corpus")[0].metadata
    assert raw_meta["pii_replaced"].value >= 9 and raw_meta["raw_store_encrypted"].value is True
    meta = instance.get_latest_materialization_event(dg.AssetKey("clean_corpus")).asset_materialization.metadata
    assert 0 < meta["dp_epsilon_spent"].value <= 0.5
    assert meta["pii_replaced"].value == meta["pii_replaced_at_ingest"].value >= 9  # nothing left for cleaning to find
    assert meta["glossary"].value == "off" and meta["glossary_replaced"].value == 0  # the glossary is off by default
    for table in ("languages_dp", "tags_dp", "length_histogram_dp"):
        assert any("ε-DP" in column.name for column in meta[table].schema.columns)
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    assert ledger.verify(anchor=meta["audit_head"].value).ok  # the head recorded by clean_corpus is in the chain
    actions = {e["action"] for e in ledger.iter_entries(run_id=result.run_id)}
    assert {"modified", "dropped"} <= actions
    assert {"quarantined", "anonymized"} <= {e["action"] for e in ledger.iter_entries(stage="raw_corpus")}  # at ingest

    outside, inside = _scan_home(deepfeed_env)
    assert outside == {}, f"PII canaries outside the raw store: {outside}"
    assert inside == {}, f"readable PII canaries in the encrypted raw store: {inside}"
    scanned = sum(1 for p in deepfeed_env.rglob("*") if p.is_file())
    assert scanned > 20 and list((deepfeed_env / "artifacts" / "raw_corpus").rglob("records.parquet"))
    # The raw store does hold the malformed line with the e-mail canary, sealed: the scan
    # above would have seen it in the clear.
    store = deepfeed_env / "raw_store"
    _assert_private(store)
    blobs = [p for p in store.rglob("*") if p.is_file()]
    assert blobs and all(p.name.endswith(".fernet") for p in blobs)
    folder = RawStore.from_env().source("_root").folder
    opened = [
        resolve_quarantine_ref(folder, f"quarantine_blobs/{p.name.removesuffix('.fernet')}", os.environ[ENV_KEY])
        for p in blobs
    ]
    assert any(CANARIES["EMAIL"].encode() in data for data in opened)
    assert list((deepfeed_env / "artifacts" / "augmented_corpus").glob("*/records.parquet")) and list(
        (deepfeed_env / "mlartifacts").rglob("statistics_dp.json")
    )


def test_without_a_key_the_canaries_rest_only_in_the_private_raw_store_and_retiring_purges_them(
    deepfeed_env, tiny_llama, tmp_path, instance
):
    from deepfeed.sensors.corpus import retire_source

    corpus = canary_corpus(tmp_path / "corpus")
    result = _materialize(
        ["raw_corpus", "clean_corpus"], deepfeed_env, tiny_llama, corpus, instance, clean={"coverage_embeddings": False}
    )
    assert result.success
    outside, inside = _scan_home(deepfeed_env)
    assert outside == {}, f"PII canaries outside the raw store: {outside}"
    assert list(inside) and all("EMAIL" in hits for hits in inside.values())  # the malformed line, kept byte for byte
    _assert_private(deepfeed_env / "raw_store")

    store = ArtifactStoreResource(root=str(deepfeed_env / "artifacts")).store()
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    retire_source(instance, store, "_root", "withdrawn by the data owner", ledger, purge_raw=True)
    assert _scan_home(deepfeed_env) == ({}, {})
    assert not (deepfeed_env / "raw_store" / "_root").exists()
    entry = list(ledger.iter_entries(action="retired"))[-1]
    assert entry["extra"]["raw_store_files_purged"] >= 1


def _source(root: Path, name: str, topic: str, extra: bytes = b"") -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        json.dumps(
            {
                "prompt": f"Question {i} about {topic}, asked by the {name} team?",
                "response": f"Answer {i}: the {topic} guide covers case number {i * 7} in detail.",
                "tags": [name],
            }
        )
        for i in range(6)
    ]
    (folder / "pairs.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + extra)


def test_sources_are_partitions_ingested_alone_and_cleaned_together(deepfeed_env, tiny_llama, tmp_path, instance):
    root = tmp_path / "sources"
    _source(root, "clinic", "blood pressure", extra=b'{"prompt": "unterminated\n')
    _source(root, "wiki", "train timetables")
    (root / "wiki" / "blob.txt").write_bytes(b"\x00\x01binary in a text file")
    store = ArtifactStore(deepfeed_env / "artifacts")
    sensor = build_corpus_source_sensor(corpus_path=str(root))

    def tick():
        return sensor(
            dg.build_sensor_context(
                instance=instance, resources={"artifact_store": ArtifactStoreResource(root=str(store.root))}
            )
        )

    def run(requests):
        for request in requests:  # what the daemon does with the sensor's result
            assert dg.materialize(
                [*ASSETS, *CHECKS],
                selection=["raw_corpus"],
                partition_key=request.partition_key,
                run_config=request.run_config,
                resources=resources(deepfeed_env, tiny_llama),
                instance=instance,
            ).success

    first = tick()
    assert [r.partition_key for r in first.run_requests] == ["clinic", "wiki"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["clinic", "wiki"]
    instance.add_dynamic_partitions("corpus_source", ["clinic", "wiki"])
    run(first.run_requests)
    assert isinstance(tick(), dg.SkipReason)  # nothing new: nothing re-read

    # Per partition: the accounting metadata and every quarantine row's raw bytes.
    for source, quarantined in [("clinic", 1), ("wiki", 1)]:
        event = latest_raw_materialization(instance, source)
        assert (
            event.metadata["read"].value == event.metadata["kept"].value + quarantined
            and event.metadata["quarantined"].value == quarantined
        )
        folder = store.local_path(store.latest(f"raw_corpus/{source}"))
        raw_store = Path(store.latest(f"raw_corpus/{source}").counts["raw_store"])
        for row in read_table(folder / "quarantine.parquet"):
            assert hashlib.sha256(resolve_quarantine_ref(raw_store, row["raw_ref"])).hexdigest() == row["raw_sha256"]
    blob = store.local_path(store.latest("raw_corpus/wiki"))
    assert (
        resolve_quarantine_ref(RawStore().source("wiki").folder, read_table(blob / "quarantine.parquet")[0]["raw_ref"])
        == b"\x00\x01binary in a text file"
    )

    # A third source: only it is registered and ingested.
    _source(root, "forum", "garden tools")
    third = tick()
    assert [r.partition_key for r in third.run_requests] == ["forum"] and third.dynamic_partitions_requests[
        0
    ].partition_keys == ["forum"]
    instance.add_dynamic_partitions("corpus_source", ["forum"])
    run(third.run_requests)
    assert {s: len(store.versions(f"raw_corpus/{s}")) for s in ("clinic", "wiki", "forum")} == {
        "clinic": 1,
        "wiki": 1,
        "forum": 1,
    }
    # A changed source is ingested again, alone, under a new run key.
    (root / "wiki" / "more.txt").write_text("Timetables change twice a year, in spring and in autumn.\n")
    changed = tick()
    assert [r.partition_key for r in changed.run_requests] == ["wiki"] and not changed.dynamic_partitions_requests
    assert changed.run_requests[0].run_key != first.run_requests[1].run_key
    run(changed.run_requests)

    result = _materialize(
        ["clean_corpus"], deepfeed_env, tiny_llama, root, instance, clean={"coverage_embeddings": False}
    )
    assert _checks(result)["clean_corpus_accounting"].passed
    assert _checks(result)["clean_corpus_accounting"].metadata["sources"].value == 3
    meta = result.asset_materializations_for_node("clean_corpus")[0].metadata
    raw = {s: store.latest(f"raw_corpus/{s}") for s in ("clinic", "forum", "wiki")}
    assert meta["read"].value == sum(h.counts["read"] for h in raw.values()) == (6 + 1) + (6 + 1 + 1) + 6
    assert (
        meta["quarantined"].value == 2
        and meta["kept_in"].value == meta["cleaned"].value + meta["removed"].value == 6 * 3 + 1
    )
    assert all(f"| {s} | {h.version} |" in meta["sources"].value for s, h in raw.items())
    clean = store.local_path(store.latest("clean_corpus"))
    seen = {
        r["source"].split("/")[0] for r in read_table(clean / "records.parquet") + read_table(clean / "removed.parquet")
    }
    assert seen == {"clinic", "forum", "wiki"}


def test_two_runs_cannot_spend_more_than_the_total_epsilon_and_no_exact_counts_leave(
    deepfeed_env, tiny_llama, tiny_corpus, instance
):
    """The ε spent on a dataset accumulates across runs (before, each run had a fresh 0.5),
    and the coverage check and MLflow show noisy counts only."""
    from tests.dagster.test_chain import resources as chain_resources

    clean = {"coverage_embeddings": False, "dp_epsilon": 0.3, "dp_epsilon_total": 0.5}
    first = _materialize(["raw_corpus", "clean_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance, clean=clean)
    second = _materialize(["clean_corpus"], deepfeed_env, tiny_llama, tiny_corpus, instance, clean=clean)
    one, two = (r.asset_materializations_for_node("clean_corpus")[0].metadata for r in (first, second))
    assert one["dp_epsilon_spent"].value == pytest.approx(0.3) and one["dp_release"].value == "new"
    # 0.3 more would make 0.6 > 0.5: the second run spends nothing and re-publishes the first release.
    assert two["dp_epsilon_spent"].value == 0 and two["dp_epsilon_spent_on_dataset"].value == pytest.approx(0.3)
    assert first.run_id in two["dp_release"].value and two["tags_dp"].value == one["tags_dp"].value
    ledger = json.loads((deepfeed_env / "privacy" / "epsilon_ledger.json").read_text())["datasets"]
    assert [[e["epsilon"] for e in entries] for entries in ledger.values()] == [[pytest.approx(0.3)]]

    # Coverage: the per-tag numbers are the released noisy ones, no exact record or long-tail counts.
    store = ArtifactStoreResource(root=str(deepfeed_env / "artifacts")).store()
    version = store.local_path(store.latest("clean_corpus"))
    noisy = json.loads((version / "statistics_dp.json").read_text())["tags"]
    table = _checks(second)["clean_corpus_coverage"].metadata["share_by_tag"].value
    assert "records (ε-DP)" in table and "long tail |" not in table
    for tag, count in noisy.items():
        assert f"| {tag} | {count} |" in table
    # MLflow: only the ε-DP statistics of the corpus, no exact totals.
    client = chain_resources(deepfeed_env, tiny_llama)["mlflow"].client()
    experiment = client.get_experiment_by_name("deepfeed")
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.dagster_run_id = '{first.run_id}'")
    corpus_metrics = {k for k in run.data.metrics if k.startswith("corpus_")}
    assert corpus_metrics and all(k.startswith("corpus_dp_") for k in corpus_metrics), corpus_metrics
    assert run.data.metrics["corpus_dp_records"] == sum(
        json.loads((version / "statistics_dp.json").read_text())["languages"].values()
    )
