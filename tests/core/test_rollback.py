"""The rollback decision: a one-sided test of a drop beyond 3%, not a plain 3% drop of a mean."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from deepfeed.core.loop.drift import performance_drop
from deepfeed.core.loop.monitoring import performance_evidence
from deepfeed.core.loop.rollback import drop_test

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
WINDOW, WINDOWS, ALPHA = 200, 1000, 0.01


def _ratings(rng, mean, size, kind):
    if kind == "thumbs":  # thumbs up / down
        return rng.binomial(1, mean, size).astype(float)
    # five-star ratings mapped to 0, .25, .5, .75, 1, centred on `mean`
    return np.clip(np.round((mean + rng.normal(0, 0.25, size)) * 4) / 4, 0, 1)


def _feedback(previous, champion):
    rows = [
        {"model_version": "1", "rating": r, "received_at": (T0 + dt.timedelta(seconds=i)).isoformat()}
        for i, r in enumerate(previous)
    ]
    start = len(rows)
    rows += [
        {"model_version": "2", "rating": r, "received_at": (T0 + dt.timedelta(seconds=start + i)).isoformat()}
        for i, r in enumerate(champion)
    ]
    return rows


@pytest.mark.parametrize("kind", ["thumbs", "stars"])
def test_unchanged_ratings_rarely_roll_back(kind):
    """Windows of a champion rated exactly like its predecessor: the old rule (mean 3% lower)
    fired in 15-30% of them; the test fires in at most alpha + 1 point."""
    rng = np.random.default_rng(31)
    old_rule = new_rule = 0
    for _ in range(WINDOWS):
        previous, current = _ratings(rng, 0.8, WINDOW, kind), _ratings(rng, 0.8, WINDOW, kind)
        old_rule += performance_drop(previous.mean(), current.mean()).rollback
        evidence = performance_evidence(_feedback(previous, current), "2", "1", None, WINDOW, 30, 0.03, ALPHA)
        new_rule += evidence.rollback
    assert old_rule / WINDOWS > 0.1  # the finding: a plain 3% drop of a mean fires on noise
    assert new_rule / WINDOWS <= ALPHA + 0.01


def test_known_baseline_rarely_rolls_back_and_catches_a_real_10_percent_drop():
    rng = np.random.default_rng(32)
    # The baseline tag (the A/B level) taken as exact: one-sample test.
    quiet = [drop_test(_ratings(rng, 0.8, WINDOW, "thumbs"), 0.8, alpha=ALPHA).rollback for _ in range(WINDOWS)]
    assert np.mean(quiet) <= ALPHA + 0.01
    # A real 10% drop (0.8 -> 0.72) with enough ratings: 1000 in the window.
    caught = [drop_test(_ratings(rng, 0.72, 1000, "thumbs"), 0.8, alpha=ALPHA).rollback for _ in range(200)]
    assert np.mean(caught) >= 0.9
    # The baseline as a sample (its own noise counted): 2000 ratings on each side.
    caught = [
        drop_test(_ratings(rng, 0.72, 2000, "thumbs"), 0.8, baseline_std=0.4, baseline_n=2000, alpha=ALPHA).rollback
        for _ in range(200)
    ]
    assert np.mean(caught) >= 0.9
    # ...and through the sensor's function, with the previous version's ratings as the baseline.
    previous, current = _ratings(rng, 0.8, 2000, "thumbs"), _ratings(rng, 0.72, 2000, "thumbs")
    evidence = performance_evidence(_feedback(previous, current), "2", "1", None, 2000, 100, 0.03, ALPHA)
    assert evidence.rollback and evidence.p_value < ALPHA and "v1 over 2000 ratings" == evidence.baseline_source


def test_no_variance_uses_a_bound_that_still_catches_a_broken_model():
    broken = drop_test(np.zeros(50), 0.8)  # every answer rated 0
    assert broken.rollback and "Hoeffding" in broken.method
    steady = drop_test(np.full(50, 0.79), 0.8)  # 1.25% lower, no spread: no evidence of > 3%
    assert not steady.rollback and steady.p_value == 1.0
    json.dumps(broken.to_dict())


def test_lower_level_checks_and_errors():
    x = np.array([0.7, 0.8, 0.9, 0.6, 0.75])
    res = drop_test(x, 0.8)
    from scipy import stats

    assert res.p_value == pytest.approx(stats.ttest_1samp(x, 0.8 * 0.97, alternative="less").pvalue)
    assert res.threshold == pytest.approx(0.776) and res.relative_change == pytest.approx(x.mean() / 0.8 - 1)
    with pytest.raises(ValueError, match="at least 2"):
        drop_test([0.5], 0.8)
    with pytest.raises(ValueError, match="baseline"):
        drop_test(x, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        drop_test(x, 0.8, alpha=0)
