"""Structural perturbation: sentences and clauses reordered only where order is free."""

import random

import pytest

from deepfeed.core.augment.structural import reorder_clauses, split_sentences, structural_variant

DEPENDS = "a sentence depends on the one before it (or is a question or a fragment)"
NO_CLAUSES = "single sentence without clauses that stand on their own"


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
        ("Open the app. Then press reset.", DEPENDS),
        ("First mix it. Then bake it.", "order carries meaning (steps, list, code or dialog)"),
        ("- Open settings.\n- Press reset.", "order carries meaning (steps, list, code or dialog)"),
        ("Buy a ticket. It is valid for a day.", DEPENDS),
        ("先洗手，然后吃饭。", "a sequencing, causal or referring word ties the clauses together"),
        (
            "Take the pill because the pain is strong, and rest.",
            "a sequencing, causal or referring word ties the clauses together",
        ),
        ("The sky is blue.", NO_CLAUSES),
    ],
)
def test_order_that_carries_meaning_is_kept(text, reason):
    assert structural_variant(text, random.Random(0)) == reason


def test_chinese_connectives_are_matched_as_words_not_substrings():
    # 后 is a sequencing word, but 后背 (the back) is not: jieba tells them apart.
    assert structural_variant("后背有点疼，头也晕。", random.Random(0)) == ("头也晕，后背有点疼。", "clause_reorder")


def test_mixed_separators_are_not_flattened():
    assert reorder_clauses("Eat fruit, and drink water; sleep well.", random.Random(0)) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        # Children that real chatterbot answers got before these rules (sampled 2026-12-05).
        # A list item split off by an Oxford comma is not a clause:
        ("The kit holds gauze, tape, and scissors.", NO_CLAUSES),
        (
            "Software which implements the basic functions of a computer, such as memory access, processes, and "
            "peripheral access.",
            "a sequencing, causal or referring word ties the clauses together",
        ),
        ("I may be able to learn how to love, or at any rate express love somehow.", NO_CLAUSES),
        ("He is favorite poet.  Truly one of a kind.", DEPENDS),  # a fragment
        ('Mad?  Mad as in "mentally ill" or mad as in "angry?"', DEPENDS),
        ("I think Dune is an excellent story.  Did you see any of the movies?", DEPENDS),
        (
            "two boll weevils grew up in S. Carolina. one took off to hollywood and became a rich star. "
            "the other stayed in carolina.",
            DEPENDS,
        ),
        ("你当你穿越一只猫和一只柠檬,你得到了什么?", NO_CLAUSES),  # a question's clauses
        ("是啊,我总是表现在社会不能接受的方式。", NO_CLAUSES),  # an interjection
        ("不,我没有对篮球的协调。", NO_CLAUSES),
        (
            "从技术上讲,这是资源稀缺的条件下,分配的研究。",
            "a sequencing, causal or referring word ties the clauses together",
        ),
        ("我的软件在所有操作系统上运行,包括Windows,Linux和Mac OS。", NO_CLAUSES),  # a list
        ("一个社会政治运动主张生产资料,并带来一个无阶级社会的共同所有权。", NO_CLAUSES),  # 并: and
        ("格雷戈里说,我到当前行不响应。", NO_CLAUSES),  # reported speech
        ("我更紧张,比我应该的。", NO_CLAUSES),
    ],
)
def test_parts_that_do_not_stand_alone_stay_in_place(text, reason):
    assert structural_variant(text, random.Random(0)) == reason


@pytest.mark.parametrize(
    "text",
    [
        "I believe they said Dr. Smith on the phone. I called him back.",
        "I've heard it said that Arthur C. Clark wrote the most literary technical proposals in history.",
        "Standard pieces of gold, silver, etc. stamped by government authority.",
    ],
)
def test_abbreviations_and_initials_do_not_end_sentences(text):
    for sentence in split_sentences(text):
        assert not sentence.endswith(("Dr.", "C.", "etc.")), sentence
