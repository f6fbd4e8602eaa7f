"""raw_corpus and clean_corpus with their checks: privacy, 3C, audit, blocking, and PII
canaries that must not reach any artifact of the whole chain."""

import json
import sqlite3
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from deepfeed.core.audit import AuditLedger
from tests.dagster.test_chain import ASSETS, CHECKS, resources, run_config

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
    return dg.materialize(
        [*ASSETS, *CHECKS], selection=selection, resources=resources(home, base_model),
        run_config=run_config(corpus, selection, **extra), instance=instance, raise_on_error=raise_on_error,
    )


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
    result = _materialize("*", deepfeed_env, tiny_llama, corpus, instance)
    assert result.success

    # The corpus checks on this run: the tiny corpus is clean, consistent and has no QIs.
    checks = _checks(result)
    assert {n: c.passed for n, c in checks.items() if n.startswith(("raw_corpus", "clean_corpus")) and n != "clean_corpus_coverage"} == {
        "raw_corpus_accounting": True, "clean_corpus_accounting": True, "clean_corpus_consistency": True,
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
    assert {"quarantined", "anonymized", "modified", "dropped"} <= actions

    scanned = 0
    for path, text in _haystacks(deepfeed_env):
        relative = path.relative_to(deepfeed_env).as_posix()
        # The ingested copy of the sources is the input itself, before anonymization:
        # the scan must find the canaries there, or it could not find them anywhere.
        if relative.startswith("artifacts/raw_corpus/") and path.name == "records.parquet":
            assert all(canary in text for canary in CANARIES.values())
            continue
        scanned += 1
        for kind, canary in CANARIES.items():
            assert canary not in text and canary.replace(" ", "") not in text, f"{kind} canary in {relative}"
    assert scanned > 10
    assert list((deepfeed_env / "artifacts" / "augmented_corpus").glob("*/records.parquet")) and list((deepfeed_env / "mlartifacts").rglob("statistics_dp.json"))
