import random

import pytest

from deepfeed.core.augmentation import (
    AugmentationConfig,
    WordNetSynonyms,
    augment_records,
    protected_mask,
    reorder_sentences,
    split_sentences,
    replace_synonyms,
)
from deepfeed.core.offline import activate_nltk_data


@pytest.fixture(scope="module")
def synonyms(tmp_path_factory):
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    return WordNetSynonyms()


def test_reorder_keeps_the_sentences_and_changes_the_order():
    text = "One fact here. Another fact here! A third one?"
    new = reorder_sentences(text, random.Random(1))
    assert new != text
    assert sorted(split_sentences(new)) == sorted(split_sentences(text))


def test_reorder_refuses_ordered_steps_and_single_sentences():
    assert reorder_sentences("1. Open settings.\n2. Press reset.", random.Random(0)) is None
    assert reorder_sentences("Only one sentence.", random.Random(0)) is None
    assert reorder_sentences("First mix it. Then bake it.", random.Random(0)) is None
    zh = reorder_sentences("今天天气晴朗。适合出门散步。", random.Random(0))
    assert zh == "适合出门散步。今天天气晴朗。"


def test_synonyms_never_touch_protected_spans(synonyms):
    text = "Patient with code I10 called <PHONE> at 10:30 and walked 3 miles quickly home"
    spans = protected_mask(text)
    protected = [text[a:b] for a, b in spans]
    assert {"I10", "<PHONE>", "10:30", "3"} <= set(protected)
    for seed in range(20):
        new, count = replace_synonyms(text, synonyms, rate=1.0, rng=random.Random(seed))
        assert count >= 1
        for token in protected:
            assert token in new


def test_only_train_records_are_augmented_with_provenance(synonyms):
    records = [
        {"record_id": f"r{i}", "kind": "pair", "prompt": "Question?", "response": f"The quick answer is good. It helps a lot {i}.", "text": None, "lang": "en", "split": split}
        for i, split in enumerate(["train"] * 6 + ["eval"] * 2)
    ]
    result = augment_records(records, AugmentationConfig(reorder_ratio=1.0, synonym_ratio=1.0), synonyms)
    parents = {r["parent_id"] for r in result.records if r["technique"] != "original"}
    assert parents and parents <= {f"r{i}" for i in range(6)}
    assert not any(r["split"] == "eval" for r in result.records)
    techniques = {r["technique"] for r in result.records}
    assert techniques == {"original", "sentence_reorder", "wordnet_synonym"}
    assert len({r["record_id"] for r in result.records}) == len(result.records)


def test_language_without_synonym_resource_is_recorded(synonyms):
    records = [{"record_id": "z", "kind": "pair", "prompt": "问", "response": "一句话。", "text": None, "lang": "zh", "split": "train"}]
    result = augment_records(records, AugmentationConfig(reorder_ratio=0.0, synonym_ratio=1.0), synonyms)
    assert result.skipped == {"synonyms: no synonym resource for lang=zh": 1}
    assert [r["technique"] for r in result.records] == ["original"]
