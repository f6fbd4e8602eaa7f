"""The evaluation set: stratified seeded sample, user reference sets, training overlap."""

import json
from collections import Counter

import pytest

from deepfeed.core.evaluate.evalset import (
    EvalSetError,
    load_reference_set,
    strata_counts,
    stratified_sample,
    training_overlap,
)


def _records(n_en_health=80, n_zh=20):
    rows = [
        {
            "record_id": f"en{i}",
            "kind": "pair",
            "prompt": f"Question number {i} about blood pressure?",
            "response": f"Answer {i}.",
            "lang": "en",
            "tags": ["health"],
        }
        for i in range(n_en_health)
    ]
    rows += [
        {
            "record_id": f"zh{i}",
            "kind": "pair",
            "prompt": f"第{i}个问题？",
            "response": f"回答{i}。",
            "lang": "zh",
            "tags": [],
        }
        for i in range(n_zh)
    ]
    return rows


def test_stratified_sample_keeps_shares_and_is_fixed_by_seed():
    records = _records()
    sample = stratified_sample(records, 10, seed=17)
    assert Counter(r["lang"] for r in sample) == {"en": 8, "zh": 2}
    assert strata_counts(sample) == {"en/health": 8, "zh/untagged": 2}
    again = stratified_sample(list(reversed(records)), 10, seed=17)
    assert [r["record_id"] for r in again] == [r["record_id"] for r in sample]  # input order does not matter
    assert {r["record_id"] for r in stratified_sample(records, 10, seed=18)} != {r["record_id"] for r in sample}
    # a small stratum is kept even when its share rounds to zero
    assert strata_counts(stratified_sample(_records(99, 1), 5, seed=1)) == {"en/health": 4, "zh/untagged": 1}
    assert len(stratified_sample(records, 0, seed=1)) == len(records) == len(stratified_sample(records, 500, seed=1))


def test_training_overlap_by_id_exact_and_near_duplicate():
    eval_records = [
        {
            "record_id": "e1",
            "kind": "pair",
            "prompt": "What is hypertension and how is it treated?",
            "response": "High blood pressure, treated with diet and drugs.",
        },
        {
            "record_id": "e2",
            "kind": "pair",
            "prompt": "How do I reset my password?",
            "response": "Open settings, choose security and press reset.",
        },
        {
            "record_id": "e3",
            "kind": "pair",
            "prompt": "Recommend a book about rivers",
            "response": "Try a history of the Danube, from its source in the Black Forest to the delta.",
        },
        {"record_id": "e4", "kind": "text", "text": "A note that nobody trained on."},
    ]
    train = [
        {
            "record_id": "t1",
            "parent_id": "e1",
            "kind": "pair",
            "prompt": "How is hypertension treated?",
            "response": "With diet.",
        },
        {
            "record_id": "t2",
            "parent_id": None,
            "kind": "pair",
            "prompt": "how do I reset my  password?",
            "response": "Open settings, choose security and press reset.",
        },
        {
            "record_id": "t3",
            "parent_id": None,
            "kind": "pair",
            "prompt": "Recommend a book about rivers!",
            "response": "Try a history of the Danube, from its source in the Black Forest to the delta.",
        },
        {
            "record_id": "t4",
            "parent_id": None,
            "kind": "pair",
            "prompt": "Completely different",
            "response": "Nothing alike at all here.",
        },
    ]
    report = training_overlap(eval_records, train)
    assert report.by_parent_id == [("e1", "t1")]
    assert report.by_exact_hash == [("e2", "t2")]  # case and spacing do not hide a copy
    assert report.by_near_duplicate == [("e3", "t3")]
    assert report.summary()["overlapping_eval_records"] == 3
    clean = training_overlap(eval_records, train[3:])
    assert clean.overlapping == 0 and clean.summary()["train_records"] == 1


def test_reference_set_from_jsonl(tmp_path):
    path = tmp_path / "ref.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "prompt": "What is ICD-10 I10?",
                        "reference": "Essential hypertension.",
                        "lang": "en",
                        "label": "cardiology",
                    }
                ),
                "",
                json.dumps(
                    {"prompt": "什么是高血压？", "response": "血压持续升高。", "tags": ["health"]}, ensure_ascii=False
                ),
            ]
        ),
        encoding="utf-8",
    )
    records = load_reference_set(path)
    assert [r["response"] for r in records] == ["Essential hypertension.", "血压持续升高。"]
    assert json.loads(records[0]["meta"]) == {"label": "cardiology"} and records[1]["tags"] == ["health"]
    with pytest.raises(EvalSetError, match="does not exist"):
        load_reference_set(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reference": "no prompt"}\n')
    with pytest.raises(EvalSetError, match="bad.jsonl:1: every line needs a 'prompt'"):
        load_reference_set(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalSetError, match="holds no records"):
        load_reference_set(tmp_path / "empty.jsonl")
