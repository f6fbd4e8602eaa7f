import math

import pytest

from deepfeed.core.evaluation import EvaluationConfig, bleu4, evaluate_generation, perplexity, promotion_gate, torch_logits
from deepfeed.core.modeling import load_model, load_tokenizer
from tests.conftest import PAIRS

RECORDS = [{"record_id": str(i), "kind": "pair", "prompt": p, "response": r, "text": None, "lang": "zh" if "？" in p else "en"} for i, (p, r) in enumerate(PAIRS)]


def test_perplexity_of_a_random_model_is_near_the_vocabulary_size(tiny_llama):
    model, tokenizer = load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)
    result = perplexity(torch_logits(model), tokenizer, RECORDS, EvaluationConfig(batch_size=3))
    assert 0.5 * len(tokenizer) < result["perplexity"] < 2 * len(tokenizer)
    # batch size must not change the answer (padding is masked out)
    again = perplexity(torch_logits(model), tokenizer, RECORDS, EvaluationConfig(batch_size=8))
    assert again["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)


def test_generation_is_batched_and_scored(tiny_llama):
    model, tokenizer = load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)
    metrics, samples = evaluate_generation(model, tokenizer, RECORDS, EvaluationConfig(max_new_tokens=6, batch_size=3))
    assert metrics["generated"] == len(RECORDS) == len(samples)
    assert {"bleu4", "bleu4_en", "bleu4_zh"} <= set(metrics)


def test_bleu_identity_and_chinese_tokenization():
    assert bleu4(["the cat sat on the mat today"], ["the cat sat on the mat today"], ["en"])["bleu4"] == pytest.approx(100)
    zh = bleu4(["今天天气晴朗适合出门散步"], ["今天天气晴朗适合出门散步"], ["zh"])
    assert zh["bleu4_zh"] == pytest.approx(100)
    assert bleu4(["completely different words"], ["the cat sat on the mat"], ["en"])["bleu4"] < 5


def test_promotion_gate_three_percent_rule():
    champion = {"perplexity": 10.0, "bleu4": 20.0}
    assert promotion_gate({"perplexity": 10.2, "bleu4": 19.5}, champion, 0.03).passed
    failed = promotion_gate({"perplexity": 10.4, "bleu4": 20.0}, champion, 0.03)
    assert not failed.passed and "perplexity" in failed.reasons[0] and "4.0% worse" in failed.reasons[0]
    assert not promotion_gate({"perplexity": 9.0, "bleu4": 19.0}, champion, 0.03).passed
    assert promotion_gate({"perplexity": 50.0, "bleu4": 0.0}, None, 0.03).passed
    unmeasured = promotion_gate({"perplexity": 10.0, "bleu4": math.nan}, champion, 0.03)
    assert unmeasured.passed and "not measured" in unmeasured.reasons[1]
