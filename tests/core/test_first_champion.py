"""The first-champion gate on tiny real models: a tiny base trained on the records answers
them; a challenger with re-initialised (random) weights is refused against it, and the
trained model is accepted against the random one. Base scores are cached and reused."""

import pytest
import torch

from deepfeed.core.evaluate.report import feeding_headline, render_markdown
from deepfeed.core.evaluate.scoring import EvaluationRequest, run_evaluation
from deepfeed.core.evaluate.settings import EvaluationConfig
from deepfeed.core.train.modeling import collate, encode_record, load_model, load_tokenizer
from tests.core.test_evaluation import RECORDS

CONFIG = EvaluationConfig(max_new_tokens=12, batch_size=8, generation_batch_size=8, bootstrap_samples=300)


def _train(model, tokenizer, steps: int = 60, lr: float = 1e-2):
    """Memorise the eight pairs: enough for greedy answers that overlap the references."""
    torch.manual_seed(0)
    batch = collate([encode_record(tokenizer, r, 64) for r in RECORDS], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), loss.item()


@pytest.fixture(scope="module")
def trained_and_random(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("first_champion")
    tokenizer = load_tokenizer(tiny_llama)
    trained, loss = _train(load_model(tiny_llama), tokenizer)
    assert loss < 0.5, loss
    random = load_model(tiny_llama)
    with torch.no_grad():  # re-initialised weights, the same architecture and tokenizer
        torch.manual_seed(1)
        for weight in random.parameters():
            weight.normal_(0, 0.3) if weight.dim() > 1 else None
    paths = {}
    for name, model in (("trained", trained), ("random", random)):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths[name] = folder / name
    return paths


def test_a_random_weights_challenger_is_refused_by_the_first_champion_gate(trained_and_random):
    outcome = run_evaluation(
        EvaluationRequest(
            trained_and_random["random"],
            RECORDS,
            CONFIG,
            log=lambda m: None,
            base_checkpoint=trained_and_random["trained"],
            compression_passed=True,
        )
    )
    base = outcome.by_name("base")
    assert base.error is None and base.metrics["token_f1"] > 0.5, base.metrics.get("token_f1")
    assert not outcome.gate.passed and outcome.gate.reference == "base"
    failed = {c.name: c.detail for c in outcome.gate.failed}
    assert "not shown to beat the base model" in failed["beats_base_token_f1"]
    assert "whole interval lies below -3%" in failed["token_f1"]
    assert feeding_headline(outcome).startswith("Feeding hurt: token F1 ")
    assert "KEEP the champion" in render_markdown(outcome, {}, {}, 0.03)


def test_a_trained_challenger_beats_a_random_base_and_base_scores_are_reused(trained_and_random, tmp_path):
    from deepfeed.core.evaluate.score_cache import (
        checkpoint_fingerprint,
        eval_set_hash,
        find_scores,
        save_scores,
        score_cache_key,
    )
    from deepfeed.core.platform.artifacts import ArtifactStore

    outcome = run_evaluation(
        EvaluationRequest(
            trained_and_random["trained"],
            RECORDS,
            CONFIG,
            log=lambda m: None,
            base_checkpoint=trained_and_random["random"],
            compression_passed=True,
        )
    )
    assert outcome.gate.passed, outcome.gate.reasons
    change = outcome.comparison("challenger", "base")["token_f1"]
    assert change.significant_gain and change.difference_low > 0
    headline = feeding_headline(outcome)
    assert headline.startswith("Feeding helped: token F1 ") and "paired 95% CI" in headline
    markdown = render_markdown(outcome, {}, {}, 0.03)
    assert headline in markdown and "| challenger vs base | Token F1 (SQuAD) |" in markdown

    # The base model's scores (per-record answers included) come back from the cache; the
    # gate decides the same without loading or generating with it again.
    store = ArtifactStore(tmp_path / "store")
    random_base = trained_and_random["random"]
    key = score_cache_key(
        f"base:{checkpoint_fingerprint(random_base)}", str(random_base), eval_set_hash(RECORDS), CONFIG
    )
    save_scores(store, key, outcome.by_name("base"), [], {"evaluated_at": "2026-12-04T10:00:00+00:00"})
    again = run_evaluation(
        EvaluationRequest(
            trained_and_random["trained"],
            RECORDS,
            CONFIG,
            log=lambda m: None,
            base_checkpoint=tmp_path / "not-loaded",
            base_scores=find_scores(store, key),
            compression_passed=True,
        )
    )
    assert not any(t.startswith("base") for t in again.timings)
    assert again.gate.passed and again.comparison("challenger", "base")["token_f1"] == change
