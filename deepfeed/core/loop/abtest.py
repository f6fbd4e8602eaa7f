"""A/B testing of a challenger model against the champion (docs/model-lifecycle.md).

Traffic is split by a keyed SHA-256 of the user id, so a user stays in one arm across
requests, processes and restarts (Python's ``hash()`` is salted per process). The server
calls :func:`assign_arm`; the analysis can re-derive the arm from the logged hash with
:func:`arm_for_hash`, so both sides share one definition.

The analysis treats users, not requests, as the unit: a user's requests are correlated,
and a heavy user must not count as hundreds of independent samples. Each user's metric is
averaged first, then the arms are compared.

The report is looked at every day, so the decision uses a *sequential* test, the mixture
sequential probability ratio test (mSPRT, :func:`msprt`): its p-value is valid at every
look, however many looks are taken, where a fixed-horizon t-test re-run daily would reach
"p < 0.01" in about 4% of experiments without any difference (tests/core/test_abtest.py
measures both). Welch's t-test is still reported, for reference only. Nothing is decided
before ``min_hours`` of data (72 h, so a weekday-only sample never decides) nor with fewer
than ``min_users_per_arm`` users in an arm.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepfeed.core.loop.registry import CHALLENGER, CHAMPION

# The arms are named after the registry aliases whose versions serve them.
from deepfeed.core.platform.settings import setting

ARMS = (CHAMPION, CHALLENGER)
REQUIRED_COLUMNS = ("time", "user_hash", "arm", "metric")


def hash_user_id(user_id: str, salt: str) -> str:
    """Pseudonymous id for logs: HMAC-SHA256 keyed by ``salt``, so without the salt the
    raw id cannot be recovered by hashing guesses.

    An empty salt is refused: an unkeyed hash of a phone number or e-mail address is undone
    by hashing every candidate (all mobile numbers of a country take seconds). The server
    reads the salt with ``deepfeed.core.platform.secrets.load_secret(USER_SALT)``."""
    if not salt:
        raise ValueError(
            "hash_user_id needs a secret salt: an unkeyed hash of a user id can be reversed by "
            "enumeration (set $DEEPFEED_USER_SALT or $DEEPFEED_USER_SALT_FILE)"
        )
    return hmac.new(salt.encode("utf-8"), str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def arm_for_hash(user_hash: str, split: float = 0.5) -> str:
    """Arm of a hashed user. ``split`` is the challenger's share of users; the first 64 bits
    of the hash are a uniform number in [0, 1), so raising ``split`` only moves users from
    champion to challenger (a ramp-up never reshuffles users already exposed)."""
    if not 0.0 <= split <= 1.0 or math.isnan(split):
        raise ValueError(f"split must be within [0, 1], got {split}")
    return CHALLENGER if int(user_hash[:16], 16) / 2**64 < split else CHAMPION


def assign_arm(user_id: str, split: float = 0.5, salt: str = "") -> str:
    """Sticky arm of a user: ``"champion"`` or ``"challenger"``."""
    return arm_for_hash(hash_user_id(user_id, salt), split)


# ------------------------------------------------------------------------ statistics


def welch(challenger: Any, champion: Any, alpha: float = 0.01, axis: int = -1) -> dict[str, np.ndarray]:
    """Welch's t-test of challenger minus champion along ``axis`` (vectorised, so repeated
    trials can be tested in one call) with the matching (1 - alpha) confidence interval,
    which therefore excludes 0 exactly when p < alpha."""
    a = np.moveaxis(np.asarray(challenger, dtype=float), axis, -1)
    b = np.moveaxis(np.asarray(champion, dtype=float), axis, -1)
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    se = np.sqrt(va / na + vb / nb)
    # Both arms constant: no variance, so no test. A p of 0 ("certainly different") or 1 would
    # claim evidence that zero-variance samples cannot give; callers report "inconclusive".
    degenerate = se == 0
    with warnings.catch_warnings():
        if np.any(degenerate):
            warnings.simplefilter("ignore", RuntimeWarning)
        from scipy import stats  # here: scipy costs ~1 s at every load of the code location

        res = stats.ttest_ind(a, b, axis=-1, equal_var=False)
        ci = res.confidence_interval(confidence_level=1 - alpha)
    # Welch-Satterthwaite degrees of freedom (scipy's res.df, kept explicit for the record).
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se**4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        cohen_d = np.where(pooled > 0, diff / pooled, np.sign(diff) * np.inf)
    return {
        "difference": diff,
        "t": np.where(degenerate, np.nan, res.statistic),
        "df": df,
        "p": np.where(degenerate, np.nan, res.pvalue),
        "se": se,
        "ci_low": np.where(degenerate, np.nan, ci.low),
        "ci_high": np.where(degenerate, np.nan, ci.high),
        "cohen_d": np.where(pooled > 0, cohen_d, np.nan),
    }


def msprt(
    challenger: Any, champion: Any, alpha: float = 0.01, mixture_sd: float = 0.25, axis: int = -1
) -> dict[str, np.ndarray]:
    """Mixture sequential probability ratio test of challenger minus champion (vectorised
    along ``axis`` like :func:`welch`).

    Normal-mixture mSPRT of Johari, Koomen, Pekelis & Walsh, "Always Valid Inference:
    Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022 (arXiv:1512.04922),
    two-sample normal mixture: with the difference of means d, its variance V = s_a^2/n_a + s_b^2/n_b and a
    N(0, tau^2) mixture over the true difference, the likelihood ratio against "no difference"
    is

        Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))).

    Under no difference Lambda is a martingale with mean 1, so by Ville's inequality it ever
    reaches 1/alpha with probability <= alpha: deciding when ``Lambda >= 1/alpha`` at *any*
    look keeps the false-positive rate at alpha. The always-valid p-value is min(1, 1/Lambda)
    and the matching confidence sequence is d +- sqrt(V (V + tau^2) / tau^2 *
    (2 log(1/alpha) + log((V + tau^2) / V))), which excludes 0 exactly when p <= alpha.

    Written here rather than taken from a library because scipy has no sequential tests and
    the formula is three lines. V uses the sample variances (the paper's plug-in, accurate
    once each arm has a few dozen users; hence a minimum sample). ``mixture_sd`` is tau in
    units of the pooled per-user standard deviation: the test is most sensitive to effects
    of about that size (0.25 SD by default, a small-to-moderate effect).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if not mixture_sd > 0:
        raise ValueError(f"mixture_sd must be > 0, got {mixture_sd}")
    a = np.moveaxis(np.asarray(challenger, dtype=float), axis, -1)
    b = np.moveaxis(np.asarray(champion, dtype=float), axis, -1)
    na, nb = a.shape[-1], b.shape[-1]
    if min(na, nb) < 2:
        raise ValueError(f"need at least 2 samples per arm, have {na} and {nb}")
    va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    v = va / na + vb / nb
    tau2 = mixture_sd**2 * ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    degenerate = ~(v > 0)  # no variance at all: nothing to test (not "p = 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + diff**2 * tau2 / (2 * v * (v + tau2))
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * np.log(1 / alpha) + np.log((v + tau2) / v)))
    p = np.where(degenerate, np.nan, np.minimum(1.0, np.exp(-log_lr)))
    return {
        "difference": diff,
        "log_lr": np.where(degenerate, np.nan, log_lr),
        "p": p,
        "se": np.sqrt(v),
        "ci_low": np.where(degenerate, np.nan, diff - half),
        "ci_high": np.where(degenerate, np.nan, diff + half),
        "degenerate": degenerate,
    }


@dataclass(frozen=True)
class ArmStats:
    events: int
    users: int
    mean: float  # of per-user means
    std: float  # across users


@dataclass(frozen=True)
class ABResult:
    # promote | keep | inconclusive | insufficient_duration | insufficient_data
    decision: str
    reason: str
    arms: dict[str, ArmStats]
    duration_hours: float
    min_hours: float
    alpha: float
    confidence: float
    higher_is_better: bool
    min_users_per_arm: int = 0
    test: str = "mSPRT"
    mixture_sd: float = math.nan
    difference: float = math.nan  # challenger - champion, in metric units
    ci_low: float = math.nan  # the (1 - alpha) confidence sequence at this look
    ci_high: float = math.nan
    cohen_d: float = math.nan
    p_value: float = math.nan  # always-valid: the smallest over the looks so far
    looks: int = 0  # looks at the data from min_hours on, one a day and this one
    welch_p: float = math.nan  # fixed-horizon Welch p of this look alone; reported, never decides
    t_statistic: float = math.nan
    df: float = math.nan
    excluded_users: int = 0  # seen in both arms: their exposure is mixed
    dropped_events: int = 0  # metric missing, or arm contradicting the split
    notes: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        return self.decision in ("promote", "keep")

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _to_utc(times: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(times):
        return pd.to_datetime(times, unit="s", utc=True)  # epoch seconds
    return pd.to_datetime(times, utc=True)


def _per_user(df: pd.DataFrame) -> dict[str, np.ndarray]:
    per_user = df.groupby(["arm", "user_hash"])["metric"].mean()
    arms = set(per_user.index.get_level_values(0))
    return {arm: per_user[arm].to_numpy() if arm in arms else np.empty(0) for arm in ARMS}


@dataclass(frozen=True)
class ABTestSettings:
    """The sequential test of ab_test_report (its Dagster config is generated from these fields)."""

    min_hours: float = setting(72.0, "No decision before this many hours of overlapping data (72 h).")
    alpha: float = setting(
        0.01,
        "Level of the sequential test (mSPRT): the false-positive rate however many daily looks are taken (p < 0.01).",
    )
    min_users_per_arm: int = setting(30, "No decision with fewer users than this in either arm.")
    mixture_sd: float = setting(
        0.25,
        "mSPRT mixture width in per-user standard deviations: the effect size the test is most sensitive to "
        "(docs/model-lifecycle.md).",
    )
    split: float = setting(-1.0, "Challenger share used by the server; >= 0 drops events in the wrong arm.")


def analyze_ab(
    events: pd.DataFrame,
    min_hours: float = 72,
    alpha: float = 0.01,
    *,
    higher_is_better: bool = True,
    split: float | None = None,
    min_users_per_arm: int = 30,
    mixture_sd: float = 0.25,
) -> ABResult:
    """Compare the arms of an A/B test from its event log.

    ``events`` has one row per request or feedback: ``time`` (datetime, ISO string or epoch
    seconds), ``user_hash``, ``arm`` and a numeric ``metric``. With ``split`` given, events
    whose arm contradicts :func:`arm_for_hash` are dropped and counted (a server that does
    not share the assignment function shows up here).

    The decision is the mSPRT's (:func:`msprt`) at level ``alpha``. Its p-value is the
    smallest over the looks the daily report has taken: one at ``min_hours`` of overlap, one
    every 24 h after, and this one, each on the events up to then; that minimum is still
    valid, which a repeated fixed-horizon test's is not. ``min_users_per_arm`` users in each
    arm are needed before any look counts.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"A/B events lack column(s) {missing}; need {list(REQUIRED_COLUMNS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if min_users_per_arm < 2:
        raise ValueError(f"min_users_per_arm must be >= 2, got {min_users_per_arm}")
    df = events[list(REQUIRED_COLUMNS)].copy()
    unknown = sorted(set(df["arm"].dropna().astype(str)) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; expected {list(ARMS)}")
    df["metric"] = pd.to_numeric(df["metric"], errors="coerce")
    df["time"] = _to_utc(df["time"])
    n_in = len(df)
    df = df.dropna()
    notes = []
    if split is not None:
        expected = df["user_hash"].map(lambda h: arm_for_hash(str(h), split))
        wrong = int((expected != df["arm"]).sum())
        if wrong:
            notes.append(f"{wrong} events logged in the arm the split does not assign")
        df = df[expected == df["arm"]]
    dropped = n_in - len(df)

    # The test has run as long as both arms have been receiving traffic together.
    spans = df.groupby("arm")["time"].agg(["min", "max"])
    if len(spans) == 2:
        started = spans["min"].max()
        overlap = spans["max"].min() - started
        duration = max(overlap.total_seconds() / 3600, 0.0)
    else:
        started, duration = None, 0.0

    arms_of_user = df.groupby("user_hash")["arm"].nunique()
    mixed = arms_of_user.index[arms_of_user > 1]
    if len(mixed):
        notes.append(f"{len(mixed)} users appear in both arms and are excluded")
        df = df[~df["user_hash"].isin(mixed)]

    samples = _per_user(df)
    counts = df["arm"].value_counts()
    arm_stats = {
        arm: ArmStats(
            events=int(counts.get(arm, 0)),
            users=len(x),
            mean=float(x.mean()) if len(x) else math.nan,
            std=float(x.std(ddof=1)) if len(x) > 1 else math.nan,
        )
        for arm, x in samples.items()
    }
    base = dict(
        arms=arm_stats,
        duration_hours=duration,
        min_hours=float(min_hours),
        alpha=alpha,
        confidence=1 - alpha,
        higher_is_better=higher_is_better,
        min_users_per_arm=int(min_users_per_arm),
        mixture_sd=float(mixture_sd),
        excluded_users=len(mixed),
        dropped_events=dropped,
        notes=notes,
    )
    users = f"{arm_stats[CHAMPION].users} champion and {arm_stats[CHALLENGER].users} challenger users"

    if min(len(x) for x in samples.values()) < 2:
        return ABResult(decision="insufficient_data", reason=f"need at least 2 users per arm, have {users}", **base)

    now = msprt(samples[CHALLENGER], samples[CHAMPION], alpha, mixture_sd)
    w = welch(samples[CHALLENGER], samples[CHAMPION], alpha)
    m = {k: float(v) for k, v in now.items()}
    # Earlier daily looks, re-derived from the log (the report keeps no state between runs).
    p_values = []
    if started is not None and duration >= min_hours:
        last = df["time"].max()
        ends = [started + pd.Timedelta(hours=min_hours + 24 * k) for k in range(int((duration - min_hours) // 24) + 1)]
        for end in (e for e in ends if e < last):
            earlier = _per_user(df[df["time"] <= end])
            if min(len(x) for x in earlier.values()) >= min_users_per_arm:
                p_values.append(float(msprt(earlier[CHALLENGER], earlier[CHAMPION], alpha, mixture_sd)["p"]))
        p_values.append(m["p"])
    p_seq = float(np.nanmin(p_values)) if p_values and not all(math.isnan(x) for x in p_values) else m["p"]
    result = dict(
        difference=m["difference"],
        ci_low=m["ci_low"],
        ci_high=m["ci_high"],
        cohen_d=float(w["cohen_d"]),
        t_statistic=float(w["t"]),
        df=float(w["df"]),
        welch_p=float(w["p"]),
        p_value=p_seq,
        looks=len(p_values),
    )
    summary = (
        f"challenger - champion = {m['difference']:+.4g} "
        f"({1 - alpha:.0%} confidence sequence {m['ci_low']:+.4g} .. {m['ci_high']:+.4g}), "
        f"always-valid p = {p_seq:.3g} (mSPRT, {len(p_values)} look(s)), {users}, {duration:.1f} h"
    )
    if now["degenerate"]:
        decision = "inconclusive"
        why = "no variance in the per-user metric (every user of both arms scored the same): nothing to test"
    elif min(len(x) for x in samples.values()) < min_users_per_arm:
        decision = "insufficient_data"
        why = f"need {min_users_per_arm} users per arm, have {users}"
    elif duration < min_hours:
        decision = "insufficient_duration"
        why = f"only {duration:.1f} h of data, need {min_hours:g} h"
    elif p_seq <= alpha:
        better = (m["difference"] > 0) == higher_is_better
        decision = "promote" if better else "keep"
        why = f"challenger significantly {'better' if better else 'worse'} at always-valid p <= {alpha:g}"
    else:
        decision, why = "inconclusive", f"no significant difference at always-valid p <= {alpha:g}"
    return ABResult(decision=decision, reason=f"{why}: {summary}", **result, **base)
