"""FGSM on a tiny random causal LM: the training loss term and adversarial samples."""

import re

import pytest
import torch

from deepfeed.core.augment.contextual_synonyms import Skip
from deepfeed.core.augment.fgsm import FgsmTextAttack, fgsm_embedding_loss
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.augment.zh_synonyms import CilinSynonyms
from deepfeed.core.platform.home import activate_nltk_data
from deepfeed.core.train.modeling import collate, encode_record, load_model, load_tokenizer
from tests.conftest import PAIRS


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    torch.manual_seed(0)
    return load_model(tiny_llama), load_tokenizer(tiny_llama)


def _batch(tokenizer):
    records = [{"kind": "pair", "prompt": p, "response": r} for p, r in PAIRS[:4]]
    return collate([encode_record(tokenizer, r, 64) for r in records], tokenizer.pad_token_id)


def test_fgsm_loss_is_higher_than_clean_and_trains_the_parameters(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = _batch(tokenizer)
    model.train()
    clean = model(**batch).loss
    adversarial = fgsm_embedding_loss(model, batch, epsilon=0.05)
    assert adversarial.item() > clean.item()
    model.zero_grad()
    adversarial.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_fgsm_loss_grows_with_epsilon_and_refuses_out_of_spec(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = _batch(tokenizer)
    with torch.no_grad():
        clean = model(**batch).loss.item()
    small = fgsm_embedding_loss(model, batch, 0.01).item()
    large = fgsm_embedding_loss(model, batch, 0.5).item()
    assert clean < small < large
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match="epsilon"):
            fgsm_embedding_loss(model, batch, bad)


@pytest.fixture(scope="module")
def lexicons():
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    return {"en": WordNetSynonyms(), "zh": CilinSynonyms()}


def test_adversarial_swaps_are_in_context_synonyms(model_and_tokenizer, lexicons):
    model, tokenizer = model_and_tokenizer
    attack = FgsmTextAttack(
        model, tokenizer, epsilon=0.1, max_modification_rate=0.5, protected=protected_mask, lexicons=lexicons
    )
    texts = [r for _, r in PAIRS] + [
        "The inactive account of John Dewey was closed quickly.",
        "The card 4111 1111 with code I10 and <EMAIL> is fine.",
    ]
    results = attack.attack(texts)
    edits = [(t, r) for t, r in zip(texts, results) if hasattr(r, "swaps")]
    assert edits, results
    # The swaps are chosen to raise the loss to first order (the gradient step's projection
    # onto each swap's embedding change). Whether the real loss rises too is measured on
    # the real model (benchmarks/augmentation_quality.py): on this tiny random model the
    # first-order estimate is no guide to the realised change either way.
    for _, edit in edits:
        assert edit.chosen and all(gain > 0 for gain, *_ in edit.chosen)
        assert [g for g, *_ in edit.chosen] == sorted((g for g, *_ in edit.chosen), reverse=True)
    for text, edit in edits:
        assert edit.text != text and edit.replaced == len(edit.swaps) >= 1
        offered = {text[a:b]: set(c) for a, b, c in attack.options(text)}
        for old, new in edit.swaps:
            assert new in offered[old], (old, new)  # never "inactive" -> "Active", "petty" -> "murders"
        words = re.findall(r"[A-Za-z]+|[\u4e00-\u9fff]", text)
        assert edit.replaced <= max(1, int(0.5 * len(words)))
        for a, b in protected_mask(text):
            assert text[a:b] in edit.text
        assert "John Dewey" in edit.text or "John Dewey" not in text


def test_short_texts_get_at_least_one_swap(model_and_tokenizer, lexicons):
    """Under the old budget (15% of words, rounded down) a text under 7 words was never attacked."""
    model, tokenizer = model_and_tokenizer
    attack = FgsmTextAttack(
        model, tokenizer, epsilon=0.1, max_modification_rate=0.15, protected=protected_mask, lexicons=lexicons
    )
    texts = [
        "Use a sharp knife.",
        "Doctors examined patients.",
        "Buy the tickets early.",
        "Drink water and rest.",
        "医生建议多休息。",
    ]
    assert all(attack.budget(t, 3) == 1 for t in texts)
    results = attack.attack(texts)
    assert sum(hasattr(r, "swaps") for r in results) >= 3, results


def test_a_swap_the_judge_refuses_is_dropped(model_and_tokenizer, lexicons):
    from deepfeed.core.augment.meaning import MeaningJudge
    from deepfeed.core.platform.encoders import SentenceEncoder

    model, tokenizer = model_and_tokenizer
    text = "The doctors examined the patients quickly and bought bigger boxes."
    loose = FgsmTextAttack(model, tokenizer, 0.1, 1.0, protected_mask, lexicons=lexicons)
    (free,) = loose.attack([text])
    assert hasattr(free, "swaps") and free.replaced >= 2
    judge = MeaningJudge(lexicons, SentenceEncoder(), None, similarity_threshold=1.01)
    strict = FgsmTextAttack(model, tokenizer, 0.1, 1.0, protected_mask, lexicons=lexicons, judge=judge)
    (refused,) = strict.attack([text])
    assert isinstance(refused, Skip) and "kept the meaning" in refused.reason
    judge.similarity_threshold = 0.0
    (kept,) = strict.attack([text])
    assert kept.judge == "encoder" and kept.meaning_score is not None and kept.swaps == free.swaps


def test_fgsm_needs_lexicons(model_and_tokenizer):
    with pytest.raises(ValueError, match="lexicons"):
        FgsmTextAttack(*model_and_tokenizer, lexicons=None)


def test_text_without_swappable_words_is_skipped_with_a_reason(model_and_tokenizer, lexicons):
    model, tokenizer = model_and_tokenizer
    attack = FgsmTextAttack(
        model, tokenizer, epsilon=0.1, max_modification_rate=0.15, protected=protected_mask, lexicons=lexicons
    )
    reasons = [
        r.reason
        for r in attack.attack(["", "I10 <EMAIL> 42 https://x.org", "it is the one", "John Dewey and Mary Smith."])
    ]
    assert reasons[0] == "empty text"
    assert all("no swappable word" in r for r in reasons[1:])
