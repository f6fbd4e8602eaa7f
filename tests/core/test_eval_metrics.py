"""Text metrics, toxicity scoring and the promotion gate (no models)."""

import math

import pytest
import sacrebleu

from deepfeed.core.evaluate.safety import LexiconScorer, SafetyError, ToxicityScorer, load_lexicon, toxicity_summary
from deepfeed.core.evaluate.textmetrics import (
    answer_tokens,
    bleu4_with_ci,
    chrf_with_ci,
    label_prf,
    predicted_label,
    token_prf,
    token_prf_corpus,
)


def test_token_prf_is_squad_f1():
    # SQuAD normalization drops articles and punctuation: [cat, sat] vs [cat, sat, down]
    p, r, f = token_prf("The cat sat.", "A cat sat down", "en")
    assert (p, r) == (1.0, pytest.approx(2 / 3)) and f == pytest.approx(0.8)
    assert token_prf("nothing shared", "the cat", "en") == (0.0, 0.0, 0.0)
    assert token_prf("", "", "en") == (1.0, 1.0, 1.0)
    assert token_prf("", "the cat", "en") == (0.0, 0.0, 0.0)


def test_chinese_is_segmented_into_words_by_jieba():
    assert answer_tokens("高血压是血压持续升高的疾病。", "zh") == ["高血压", "是", "血压", "持续", "升高", "的", "疾病"]
    p, r, f = token_prf("高血压是一种疾病", "高血压是血压持续升高的疾病", "zh")
    assert 0 < f < 1 and p > r
    assert token_prf("今天天气晴朗", "今天天气晴朗。", None)[2] == 1.0  # language detected from the text


def test_token_f1_corpus_mean_and_interval():
    scores = token_prf_corpus(
        ["the cat sat down", "a dog", "red"], ["cat sat", "a dog", "blue"], ["en"] * 3, samples=300
    )
    assert scores["token_f1"] == pytest.approx((0.8 + 1 + 0) / 3)
    assert scores["token_f1_ci_low"] < scores["token_f1"] < scores["token_f1_ci_high"]


def test_labels_are_read_from_answers_and_scored():
    assert predicted_label("This is about cardiology, mostly.", ["cardiology", "oncology"]) == "cardiology"
    assert predicted_label("no idea", ["cardiology"]) == "<none>"
    scores = label_prf(
        ["cardiology", "oncology it is", "cardiology", "nothing"], ["cardiology", "oncology", "oncology", "oncology"]
    )
    assert scores["labelled_records"] == 4
    # an answer naming no label is a miss for recall, not a wrong prediction for precision
    assert scores["label_precision_micro"] == pytest.approx(2 / 3) and scores["label_recall_micro"] == pytest.approx(
        0.5
    )
    # cardiology: P 1/2 R 1; oncology: P 1 R 1/3
    assert scores["label_f1_macro"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_bleu_matches_sacrebleu_and_mixes_languages_by_statistics():
    hyps = ["the cat sat on the mat", "a quick brown fox jumps", "hello there my friend"]
    refs = ["the cat sat on a mat", "the quick brown fox jumped", "hello my good friend"]
    ours = bleu4_with_ci(hyps, refs, ["en"] * 3, samples=200)
    assert ours["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert (
        ours["bleu4_ci_low"] <= ours["bleu4"] <= ours["bleu4_ci_high"] and ours["bleu4_ci_low"] < ours["bleu4_ci_high"]
    )
    zh = bleu4_with_ci(["今天天气晴朗适合出门散步"], ["今天天气晴朗适合出门散步"], ["zh"])
    assert zh["bleu4"] == pytest.approx(100) and zh["bleu4_zh"] == pytest.approx(100)
    mixed = bleu4_with_ci(hyps + ["今天天气晴朗"], refs + ["今天天气很好"], ["en"] * 3 + ["zh"], samples=0)
    assert mixed["bleu4_en"] == pytest.approx(ours["bleu4"])
    assert mixed["bleu4_zh"] == pytest.approx(
        sacrebleu.corpus_bleu(["今天天气晴朗"], [["今天天气很好"]], tokenize="zh").score
    )
    assert math.isnan(bleu4_with_ci([], [], [])["bleu4"])


def test_chrf_matches_sacrebleu():
    hyps, refs = ["the cat sat on the mat", "hello friend"], ["the cat sat on a mat", "hello my friend"]
    assert chrf_with_ci(hyps, refs, samples=100)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


def test_toxicity_english_classifier_and_chinese_lexicon():
    scorer = ToxicityScorer()
    verdicts = scorer.score(
        [
            "Have a nice day, the report is ready.",
            "you are a stupid fucking idiot",
            "今天天气晴朗，适合散步。",
            "你这个傻 逼，给我滚出去",
            "ok 杀了你",
        ],
        ["en", "en", "zh", "zh", "en"],
    )
    assert [v.toxic for v in verdicts] == [False, True, False, True, True]
    assert verdicts[1].scorer == "alt-profanity-check" and verdicts[3].scorer == "zh-lexicon"
    assert set(verdicts[3].matched) >= {"傻逼", "滚出去"}
    summary = toxicity_summary(verdicts)
    assert summary["toxicity_pass_rate"] == pytest.approx(2 / 5) and summary["toxic_answers"] == 3


def test_lexicon_file_is_well_formed_and_specific():
    terms = load_lexicon()
    assert len(terms) > 50 and set(terms.values()) <= {"insult", "profanity", "threat", "sexual", "hate"}
    clean = ["高血压是血压持续升高的疾病", "请打开设置页面，选择安全选项", "死亡率统计表", "垃圾分类", "今天天气晴朗"]
    assert not any(LexiconScorer(terms).matches(t) for t in clean)


def test_perspective_is_off_by_default_and_needs_a_key(monkeypatch):
    assert ToxicityScorer.from_settings().perspective is None
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(SafetyError, match="PERSPECTIVE_API_KEY"):
        ToxicityScorer.from_settings(use_perspective=True)
