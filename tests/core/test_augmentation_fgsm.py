"""FGSM on a tiny random causal LM: the training loss term and adversarial samples."""

import re

import pytest
import torch

from deepfeed.core.augmentation import protected_mask
from deepfeed.core.fgsm import FgsmTextAttack, fgsm_embedding_loss
from deepfeed.core.modeling import collate, encode_record, load_model, load_tokenizer
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


def test_adversarial_samples_respect_the_constraints(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    attack = FgsmTextAttack(model, tokenizer, epsilon=0.1, max_modification_rate=0.5, protected=protected_mask)
    texts = [f"{p} {r}" for p, r in PAIRS] + ["The card 4111 1111 with code I10 and <EMAIL> is fine."]
    results = attack.attack(texts)
    edits = [(t, r) for t, r in zip(texts, results) if hasattr(r, "swaps")]
    assert edits, results
    # The swaps are chosen to raise the loss: on average they must.
    assert sum(e.loss_after - e.loss_before for _, e in edits) > 0
    for text, edit in edits:
        assert edit.text != text and edit.replaced == len(edit.swaps) >= 1
        for old, new in edit.swaps:
            assert old.lower() not in attack.stop_words and new.lower() not in attack.stop_words
        eligible = attack._eligible(text, *_offsets(tokenizer, text))
        words = re.findall(r"[A-Za-z]+|[\u4e00-\u9fff]", text)
        assert edit.replaced <= min(len(eligible), int(0.5 * len(words)))
        for a, b in protected_mask(text):
            assert text[a:b] in edit.text


def _offsets(tokenizer, text):
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = [(a + (len(text[a:b]) - len(text[a:b].lstrip())), b) for a, b in enc["offset_mapping"]]
    return offsets, enc["input_ids"]


def test_text_without_swappable_words_is_skipped_with_a_reason(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    attack = FgsmTextAttack(model, tokenizer, epsilon=0.1, max_modification_rate=0.15, protected=protected_mask)
    reasons = [r.reason for r in attack.attack(["", "I10 <EMAIL> 42 https://x.org", "it is the one"])]
    assert reasons[0] == "empty text"
    assert all("no swappable word" in r for r in reasons[1:])
