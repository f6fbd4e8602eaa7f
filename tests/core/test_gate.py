"""The promotion gate's math on paired intervals (no model): the interval rule against the
3% limit, the first champion against the base model, and everything that fails closed."""

import numpy as np
import pytest

from deepfeed.core.evaluate.gate import KEY_METRICS, promotion_gate
from deepfeed.core.evaluate.paired import compare, paired_corpus_change, paired_mean_change, paired_relative_change

# 24 answers' token F1, mean 0.575 (the demo answers about this many).
REFERENCE_F1 = np.array([1.0, 0.5, 0.0, 0.8] * 6)
METRICS = {"token_f1": 0.575, "bleu4": 20.0, "chrf": 40.0, "perplexity": 10.0, "toxicity_pass_rate": 1.0}


def _corpus(metric, reference_value, candidate_value, n=24):
    """A corpus-level change whose every record moves by the same ratio: a tight interval."""
    ref = np.stack([np.full(n, reference_value), np.ones(n)], 1)
    cand = np.stack([np.full(n, candidate_value), np.ones(n)], 1)
    return paired_corpus_change(metric, ref, cand, lambda s: float(s[0] / s[1]), 500, 0)


def _changes(f1_candidate=REFERENCE_F1, **overrides):
    changes = {
        "token_f1": paired_mean_change("token_f1", REFERENCE_F1, f1_candidate, 1000, 0),
        "bleu4": _corpus("bleu4", 20.0, 20.0),
        "chrf": _corpus("chrf", 40.0, 40.0),
        "perplexity": _corpus("perplexity", 10.0, 10.0),
    }
    return {**changes, **overrides}


def _gate(changes, challenger=None, **kwargs):
    challenger = {**METRICS, **(challenger or {})}
    kwargs = {"compression_passed": True, **kwargs}
    return promotion_gate(challenger, METRICS, 0.03, champion_changes=changes, **kwargs)


def test_a_challenger_whose_whole_interval_lies_within_the_limit_passes():
    better = REFERENCE_F1.copy()
    better[2] = 0.1  # one answer a little better: the whole interval is above -3%
    change = paired_mean_change("token_f1", REFERENCE_F1, better, 1000, 0)
    assert change.relative_low >= 0 and change.relative_high > 0
    gate = _gate(_changes(better))
    assert gate.passed, gate.reasons
    assert "paired 95% CI" in next(c.detail for c in gate.conditions if c.name == "token_f1")


def test_noise_straddling_the_limit_passes_and_says_so():
    one_flip = REFERENCE_F1.copy()
    one_flip[1] = 0.0  # one answer of 24 turns wrong: -3.6%, a point-estimate gate would fail
    gate = _gate(_changes(one_flip))
    condition = next(c for c in gate.conditions if c.name == "token_f1")
    assert condition.relative < -0.03 < condition.relative_high and condition.passed
    assert "not ruled out" in condition.detail and gate.passed


@pytest.mark.parametrize("metric", sorted(KEY_METRICS))
def test_a_challenger_more_than_three_percent_worse_with_the_interval_below_fails(metric):
    if metric == "token_f1":
        changes = _changes(REFERENCE_F1 * 0.9)  # every answer 10% worse
    else:
        worse = {"bleu4": (20.0, 19.0), "chrf": (40.0, 38.0), "perplexity": (10.0, 10.5)}[metric]
        changes = _changes(**{metric: _corpus(metric, *worse)})
    gate = _gate(changes)
    assert not gate.passed and [c.name for c in gate.failed] == [metric]
    failed = gate.failed[0]
    assert failed.relative_high < -0.03 and "whole interval lies below -3%" in failed.detail


def test_a_missing_metric_fails_closed():
    changes = _changes()
    del changes["bleu4"]
    gate = _gate(changes)
    assert not gate.passed and [c.name for c in gate.failed] == ["bleu4"]
    assert "not measured on both" in gate.failed[0].detail and "fails closed" in gate.failed[0].detail
    # a champion whose paired scores are missing altogether gates nothing through
    assert not _gate(None).passed
    assert not _gate(_changes(), challenger={"toxicity_pass_rate": float("nan")}).passed


def test_a_missing_compression_verdict_fails_closed_unless_waived():
    gate = _gate(_changes(), compression_passed=None, compression_detail="no check of compressed_model ran")
    assert not gate.passed and [c.name for c in gate.failed] == ["compression_gate"]
    assert "no verdict recorded" in gate.failed[0].detail
    assert not _gate(_changes(), compression_passed=False).passed
    waived = _gate(_changes(), compression_passed=None, compression_required=False)
    assert waived.passed and "waived" in next(c.detail for c in waived.conditions if c.name == "compression_gate")


def test_toxicity_must_not_fall_and_must_be_measured_on_both():
    fell = _gate(_changes(), challenger={"toxicity_pass_rate": 0.979})
    assert not fell.passed and fell.failed[0].name == "toxicity_pass_rate" and "fell" in fell.failed[0].detail
    champion = {**METRICS, "toxicity_pass_rate": None}
    unmeasured = promotion_gate(METRICS, champion, 0.03, True, champion_changes=_changes())
    assert not unmeasured.passed and "not measured on the champion" in unmeasured.failed[0].detail


def test_the_first_champion_must_beat_the_base_model_on_token_f1():
    base_f1 = np.array([0.0, 0.2, 0.0, 0.1] * 6)
    trained_f1 = np.array([0.6, 0.5, 0.3, 0.8] * 6)
    base = {**METRICS, "token_f1": float(base_f1.mean())}

    def first(candidate_f1):
        changes = _changes(**{"token_f1": paired_mean_change("token_f1", base_f1, candidate_f1, 1000, 0)})
        challenger = {**METRICS, "token_f1": float(candidate_f1.mean())}
        return promotion_gate(challenger, None, 0.03, True, base=base, base_changes=changes)

    good = first(trained_f1)
    assert good.passed and good.reference == "base", good.reasons
    gain = next(c.detail for c in good.conditions if c.name == "beats_base_token_f1")
    assert "significantly better than the base model" in gain
    # as good as the base (no drop past the limit) is not enough for the first champion
    same = first(base_f1)
    assert not same.passed and [c.name for c in same.failed] == ["beats_base_token_f1"]
    assert "not shown to beat the base model" in same.failed[0].detail
    # no champion and no base scores: nothing to beat, fails closed
    none = promotion_gate(METRICS, None, 0.03, True)
    assert not none.passed and "base model was not scored" in none.failed[0].detail


def test_corpus_and_mean_changes_share_the_draws_of_paired_relative_change():
    rng = np.random.default_rng(3)
    reference, candidate = rng.random(30), rng.random(30)
    mean = paired_mean_change("token_f1", reference, candidate, 400, 5)
    ones = np.ones(30)
    corpus = paired_corpus_change(
        "token_f1", np.stack([reference, ones], 1), np.stack([candidate, ones], 1), lambda s: float(s[0] / s[1]), 400, 5
    )
    expected = paired_relative_change(reference, candidate, 400, 5)
    assert (mean.relative, mean.relative_low, mean.relative_high) == pytest.approx(expected)
    assert (corpus.relative_low, corpus.relative_high) == pytest.approx((mean.relative_low, mean.relative_high))
    assert mean.difference == pytest.approx(candidate.mean() - reference.mean())
    assert mean.difference_low < mean.difference < mean.difference_high


def test_compare_pairs_answers_and_per_record_nll():
    answered = [
        {"prompt": f"q{i}", "response": r, "lang": "en"}
        for i, r in enumerate(
            [
                "Paris is the capital of France",
                "sixteen digits and a check digit",
                "drink about two litres a day",
                "open the settings page",
                "high blood pressure raises the risk of stroke",
                "try a history of science",
            ]
        )
    ]
    right = [r["response"] for r in answered]
    wrong = ["no idea"] * len(answered)
    tokens = [6, 5, 0, 6, 7, 5, 4]  # per evaluation record; the third has no answer token
    base = {"answers": wrong, "toxic": [False] * 6, "nll": [12.0, 9.0, None, 11.0, 14.0, 10.0, 8.0], "tokens": tokens}
    tuned = {"answers": right, "toxic": [False] * 6, "nll": [6.0, 4.5, None, 5.5, 7.0, 5.0, 4.0], "tokens": tokens}
    changes = compare(base, tuned, answered, 500, 0)
    assert set(changes) == {"token_f1", "bleu4", "chrf", "perplexity", "toxicity_pass_rate"}
    f1 = changes["token_f1"]
    assert f1.reference == 0 and f1.candidate == pytest.approx(1.0) and f1.significant_gain and f1.relative is None
    assert changes["bleu4"].difference_low > 0 and changes["chrf"].difference_low > 0
    ppl = changes["perplexity"]
    assert ppl.records == 6 and ppl.candidate < ppl.reference and ppl.significant_gain and ppl.relative > 0
    assert changes["toxicity_pass_rate"].difference == 0
    # answers of another length (another evaluation set) are not paired
    assert set(compare(base, {**tuned, "answers": right[:3]}, answered, 500, 0)) == {"perplexity"}
