"""Structural perturbation: sentences and clauses reordered only where order is free."""

import random

import pytest

from deepfeed.core.augment.structural import reorder_clauses, split_sentences, structural_variant


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Drink plenty of water, and get enough rest.", "Get enough rest, and drink plenty of water."),
        ("Keep the device dry; store the box in a cool place.", "Store the box in a cool place; keep the device dry."),
        ("多喝水，注意休息。", "注意休息，多喝水。"),
        ("NASA builds rockets, and Mary flies planes.", "Mary flies planes, and NASA builds rockets."),
    ],
)
def test_clauses_of_one_sentence_are_swapped(text, expected):
    assert structural_variant(text, random.Random(0)) == (expected, "clause_reorder")


def test_sentences_are_reordered_as_wholes():
    text = "今天天气晴朗。适合出门散步。空气也很好！"
    new, technique = structural_variant(text, random.Random(3))
    assert technique == "sentence_reorder" and new != text
    assert sorted(split_sentences(new)) == sorted(split_sentences(text))


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty text"),
        ("1. Open settings.\n2. Press reset.", "order carries meaning (steps, list, code or dialog)"),
        ("User: my screen is black\nAgent: restart the phone", "order carries meaning (steps, list, code or dialog)"),
        ("Open the app. Then press reset.", "a sentence depends on the one before it"),
        ("First mix it. Then bake it.", "order carries meaning (steps, list, code or dialog)"),
        ("- Open settings.\n- Press reset.", "order carries meaning (steps, list, code or dialog)"),
        ("Buy a ticket. It is valid for a day.", "a sentence depends on the one before it"),
        ("先洗手，然后吃饭。", "a sequencing, causal or referring word ties the clauses together"),
        (
            "Take the pill because the pain is strong, and rest.",
            "a sequencing, causal or referring word ties the clauses together",
        ),
        ("The sky is blue.", "single sentence without independent clauses"),
    ],
)
def test_order_that_carries_meaning_is_kept(text, reason):
    assert structural_variant(text, random.Random(0)) == reason


def test_chinese_connectives_are_matched_as_words_not_substrings():
    # 后 is a sequencing word, but 后背 (the back) is not: jieba tells them apart.
    assert structural_variant("后背有点疼，头也晕。", random.Random(0)) == ("头也晕，后背有点疼。", "clause_reorder")


def test_mixed_separators_are_not_flattened():
    assert reorder_clauses("Eat fruit, and drink water; sleep well.", random.Random(0)) is None
