"""The LM judge's scores: packed rows give the same numbers as scoring each window on its
own, and changes far apart are scored in windows of their own."""

import pytest
import torch

from deepfeed.core.augment.lm_scoring import CausalLMRanker

PARENT = (
    "The doctor said that the patient should drink more water every day, walk for half an hour "
    "after dinner, sleep at least seven hours, and come back to the clinic in two weeks for a check."
)
NEAR = PARENT.replace("drink more water", "drink more juice")
FAR = NEAR.replace("in two weeks", "in three weeks")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from deepfeed.core.train.modeling import load_model, load_tokenizer

    return load_model(tiny_llama), load_tokenizer(tiny_llama)


def plain_log_prob(model, tokens, first) -> float:
    """Sum of log p(tokens[k] | tokens[:k]) for k >= first, one unpadded sequence, no packing."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
    logp = logits.log_softmax(-1)
    return float(sum(logp[k - 1, tokens[k]] for k in range(first, len(tokens))))


def test_packed_rows_score_like_separate_windows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = CausalLMRanker(model, tokenizer, precision="fp32", context=4, after=2, batch_tokens=64)
    pairs = [(PARENT, NEAR), (PARENT, FAR), ("A short one.", "A brief one."), (NEAR, PARENT)]
    changes = lm.log_prob_changes([p for p, _ in pairs], [c for _, c in pairs])
    for (parent, child), change in zip(pairs, changes):
        rows = lm._windows_of(lm._ids([parent])[0], lm._ids([child])[0])
        expected = 0.0
        for first, (parent_window, child_window) in rows:
            assert parent_window[:first] == child_window[:first]  # the context is shared
            expected += plain_log_prob(model, child_window, first) - plain_log_prob(model, parent_window, first)
        assert change == pytest.approx(expected, abs=1e-4)
    # Whole texts through the same packed path: one branch each.
    whole = lm.log_probs([PARENT, "A short one."])
    for text, score in zip([PARENT, "A short one."], whole):
        ids = [lm.start, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert score == pytest.approx(plain_log_prob(model, ids, 1), abs=1e-4)


def test_changes_far_apart_get_a_window_each_and_near_ones_share_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = CausalLMRanker(model, tokenizer, precision="fp32", context=4, after=2)
    ids = lm._ids([PARENT, NEAR, FAR])
    assert len(lm._windows_of(ids[0], ids[1])) == 1
    far = lm._windows_of(ids[0], ids[2])
    assert len(far) == 2
    # The first swap's window is the one the single-swap child has: scored once for both.
    assert far[0] == lm._windows_of(ids[0], ids[1])[0]
    lm.log_prob_changes([PARENT], [NEAR])
    fed = lm.tokens_fed
    lm.log_prob_changes([PARENT], [FAR])
    assert lm.tokens_fed - fed == sum(len(b) for b in far[1][1]) - far[1][0]  # only the new window
    # Each window: its context once, then both branches -- less than two whole windows.
    first, (parent_window, child_window) = far[1]
    assert lm.tokens_fed - fed < len(parent_window) + len(child_window)
    assert lm._windows_of(ids[0], ids[0]) == []


def test_a_window_at_the_start_begins_with_the_start_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = CausalLMRanker(model, tokenizer, precision="fp32", context=4, after=2)
    parent, child = lm._ids(["Water is good for you.", "Juice is good for you."])
    ((first, (parent_window, child_window)),) = lm._windows_of(parent, child)
    assert first == 1 and parent_window[0] == child_window[0] == lm.start


def test_scoring_model_is_a_bf16_copy_that_scores_like_fp32(model_and_tokenizer):
    from deepfeed.core.augment.lm_scoring import scoring_model

    model, tokenizer = model_and_tokenizer
    assert scoring_model(model, "fp32") is model
    copy = scoring_model(model, "bf16", shared=True)
    assert copy is not model
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # FGSM still has its fp32 weights
    assert scoring_model(copy, "bf16") is copy

    exact = CausalLMRanker(model, tokenizer, precision="fp32", context=4, after=2)
    native = CausalLMRanker(copy, tokenizer, precision="bf16", context=4, after=2)
    assert not native.autocast
    parents, children = [PARENT, PARENT, "A short one."], [NEAR, FAR, "A brief one."]
    assert native.log_prob_changes(parents, children) == pytest.approx(
        exact.log_prob_changes(parents, children), abs=0.5
    )
    with pytest.raises(ValueError, match="float32 weights"):
        CausalLMRanker(copy, tokenizer, precision="fp32")
    with pytest.raises(ValueError, match="precision"):
        scoring_model(model, "int8")


def test_scoring_model_converts_in_place_when_not_shared(tiny_llama):
    from deepfeed.core.augment.lm_scoring import scoring_model
    from deepfeed.core.train.modeling import load_model

    model = load_model(tiny_llama)
    assert scoring_model(model, "bf16", shared=False) is model
    assert next(model.parameters()).dtype == torch.bfloat16
