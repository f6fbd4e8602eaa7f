"""A/B assignment and analysis, checked on synthetic logs with known effects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deepfeed.core.abtest import (ARMS, analyze_ab, arm_for_hash, assign_arm, hash_user_id,
                                  welch)

T0 = pd.Timestamp("2025-03-01", tz="UTC")


def make_log(rng, n_users=400, effect=0.0, hours=80.0, user_sd=1.0, noise_sd=1.0, split=0.5,
             salt="exp"):
    """Users assigned by the shared hash; each has a latent level (the challenger's shifted
    by ``effect``) and 1-7 requests with extra per-request noise."""
    ids = [f"u{rng.integers(1 << 62)}" for _ in range(2 * n_users)]
    hashes = [hash_user_id(u, salt) for u in ids]
    arms = np.array([arm_for_hash(h, split) for h in hashes])
    level = rng.normal(0, user_sd, len(ids)) + effect * (arms == "challenger")
    per_user = rng.integers(1, 8, len(ids))
    rows = np.repeat(np.arange(len(ids)), per_user)
    return pd.DataFrame({
        "time": T0 + pd.to_timedelta(rng.uniform(0, hours, len(rows)), unit="h"),
        "user_hash": np.array(hashes)[rows],
        "arm": arms[rows],
        "metric": level[rows] + rng.normal(0, noise_sd, len(rows)),
    })


# --------------------------------------------------------------------- assignment


def test_assignment_is_sticky_keyed_and_not_pythons_hash():
    # A fixed vector: HMAC-SHA256("exp", "user-42"); Python's hash() would differ per process.
    assert hash_user_id("user-42", "exp") == (
        "0a2283f6e7e3eaaef3c49335e62991716138d0db4ee6e1c4ab0a41919e60e502")
    assert all(assign_arm("user-42", 0.5, "exp") == assign_arm("user-42", 0.5, "exp")
               for _ in range(5))
    h = hash_user_id("alice@example.com", "exp")
    assert len(h) == 64 and "alice" not in h and h != hash_user_id("alice@example.com", "other")
    assert assign_arm("alice@example.com", 0.3, "exp") == arm_for_hash(h, 0.3)


def test_split_fraction_ramp_and_salts():
    ids = [f"user-{i}" for i in range(20000)]
    for split in (0.1, 0.5, 0.9):
        share = np.mean([assign_arm(u, split, "s1") == "challenger" for u in ids])
        assert abs(share - split) < 5 * np.sqrt(split * (1 - split) / len(ids))
    # Ramping 10% -> 50% only moves users into the challenger.
    at10 = {u for u in ids if assign_arm(u, 0.1, "s1") == "challenger"}
    at50 = {u for u in ids if assign_arm(u, 0.5, "s1") == "challenger"}
    assert at10 < at50
    # Another experiment's salt gives an independent split (agreement ~50%, not ~100%).
    agree = np.mean([assign_arm(u, 0.5, "s1") == assign_arm(u, 0.5, "s2") for u in ids])
    assert 0.47 < agree < 0.53
    assert {assign_arm(u, 0.0, "s1") for u in ids[:500]} == {"champion"}
    assert {assign_arm(u, 1.0, "s1") for u in ids[:500]} == {"challenger"}
    with pytest.raises(ValueError, match="split"):
        assign_arm("x", 1.5, "s1")


# ------------------------------------------------------------------ the statistics


def test_welch_matches_scipy_and_textbook_formulas():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.2, 1.0, 57), rng.normal(0.0, 2.0, 31)
    w = welch(a, b, alpha=0.01)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue) and w["t"] == pytest.approx(ref.statistic)
    va, vb = a.var(ddof=1) / 57, b.var(ddof=1) / 31
    df = (va + vb) ** 2 / (va**2 / 56 + vb**2 / 30)
    assert w["df"] == pytest.approx(df)
    half = stats.t.ppf(0.995, df) * np.sqrt(va + vb)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((a.mean() - b.mean() - half,
                                                          a.mean() - b.mean() + half))
    pooled = np.sqrt((56 * a.var(ddof=1) + 30 * b.var(ddof=1)) / 86)
    assert w["cohen_d"] == pytest.approx((a.mean() - b.mean()) / pooled)


TRIALS, USERS = 500, 400


def _trials(seed, effect, dist="normal"):
    rng = np.random.default_rng(seed)
    draw = (lambda size: rng.normal(0, 1, size)) if dist == "normal" else (
        lambda size: rng.exponential(1.0, size))  # skewed per-user metric
    return welch(draw((TRIALS, USERS)) + effect, draw((TRIALS, USERS)), alpha=0.01)


@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_no_difference_rarely_decides(dist):
    w = _trials(7, 0.0, dist)
    false_positives = int((w["p"] < 0.01).sum())
    # Expected 1% of 500 = 5; at most 2.5%, and not zero (the test is not mute).
    assert 1 <= false_positives <= 0.025 * TRIALS
    # The 99% interval excludes 0 exactly when p < 0.01, and covers the truth ~99%.
    assert np.array_equal((w["ci_low"] > 0) | (w["ci_high"] < 0), w["p"] < 0.01)
    assert np.mean((w["ci_low"] <= 0) & (0 <= w["ci_high"])) >= 0.975


def test_real_difference_is_detected():
    w = _trials(8, 0.5)  # half a standard deviation, 400 users per arm
    assert np.mean((w["p"] < 0.01) & (w["difference"] > 0)) >= 0.95
    assert np.median(w["cohen_d"]) == pytest.approx(0.5, abs=0.05)


def test_empirical_power_matches_theory():
    d = 0.25
    w = _trials(9, d)
    ncp = d * np.sqrt(USERS / 2)
    crit = stats.t.ppf(0.995, 2 * USERS - 2)
    theory = stats.nct.sf(crit, 2 * USERS - 2, ncp) + stats.nct.cdf(-crit, 2 * USERS - 2, ncp)
    assert np.mean(w["p"] < 0.01) == pytest.approx(theory, abs=0.05)


# --------------------------------------------------------------- the analysis


def test_promote_keep_inconclusive_on_logs():
    rng = np.random.default_rng(11)
    better = analyze_ab(make_log(rng, effect=0.5))
    assert better.decision == "promote" and better.significant
    assert better.p_value < 0.01 and better.ci_low > 0 and better.difference > 0
    assert better.duration_hours >= 72
    worse = analyze_ab(make_log(rng, effect=-0.5))
    assert worse.decision == "keep" and worse.ci_high < 0
    # Lower-is-better metrics (latency, error rate) flip the verdict.
    assert analyze_ab(make_log(rng, effect=-0.5), higher_is_better=False).decision == "promote"
    assert analyze_ab(make_log(np.random.default_rng(12), effect=0.0)).decision == "inconclusive"


def test_no_decision_before_72_hours():
    rng = np.random.default_rng(13)
    early = analyze_ab(make_log(rng, effect=1.0, hours=71.0))
    assert early.decision == "insufficient_duration" and early.duration_hours < 72
    assert early.p_value < 1e-6  # the statistics are reported, the decision waits
    assert analyze_ab(make_log(rng, effect=1.0, hours=71.0), min_hours=24).decision == "promote"


def test_duration_counts_only_time_both_arms_ran():
    rng = np.random.default_rng(14)
    log = make_log(rng, effect=1.0, hours=100.0)
    # The challenger was deployed 40 h late: 60 h of real comparison.
    late = log[(log["arm"] == "champion") | (log["time"] >= T0 + pd.Timedelta(hours=40))]
    res = analyze_ab(late)
    assert res.decision == "insufficient_duration" and 59 < res.duration_hours <= 60


def test_null_logs_end_to_end_rarely_decide():
    """The whole path (hash split, per-user means, duration, decision) on 200 A/A logs."""
    decisions = [analyze_ab(make_log(np.random.default_rng(1000 + i), n_users=100)).decision
                 for i in range(200)]
    assert decisions.count("promote") + decisions.count("keep") <= 0.025 * 200
    assert decisions.count("inconclusive") + decisions.count("promote") + decisions.count(
        "keep") == 200


def test_users_not_requests_are_the_unit():
    rng = np.random.default_rng(15)
    log = make_log(rng, n_users=200, effect=0.0)
    # One heavy challenger user with 2000 high-scoring requests.
    heavy = pd.DataFrame({"time": T0 + pd.to_timedelta(rng.uniform(0, 80, 2000), unit="h"),
                          "user_hash": "heavy", "arm": "challenger", "metric": 3.0})
    res = analyze_ab(pd.concat([log, heavy], ignore_index=True))
    n_chal = log.loc[log["arm"] == "challenger", "user_hash"].nunique() + 1
    assert res.arms["challenger"].users == n_chal
    assert res.arms["challenger"].events == (log["arm"] == "challenger").sum() + 2000
    # Per request the challenger would look far better; per user it is one outlier.
    assert res.decision == "inconclusive"
    both = pd.concat([log, heavy])
    per_user = both[both["arm"] == "challenger"].groupby("user_hash")["metric"].mean()
    assert res.arms["challenger"].mean == pytest.approx(per_user.mean())


def test_mixed_users_and_misassigned_events_are_dropped():
    rng = np.random.default_rng(16)
    log = make_log(rng, n_users=100, effect=0.0, split=0.5)
    flip = log.iloc[:3].copy()
    flip["arm"] = np.where(flip["arm"] == "champion", "challenger", "champion")
    res = analyze_ab(pd.concat([log, flip], ignore_index=True))
    assert res.excluded_users == flip["user_hash"].nunique() and res.notes
    res = analyze_ab(pd.concat([log, flip], ignore_index=True), split=0.5)
    assert res.dropped_events == 3 and res.excluded_users == 0


def test_inputs_formats_and_errors():
    rng = np.random.default_rng(17)
    log = make_log(rng, n_users=50, effect=2.0)
    epoch = log.assign(time=(log["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds())
    assert analyze_ab(epoch).duration_hours == pytest.approx(analyze_ab(log).duration_hours)
    iso = log.assign(time=log["time"].astype(str), metric=log["metric"].astype(object))
    iso.loc[0, "metric"] = None
    res = analyze_ab(iso)
    assert res.dropped_events == 1 and res.decision == "promote"
    json.dumps(res.to_dict())
    assert res.to_dict()["arms"]["challenger"]["users"] == res.arms["challenger"].users
    with pytest.raises(ValueError, match="lack column"):
        analyze_ab(log.drop(columns="metric"))
    with pytest.raises(ValueError, match="unknown arm"):
        analyze_ab(log.assign(arm="treatment"))
    tiny = analyze_ab(log[log["user_hash"].isin(log["user_hash"].unique()[:1])])
    assert tiny.decision == "insufficient_data"
    assert set(ARMS) == {"champion", "challenger"}


def test_constant_arms_do_not_produce_nan_decisions():
    same = welch([1.0, 1.0, 1.0], [1.0, 1.0])
    assert same["p"] == 1.0 and same["cohen_d"] == 0.0
    apart = welch([2.0, 2.0, 2.0], [1.0, 1.0])
    assert apart["p"] == 0.0 and (apart["ci_low"], apart["ci_high"]) == (1.0, 1.0)
