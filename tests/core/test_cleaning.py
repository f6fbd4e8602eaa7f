import json

from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner, assign_split, clean_records, normalize_text
from deepfeed.core.data.glossary import load_glossary
from deepfeed.core.data.kanonymity import check_k_anonymity
from deepfeed.core.data.pii import has_pii
from deepfeed.core.platform.audit import content_hash

NO_GLOSSARY = CleaningConfig(glossary_path="")


def _pair(i, prompt, response, meta=None, tags=()):
    return {
        "record_id": f"r{i}",
        "source": "s",
        "kind": "pair",
        "prompt": prompt,
        "response": response,
        "text": None,
        "lang": None,
        "tags": list(tags),
        "meta": json.dumps(meta or {}),
    }


def test_normalization_nfkc_controls_markup_and_whitespace():
    assert normalize_text("Ｆｕｌｌ\u3000width\x07  text\r\n\r\n\r\n\nend ") == "Full width text\n\nend"
    assert normalize_text("<p>Hello <b>there</b></p>\nAll rights reserved.") == "Hello there"
    assert normalize_text("   ") is None


def test_exact_duplicates_after_normalization_are_removed_with_reason():
    records = [
        _pair(1, "Hello", "World"),
        _pair(2, "hello ", "world"),
        _pair(3, "Other", "Answer here"),
        _pair(4, "x", ""),
    ]
    result = clean_records(records, NO_GLOSSARY)
    assert [r["record_id"] for r in result.records] == ["r1", "r3"]
    assert result.reasons() == {"exact duplicate": 1, "empty after normalization": 1}
    assert len(result.records) + len(result.removed) == len(records)
    assert result.removed[1]["detail"] == "exact duplicate of r1"


def test_near_duplicates_are_removed_with_the_threshold_configurable():
    base = "The patient was advised to reduce salt intake, exercise daily and return in two weeks for review."
    records = [
        _pair(1, "Advice?", base),
        _pair(2, "Advice?", base.replace("two weeks", "Two  Weeks")),
        _pair(3, "Advice?", base.replace("salt", "sugar")),
    ]
    strict = clean_records(records, CleaningConfig(glossary_path="", near_duplicate_threshold=0.99))
    loose = clean_records(records, CleaningConfig(glossary_path="", near_duplicate_threshold=0.7))
    assert strict.reasons() == {"exact duplicate": 1}  # case and whitespace only
    assert loose.reasons() == {"exact duplicate": 1, "near duplicate": 1}
    assert loose.removed[-1]["detail"].endswith("of r1")


def test_quality_filters_and_short_dialog_pairs():
    records = [
        _pair(1, "Hi", "Yes."),
        _pair(2, "a", "b"),
        _pair(3, "q" * 50, "a" * 50),
        _pair(4, "Noise?", "!!!!!!!!!!!!!!!!!!!!!!!!!"),
    ]
    result = clean_records(records, CleaningConfig(glossary_path="", min_chars=4, max_chars=60))
    assert [r["record_id"] for r in result.records] == ["r1"]
    assert result.reasons() == {"quality: too_short": 1, "quality: too_long": 1, "quality: repetition": 1}


def test_pii_is_scrubbed_in_every_field_and_the_audit_keeps_hashes_only():
    secret = "alice.w@example.com"
    records = [
        _pair(
            1, f"Mail {secret} please", "Call 13812345678 tomorrow.", meta={"contact": secret, "ward": 7}, tags=[secret]
        )
    ]
    result = clean_records(records, NO_GLOSSARY, run_id="run-1")
    [record] = result.records
    assert record["prompt"] == "Mail <EMAIL> please" and record["response"] == "Call <PHONE> tomorrow."
    assert json.loads(record["meta"]) == {"contact": "<EMAIL>", "ward": 7} and record["tags"] == ["<EMAIL>"]
    assert result.pii == {"EMAIL": 3, "PHONE": 1}
    [entry] = [e for e in result.audit if e.action == "anonymized"]
    assert entry.run_id == "run-1" and entry.record_id == "r1" and entry.stage == "clean_corpus"
    assert entry.hash_after == content_hash("Mail <EMAIL> please\nCall <PHONE> tomorrow.")
    assert secret not in repr(result.audit)


def test_glossary_variants_are_normalized_and_language_identified():
    records = [
        _pair(1, "What is high blood pressure?", "It is a common condition."),
        _pair(2, "什么是心梗？", "心梗是冠状动脉阻塞导致的心肌坏死。"),
    ]
    result = clean_records(records, CleaningConfig(glossary_path=None))
    glossary = load_glossary()
    for record in result.records:
        assert not glossary.find_variants(record["prompt"]) and not glossary.find_variants(record["response"])
    assert result.records[0]["prompt"] == "What is hypertension (I10)?"
    assert [r["lang"] for r in result.records] == ["en", "zh"]
    assert result.glossary["I21"] == 2
    assert any(e.action == "modified" and "I10" in e.reason for e in result.audit)


def test_k_anonymity_generalizes_and_suppresses_quasi_identifiers():
    records = [
        _pair(
            i,
            f"Question number {i} about care?",
            f"Answer {i} with some detail.",
            meta={"age": 30 + i % 10, "city": "深圳" if i < 45 else "杭州"},
        )
        for i in range(50)
    ]
    result = clean_records(
        records,
        CleaningConfig(
            glossary_path="",
            quasi_identifiers=("age", "city"),
            k=20,
            max_suppression=0.1,
            near_duplicate_threshold=0.95,
        ),
    )
    metas = [json.loads(r["meta"]) for r in result.records]
    assert check_k_anonymity(metas, ["age", "city"], k=20)[0]
    assert result.kanonymity["suppressed"] == 5 and result.reasons() == {"k-anonymity suppression": 5}
    assert {m["age"] for m in metas} == {"30-34", "35-39"} and {m["city"] for m in metas} == {"深圳"}
    assert sum(e.action == "generalized" for e in result.audit) == 45
    assert len(result.records) + len(result.removed) == 50


def test_batches_share_dedup_state():
    cleaner = CorpusCleaner(NO_GLOSSARY)
    first = cleaner.clean_batch([_pair(1, "Where is the clinic?", "On the second floor.")])
    second = cleaner.clean_batch([_pair(2, "Where is the clinic?", "On the second floor.")])
    assert len(first.records) == 1 and second.reasons() == {"exact duplicate": 1}


def test_split_is_stable_and_near_the_requested_fraction():
    records = [_pair(i, f"question {i}", f"answer {i}") for i in range(2000)]
    splits = [assign_split(r, 0.1, 17) for r in records]
    assert splits == [assign_split(r, 0.1, 17) for r in records]
    share = splits.count("eval") / len(splits)
    assert 0.08 < share < 0.12
    assert splits != [assign_split(r, 0.1, 18) for r in records]


def test_no_pii_left_in_cleaned_text():
    records = [_pair(1, "My ID is 11010519491231002X", "Card 4111 1111 1111 1111, IP 192.168.10.20")]
    [record] = clean_records(records, NO_GLOSSARY).records
    assert not has_pii(record["prompt"]) and not has_pii(record["response"])


def test_worker_pool_gives_the_same_result_as_one_process():
    from deepfeed.core.data.cleaning import clean_stream

    records = [
        _pair(i, f"Question {i % 40} about hypertension?", f"Mail a{i % 7}@example.com, answer {i % 40}.")
        for i in range(200)
    ]
    batches = [records[i : i + 50] for i in range(0, 200, 50)]
    serial = list(clean_stream(batches, CorpusCleaner(CleaningConfig(), run_id="r")))
    pooled = list(clean_stream(batches, CorpusCleaner(CleaningConfig(), run_id="r"), workers=2))
    assert [r.records for r in serial] == [r.records for r in pooled]
    assert [r.removed for r in serial] == [r.removed for r in pooled]
    assert [[(e.record_id, e.action, e.hash_after) for e in r.audit] for r in serial] == [
        [(e.record_id, e.action, e.hash_after) for e in r.audit] for r in pooled
    ]
    assert sum(len(r.records) for r in serial) == 40


def test_batched_scrub_and_glossary_equal_the_per_record_result():
    texts = [
        ("联系人张伟，手机13812345678", "住北京市朝阳区建国路88号，高血压病史"),
        ("Mail bob@example.org about diabetes", "Dr. Jane Smith saw the heart attack patient."),
        ("My name is John Carter", "IP 10.1.2.3 and fe80::1ff:fe23:4567:890a"),
        ("身份证11010519491231002X", "卡号6222021234567894，心梗"),
        ("Plain question?", "Plain answer without anything."),
        ("High blood pressure (I10)?", "high-blood-pressure and COPD, copd"),
        ("Call +1 415-555-0132", "or (010) 6552 1234 / 021-62345678"),
        ("我叫李娜今年30岁", "张先生和王女士来了，type 2 diabetes"),
    ]
    records = [_pair(i, p, r, meta={"note": r}, tags=["x", p[:6]]) for i, (p, r) in enumerate(texts)]
    cleaner = CorpusCleaner(CleaningConfig(glossary_path=None))
    removed, survivors = cleaner.prepare(records)
    singles = [cleaner.prepare([r]) for r in records]
    assert [c for c, _, _ in survivors] == [c for _, s in singles for c, _, _ in s]
    assert removed.pii == sum((r.pii for r, _ in singles), type(removed.pii)())
    assert [(e.record_id, e.action, e.reason, e.hash_after) for e in removed.audit] == [
        (e.record_id, e.action, e.reason, e.hash_after) for r, _ in singles for e in r.audit
    ]
    assert removed.pii["PHONE"] >= 3 and removed.glossary["I10"] >= 3


def test_the_glossary_is_off_by_default_and_scoped_to_domain_tags_when_on():
    general = "Is that a slight depression in the smoothness of a surface?"
    records = [
        _pair(1, general, "Yes, a dent where the plaster sank.", tags=["diy"]),
        _pair(2, "Is depression treatable?", "Yes, depression is treatable with therapy.", tags=["clinic"]),
    ]
    default = clean_records(records, CleaningConfig())
    assert [r["prompt"] for r in default.records] == [general, "Is depression treatable?"] and not default.glossary
    scoped = clean_records(records, CleaningConfig(glossary_path=None, glossary_tags=("clinic",)))
    assert scoped.records[0]["prompt"] == general  # out of scope: general English stays as written
    assert "F32" in scoped.records[1]["prompt"] and scoped.glossary == {"F32": 2}
    assert (
        "F32" in clean_records(records, CleaningConfig(glossary_path=None)).records[0]["prompt"]
    )  # unscoped: what the default avoids
    # The consistency check looks for leftovers in the same scope only.
    from deepfeed.core.data.corpus_checks import glossary_leftovers

    assert glossary_leftovers(scoped.records, load_glossary(), ("clinic",)) == {}
    assert glossary_leftovers(scoped.records, load_glossary()) == {"F32": 1}
