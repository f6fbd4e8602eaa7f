"""Drift sensors' statistics: KS input drift with multiplicity correction, confidence
spread, and the 3% performance rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepfeed.core.loop.drift import (
    FEATURES,
    adjust_pvalues,
    confidence_alert,
    input_drift,
    ks_drift,
    performance_drop,
    text_features,
)


def _window(rng, n, shift=0.0):
    """Five features of different shapes, as prompt features have (counts, shares, ...)."""
    return {
        "normal": rng.normal(shift, 1.0, n),
        "skewed": rng.exponential(1.0, n),
        "counts": rng.poisson(20, n).astype(float),  # ties make KS conservative
        "share": rng.beta(2, 8, n),
        "heavy": rng.lognormal(0.0, 1.0, n),
    }


# ---------------------------------------------------------------------- input (KS)


def test_identical_distributions_rarely_alert():
    rng = np.random.default_rng(0)
    trials = 400
    holm = none = 0
    for _ in range(trials):
        ref, cur = _window(rng, 500), _window(rng, 200)
        holm += ks_drift(ref, cur).alert
        none += ks_drift(ref, cur, correction="none").alert
    assert holm / trials <= 0.07  # family-wise 5%: quiet in ~95% of windows
    # Without the correction five features alarm on ~4x as many quiet windows.
    assert none / trials > 2 * holm / trials


def test_shifted_distribution_alerts_on_that_feature():
    rng = np.random.default_rng(1)
    report = ks_drift(_window(rng, 500), _window(rng, 200, shift=0.5))
    assert report.alert and report.drifted == ["normal"]
    f = report.features["normal"]
    assert f.p_value < f.p_adjusted < 0.05 and f.statistic > 0.15
    assert f.n_reference == 500 and f.n_current == 200
    assert "normal" in report.reason
    # A small shift with a small window is below the test's power: no alarm.
    assert not ks_drift(_window(rng, 500), _window(rng, 40, shift=0.05)).alert


def test_too_few_or_missing_samples_are_skipped_with_a_reason():
    rng = np.random.default_rng(2)
    ref = _window(rng, 500)
    cur = {"normal": rng.normal(3, 1, 29), "skewed": np.r_[rng.exponential(1, 40), [np.nan] * 5]}
    report = ks_drift(ref, cur, min_samples=30)
    normal = report.features["normal"]
    assert "too few samples" in normal.skipped and "29 current" in normal.skipped
    assert not normal.drifted and np.isnan(normal.p_value)  # no test ran, despite the shift
    assert report.features["skewed"].skipped is None and report.features["skewed"].n_current == 40
    assert "missing from the current window" in report.features["counts"].skipped
    assert report.tested == ["skewed"] and not report.alert
    empty = ks_drift({"x": [1.0] * 10}, {"x": [2.0] * 10})
    assert not empty.alert and "no feature had enough samples" in empty.reason
    assert "missing from the reference" in ks_drift({}, {"y": [1.0] * 50}).features["y"].skipped


def test_p_value_corrections_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_pvalues(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_pvalues(p, "none") == pytest.approx(p)
    assert adjust_pvalues([0.5, 0.9], "bonferroni") == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="unknown correction"):
        ks_drift({}, {}, correction="fdr")


def test_bonferroni_is_never_more_permissive_than_holm():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, (200, 6))
    for row in p:
        assert np.all(adjust_pvalues(row, "bonferroni") >= adjust_pvalues(row, "holm") - 1e-15)


def test_report_serialises():
    rng = np.random.default_rng(4)
    d = ks_drift(_window(rng, 100), {"normal": rng.normal(2, 1, 100)}).to_dict()
    d = json.loads(json.dumps(d))
    assert d["alert"] is True and d["drifted"] == ["normal"]
    assert d["features"]["skewed"]["p_value"] is None


# ---------------------------------------------------------------- text features


def test_text_features_by_hand():
    f = text_features(["Hello, world 42", "你好世界", "", "DeepSeek 模型 v3!"])
    assert list(f) == list(FEATURES)
    assert f["length_chars"].tolist() == [15, 4, 0, 15]
    assert f["word_count"].tolist() == [3, 4, 0, 4]  # Hello/world/42; 4 hanzi; DeepSeek/模/型/v3
    assert f["cjk_share"].tolist() == pytest.approx([0, 1, 0, 2 / 15])
    assert f["digit_share"].tolist() == pytest.approx([2 / 15, 0, 0, 1 / 15])
    assert f["non_alnum_share"].tolist() == pytest.approx([1 / 15, 0, 0, 1 / 15])  # "," and "!"
    assert text_features([])["length_chars"].shape == (0,)


def _prompts(rng, n, chinese=False):
    en = [
        "how do I reset my password",
        "what is the refund policy for order",
        "explain the error code",
        "summarise this contract clause",
        "translate the manual",
    ]
    zh = ["如何重置密码", "订单退款政策是什么", "解释错误代码", "总结这份合同条款", "翻译说明书"]
    words = zh if chinese else en
    return [f"{words[rng.integers(len(words))]} {rng.integers(1, 10 ** rng.integers(1, 5))}?" for _ in range(n)]


def test_input_drift_on_prompts():
    rng = np.random.default_rng(5)
    reference = _prompts(rng, 600)
    same = input_drift(reference, _prompts(rng, 150))
    assert not same.alert and same.tested == list(FEATURES)
    shifted = input_drift(reference, _prompts(rng, 150, chinese=True))
    assert shifted.alert and "cjk_share" in shifted.drifted


# ------------------------------------------------------------------ confidence


def test_confidence_std_threshold():
    rng = np.random.default_rng(6)
    wide = np.clip(rng.normal(0.6, 0.2, 500), 0, 1)
    narrow = np.clip(rng.normal(0.8, 0.1, 500), 0, 1)
    assert confidence_alert(wide).alert and confidence_alert(wide).std > 0.15
    calm = confidence_alert(narrow)
    assert not calm.alert and calm.std == pytest.approx(0.1, abs=0.01)
    assert "<= 0.15" in calm.reason
    # Exactly at the threshold does not "exceed" it.
    at = np.r_[[0.5 - 0.15] * 50, [0.5 + 0.15] * 50]
    assert not confidence_alert(at, std_threshold=np.std(at, ddof=1)).alert
    few = confidence_alert(np.r_[wide[:29], [np.nan] * 10])
    assert not few.alert and few.n == 29 and "too few samples" in few.reason
    json.dumps(few.to_dict())


# ----------------------------------------------------------------- performance


@pytest.mark.parametrize(
    "baseline,current,rollback",
    [
        (0.80, 0.776, True),  # exactly 3% worse
        (0.90, 0.873, True),  # exactly 3%, inexact in binary floating point
        (1.00, 0.97, True),
        (0.90, 0.8731, False),  # 2.99%
        (0.90, 0.80, True),
        (0.90, 0.95, False),  # better
        (0.90, 0.90, False),
    ],
)
def test_three_percent_rule(baseline, current, rollback):
    check = performance_drop(baseline, current)
    assert check.rollback is rollback
    assert check.relative_drop == pytest.approx((baseline - current) / baseline)


def test_performance_lower_is_better_and_errors():
    assert performance_drop(100.0, 103.0, higher_is_better=False).rollback  # latency +3%
    assert not performance_drop(100.0, 102.9, higher_is_better=False).rollback
    assert not performance_drop(100.0, 80.0, higher_is_better=False).rollback
    assert performance_drop(0.8, 0.78, max_relative_drop=0.02).rollback
    assert "3.00% worse" in performance_drop(0.8, 0.776).reason
    with pytest.raises(ValueError, match="non-zero baseline"):
        performance_drop(0.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        performance_drop(float("nan"), 0.1)
    json.dumps(performance_drop(0.8, 0.7).to_dict())
