"""A/B assignment and analysis, checked on synthetic logs with known effects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deepfeed.core.loop.abtest import ARMS, analyze_ab, arm_for_hash, assign_arm, hash_user_id, msprt, welch

T0 = pd.Timestamp("2025-03-01", tz="UTC")


def make_log(rng, n_users=400, effect=0.0, hours=80.0, user_sd=1.0, noise_sd=1.0, split=0.5, salt="exp"):
    """Users assigned by the shared hash; each has a latent level (the challenger's shifted
    by ``effect``) and 1-7 requests with extra per-request noise."""
    ids = [f"u{rng.integers(1 << 62)}" for _ in range(2 * n_users)]
    hashes = [hash_user_id(u, salt) for u in ids]
    arms = np.array([arm_for_hash(h, split) for h in hashes])
    level = rng.normal(0, user_sd, len(ids)) + effect * (arms == "challenger")
    per_user = rng.integers(1, 8, len(ids))
    rows = np.repeat(np.arange(len(ids)), per_user)
    return pd.DataFrame(
        {
            "time": T0 + pd.to_timedelta(rng.uniform(0, hours, len(rows)), unit="h"),
            "user_hash": np.array(hashes)[rows],
            "arm": arms[rows],
            "metric": level[rows] + rng.normal(0, noise_sd, len(rows)),
        }
    )


# --------------------------------------------------------------------- assignment


def test_assignment_is_sticky_keyed_and_not_pythons_hash():
    # A fixed vector: HMAC-SHA256("exp", "user-42"); Python's hash() would differ per process.
    assert hash_user_id("user-42", "exp") == ("0a2283f6e7e3eaaef3c49335e62991716138d0db4ee6e1c4ab0a41919e60e502")
    assert all(assign_arm("user-42", 0.5, "exp") == assign_arm("user-42", 0.5, "exp") for _ in range(5))
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
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half))
    pooled = np.sqrt((56 * a.var(ddof=1) + 30 * b.var(ddof=1)) / 86)
    assert w["cohen_d"] == pytest.approx((a.mean() - b.mean()) / pooled)


TRIALS, USERS = 500, 400


def _trials(seed, effect, dist="normal"):
    rng = np.random.default_rng(seed)
    draw = (
        (lambda size: rng.normal(0, 1, size)) if dist == "normal" else (lambda size: rng.exponential(1.0, size))
    )  # skewed per-user metric
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
    decisions = [analyze_ab(make_log(np.random.default_rng(1000 + i), n_users=100)).decision for i in range(200)]
    assert decisions.count("promote") + decisions.count("keep") <= 0.025 * 200
    assert decisions.count("inconclusive") + decisions.count("promote") + decisions.count("keep") == 200


def test_users_not_requests_are_the_unit():
    rng = np.random.default_rng(15)
    log = make_log(rng, n_users=200, effect=0.0)
    # One heavy challenger user with 2000 high-scoring requests.
    heavy = pd.DataFrame(
        {
            "time": T0 + pd.to_timedelta(rng.uniform(0, 80, 2000), unit="h"),
            "user_hash": "heavy",
            "arm": "challenger",
            "metric": 3.0,
        }
    )
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


def test_constant_arms_are_not_evidence():
    # Zero variance is no test: neither "p = 1" for equal arms nor "p = 0" for different ones.
    for a, b in (([1.0, 1.0, 1.0], [1.0, 1.0]), ([2.0, 2.0, 2.0], [1.0, 1.0])):
        for result in (welch(a, b), msprt(a, b)):
            assert np.isnan(result["p"]) and np.isnan(result["ci_low"]) and np.isnan(result["ci_high"])
    assert msprt([2.0, 2.0, 2.0], [1.0, 1.0])["degenerate"]


# ------------------------------------------------------- repeated looks (sequential)

DAYS = range(3, 15)  # the daily report from 72 h on, for two weeks
USERS_PER_DAY = 40  # per arm


def _daily_looks(seed, effect, dist="normal", trials=500):
    """``trials`` experiments; users arrive over 14 days; the test is re-run every day from
    day 3 on, on everything seen so far. True where an experiment was ever declared significant."""
    rng = np.random.default_rng(seed)
    draw = {
        "normal": lambda size: rng.normal(0.0, 1.0, size),
        "bernoulli": lambda size: rng.binomial(1, 0.8, size).astype(float),  # thumbs up/down
        "exponential": lambda size: rng.exponential(1.0, size),
    }[dist]
    n = USERS_PER_DAY * max(DAYS)
    challenger, champion = draw((trials, n)) + effect, draw((trials, n))
    sequential = np.zeros(trials, bool)
    repeated_welch = np.zeros(trials, bool)
    for day in DAYS:
        k = USERS_PER_DAY * day
        sequential |= msprt(challenger[:, :k], champion[:, :k], alpha=0.01)["p"] <= 0.01
        repeated_welch |= welch(challenger[:, :k], champion[:, :k], alpha=0.01)["p"] < 0.01
    return sequential, repeated_welch


@pytest.mark.parametrize("dist", ["normal", "bernoulli", "exponential"])
def test_sequential_false_positive_rate_under_daily_looks(dist):
    sequential, repeated_welch = _daily_looks(21, 0.0, dist)
    # 12 looks at alpha = 0.01: the mSPRT stays within the nominal level + 1 point ...
    assert sequential.mean() <= 0.01 + 0.01
    # ... where re-running the fixed-horizon t-test every day does not (about 4%): the
    # reason the report is sequential.
    assert repeated_welch.mean() > 0.02


def test_sequential_test_still_detects_real_differences():
    sequential, _ = _daily_looks(22, 0.3, trials=200)  # 0.3 standard deviations
    assert sequential.mean() >= 0.9
    # and the confidence sequence excludes 0 exactly when the always-valid p does
    rng = np.random.default_rng(23)
    m = msprt(rng.normal(0.1, 1, (300, 200)), rng.normal(0, 1, (300, 200)), alpha=0.01)
    excludes = (m["ci_low"] > 0) | (m["ci_high"] < 0)
    assert np.array_equal(excludes, m["p"] <= 0.01) and 0 < excludes.sum() < 300


def test_msprt_by_hand_and_errors():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 1.0, 2.0])
    v = a.var(ddof=1) / 4 + b.var(ddof=1) / 4
    tau2 = 0.25**2 * (a.var(ddof=1) + b.var(ddof=1)) / 2
    d = a.mean() - b.mean()
    lam = np.sqrt(v / (v + tau2)) * np.exp(d**2 * tau2 / (2 * v * (v + tau2)))
    assert msprt(a, b)["p"] == pytest.approx(min(1.0, 1 / lam))
    with pytest.raises(ValueError, match="alpha"):
        msprt(a, b, alpha=1.5)
    with pytest.raises(ValueError, match="2 samples"):
        msprt([1.0], b)


def test_all_equal_arms_are_inconclusive_not_p_zero():
    rng = np.random.default_rng(24)
    log = make_log(rng, n_users=100)
    for champion_value in (1.0, 0.0):  # identical all-equal arms, and constant but different
        constant = log.assign(metric=np.where(log["arm"] == "challenger", 1.0, champion_value))
        res = analyze_ab(constant)
        assert res.decision == "inconclusive" and "no variance" in res.reason
        assert res.p_value is None or np.isnan(res.p_value)
        json.dumps(res.to_dict())


def test_minimum_sample_per_arm_is_enforced():
    rng = np.random.default_rng(25)
    log = make_log(rng, n_users=20, effect=3.0)  # ~20 users an arm, a huge effect
    small = analyze_ab(log)
    assert small.decision == "insufficient_data" and "need 30 users per arm" in small.reason
    assert small.p_value < 0.01  # the evidence is reported; the decision waits for the sample
    assert analyze_ab(log, min_users_per_arm=10).decision == "promote"
    with pytest.raises(ValueError, match="min_users_per_arm"):
        analyze_ab(log, min_users_per_arm=1)


def test_report_counts_its_daily_looks_and_keeps_the_smallest_p():
    rng = np.random.default_rng(26)
    res = analyze_ab(make_log(rng, n_users=300, effect=0.0, hours=130.0))
    assert res.looks == 4  # at 72, 96 and 120 h, and now (130 h)
    assert res.test == "mSPRT" and res.decision == "inconclusive"
    later = analyze_ab(make_log(np.random.default_rng(26), n_users=300, effect=0.0, hours=130.0), min_hours=120)
    assert later.looks == 2 and res.p_value <= later.p_value  # more looks: never a larger p
