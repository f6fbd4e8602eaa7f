"""The work the judge of meaning does, counted (not timed): the LM scores a window around
the change, not the whole text; windows are scored once; the LM judge stops at the
first variant that passes."""

import random

import numpy as np
import pytest

from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer, SynonymEdit
from deepfeed.core.augment.lm_scoring import CausalLMRanker
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.augment.zh_synonyms import CilinSynonyms
from deepfeed.core.platform.encoders import SentenceEncoder
from deepfeed.core.platform.home import activate_nltk_data

LONG = (
    "The doctor said that the patient should drink more water every day, walk for half an hour "
    "after dinner, sleep at least seven hours, and come back to the clinic in two weeks for a check."
)
CHANGED = LONG.replace("drink more water", "drink more juice")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from deepfeed.core.train.modeling import load_model, load_tokenizer

    return load_model(tiny_llama), load_tokenizer(tiny_llama)


def test_the_judge_scores_a_window_around_the_change_not_the_whole_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    window = CausalLMRanker(model, tokenizer, precision="fp32", context=4, after=2)
    whole = CausalLMRanker(model, tokenizer, precision="fp32", context=10**6, after=10**6)
    (change,) = window.log_prob_changes([LONG], [CHANGED])
    (exact,) = whole.log_prob_changes([LONG], [CHANGED])
    full = whole.log_probs([LONG, CHANGED])
    parent_tokens = len(tokenizer(LONG, add_special_tokens=False)["input_ids"])
    child_tokens = len(tokenizer(CHANGED, add_special_tokens=False)["input_ids"])
    assert whole.tokens_fed >= parent_tokens + child_tokens  # the wide window is the whole text
    # Two windows of at most context + changed tokens + after each, a fraction of the texts.
    changed = max(parent_tokens, child_tokens) - min(parent_tokens, child_tokens) + 4
    assert window.tokens_fed <= 2 * (4 + changed + 2) < (parent_tokens + child_tokens) / 2
    # The common head cancels exactly; the window is close to it.
    assert exact == pytest.approx(full[1] - full[0], abs=1e-3)
    assert np.isfinite(change) and change != 0.0


def test_windows_are_scored_once_and_unchanged_pairs_not_at_all(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    lm = CausalLMRanker(model, tokenizer, precision="fp32")
    assert list(lm.log_prob_changes([LONG], [LONG])) == [0.0] and lm.tokens_fed == 0
    first = lm.log_prob_changes([LONG, LONG], [CHANGED, CHANGED])
    fed = lm.tokens_fed
    # The same pair of windows for both variants: scored once.
    assert len(lm.window_cache) == 1
    again = lm.log_prob_changes([LONG], [CHANGED])
    assert lm.tokens_fed == fed and again[0] == first[0] == first[1]
    with pytest.raises(ValueError, match="parents but"):
        lm.log_prob_changes([LONG], [])


class CountingRanker(CausalLMRanker):
    """The real ranker, recording how many pairs each judge round scores."""

    rounds: list[int]

    def log_prob_changes(self, parents, children):
        self.rounds.append(len(parents))
        return super().log_prob_changes(parents, children)


@pytest.mark.parametrize("threshold, most_rounds", [(float("-inf"), 1), (float("inf"), 3)])
def test_the_lm_judge_stops_at_the_first_variant_that_passes(model_and_tokenizer, threshold, most_rounds):
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    model, tokenizer = model_and_tokenizer
    lm = CountingRanker(model, tokenizer, precision="fp32")
    lm.rounds = []
    replacer = ContextualSynonymReplacer(
        SentenceEncoder(),
        WordNetSynonyms(),
        CilinSynonyms(),
        protected_mask,
        rate=0.3,
        variants=3,
        judge_lm=lm,
        lm_threshold=threshold,
    )
    texts = ["医生建议病人每天多喝水，饭后散步半小时。", "这个方法可以帮助学生提高学习效率。"]
    edits = replacer.replace_batch(texts, random.Random(0))
    assert len(lm.rounds) <= most_rounds
    if most_rounds == 1:
        # Everything passes: one round, one variant per text, each text edited.
        assert lm.rounds == [len(texts)] and all(isinstance(e, SynonymEdit) and e.judge == "lm" for e in edits)
    else:
        # Nothing passes: every variant of every text is tried, one round at a time.
        assert sum(lm.rounds) > len(texts) and not any(isinstance(e, SynonymEdit) for e in edits)
