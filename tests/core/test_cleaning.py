from deepfeed.core.cleaning import CleaningConfig, assign_split, clean_records, normalize_text


def _pair(i, prompt, response):
    return {"record_id": f"r{i}", "source": "s", "kind": "pair", "prompt": prompt, "response": response, "text": None}


def test_normalization_nfkc_controls_and_whitespace():
    assert normalize_text("Ｆｕｌｌ\u3000width\x07  text\r\n\r\n\r\n\nend ") == "Full width text\n\nend"
    assert normalize_text("   ") is None


def test_exact_duplicates_after_normalization_are_removed_with_reason():
    records = [_pair(1, "Hello", "World"), _pair(2, "hello ", "world"), _pair(3, "Other", "Answer"), _pair(4, "x", "")]
    result = clean_records(records, CleaningConfig())
    assert [r["record_id"] for r in result.records] == ["r1", "r3"]
    assert result.reasons() == {"exact duplicate": 1, "empty after normalization": 1}
    assert len(result.records) + len(result.removed) == len(records)
    assert result.removed[0]["detail"] == "exact duplicate of r1"


def test_length_filters():
    records = [_pair(1, "a", "b"), _pair(2, "q" * 50, "a" * 50)]
    result = clean_records(records, CleaningConfig(min_chars=5, max_chars=60))
    assert result.reasons() == {"too short (< 5 chars)": 1, "too long (> 60 chars)": 1}


def test_split_is_stable_and_near_the_requested_fraction():
    records = [_pair(i, f"question {i}", f"answer {i}") for i in range(2000)]
    splits = [assign_split(r, 0.1, 17) for r in records]
    assert splits == [assign_split(r, 0.1, 17) for r in records]
    share = splits.count("eval") / len(splits)
    assert 0.08 < share < 0.12
    assert splits != [assign_split(r, 0.1, 18) for r in records]
