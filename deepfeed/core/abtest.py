"""A/B testing of a challenger model against the champion (SPEC §7).

Traffic is split by a keyed SHA-256 of the user id, so a user stays in one arm across
requests, processes and restarts (Python's ``hash()`` is salted per process). The server
calls :func:`assign_arm`; the analysis can re-derive the arm from the logged hash with
:func:`arm_for_hash`, so both sides share one definition.

The analysis treats users, not requests, as the unit: a user's requests are correlated,
and a heavy user must not count as hundreds of independent samples. Each user's metric is
averaged first, then the arms are compared with Welch's two-sample t-test (no equal-variance
assumption). Nothing is decided before ``min_hours`` of data (the article's 72 h), which
also guards against deciding on a weekday-only sample.
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
from scipy import stats

CHAMPION, CHALLENGER = "champion", "challenger"
ARMS = (CHAMPION, CHALLENGER)
REQUIRED_COLUMNS = ("time", "user_hash", "arm", "metric")


def hash_user_id(user_id: str, salt: str) -> str:
    """Pseudonymous id for logs: HMAC-SHA256 keyed by ``salt``, so without the salt the
    raw id cannot be recovered by hashing guesses.

    An empty salt is refused: an unkeyed hash of a phone number or e-mail address is undone
    by hashing every candidate (all mobile numbers of a country take seconds). The server
    reads the salt with ``deepfeed.core.secrets.load_secret(USER_SALT)``."""
    if not salt:
        raise ValueError("hash_user_id needs a secret salt: an unkeyed hash of a user id can be reversed by "
                         "enumeration (set $DEEPFEED_USER_SALT or $DEEPFEED_USER_SALT_FILE)")
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


def welch(challenger: Any, champion: Any, alpha: float = 0.01,
          axis: int = -1) -> dict[str, np.ndarray]:
    """Welch's t-test of challenger minus champion along ``axis`` (vectorised, so repeated
    trials can be tested in one call) with the matching (1 - alpha) confidence interval,
    which therefore excludes 0 exactly when p < alpha."""
    a = np.moveaxis(np.asarray(challenger, dtype=float), axis, -1)
    b = np.moveaxis(np.asarray(champion, dtype=float), axis, -1)
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    se = np.sqrt(va / na + vb / nb)
    # Both arms constant: scipy warns and gives NaN, but the difference is known exactly.
    degenerate = se == 0
    with warnings.catch_warnings():
        if np.any(degenerate):
            warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, axis=-1, equal_var=False)
        ci = res.confidence_interval(confidence_level=1 - alpha)
    # Welch-Satterthwaite degrees of freedom (scipy's res.df, kept explicit for the record).
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se**4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        cohen_d = np.where(pooled > 0, diff / pooled, np.sign(diff) * np.inf)
    p = np.where(degenerate, np.where(diff == 0, 1.0, 0.0), res.pvalue)
    return {
        "difference": diff, "t": np.where(degenerate, np.nan, res.statistic), "df": df,
        "p": p, "se": se,
        "ci_low": np.where(degenerate, diff, ci.low),
        "ci_high": np.where(degenerate, diff, ci.high),
        "cohen_d": np.where(degenerate & (diff == 0), 0.0, cohen_d),
    }


@dataclass(frozen=True)
class ArmStats:
    events: int
    users: int
    mean: float  # of per-user means
    std: float  # across users


@dataclass(frozen=True)
class ABResult:
    decision: str  # promote | keep | inconclusive | insufficient_duration | insufficient_data
    reason: str
    arms: dict[str, ArmStats]
    duration_hours: float
    min_hours: float
    alpha: float
    confidence: float
    higher_is_better: bool
    difference: float = math.nan  # challenger - champion, in metric units
    ci_low: float = math.nan
    ci_high: float = math.nan
    cohen_d: float = math.nan
    t_statistic: float = math.nan
    df: float = math.nan
    p_value: float = math.nan
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


def analyze_ab(events: pd.DataFrame, min_hours: float = 72, alpha: float = 0.01, *,
               higher_is_better: bool = True, split: float | None = None) -> ABResult:
    """Compare the arms of an A/B test from its event log.

    ``events`` has one row per request or feedback: ``time`` (datetime, ISO string or epoch
    seconds), ``user_hash``, ``arm`` and a numeric ``metric``. With ``split`` given, events
    whose arm contradicts :func:`arm_for_hash` are dropped and counted (a server that does
    not share the assignment function shows up here).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"A/B events lack column(s) {missing}; need {list(REQUIRED_COLUMNS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
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
        overlap = spans["max"].min() - spans["min"].max()
        duration = max(overlap.total_seconds() / 3600, 0.0)
    else:
        duration = 0.0

    arms_of_user = df.groupby("user_hash")["arm"].nunique()
    mixed = arms_of_user.index[arms_of_user > 1]
    if len(mixed):
        notes.append(f"{len(mixed)} users appear in both arms and are excluded")
        df = df[~df["user_hash"].isin(mixed)]

    per_user = df.groupby(["arm", "user_hash"])["metric"].mean()
    samples = {arm: (per_user[arm].to_numpy() if arm in per_user.index.get_level_values(0)
                     else np.empty(0)) for arm in ARMS}
    counts = df["arm"].value_counts()
    arm_stats = {
        arm: ArmStats(events=int(counts.get(arm, 0)), users=len(x),
                      mean=float(x.mean()) if len(x) else math.nan,
                      std=float(x.std(ddof=1)) if len(x) > 1 else math.nan)
        for arm, x in samples.items()
    }
    base = dict(arms=arm_stats, duration_hours=duration, min_hours=float(min_hours),
                alpha=alpha, confidence=1 - alpha, higher_is_better=higher_is_better,
                excluded_users=len(mixed), dropped_events=dropped, notes=notes)

    if min(len(x) for x in samples.values()) < 2:
        return ABResult(decision="insufficient_data", reason=(
            f"need at least 2 users per arm, have {arm_stats[CHAMPION].users} champion and "
            f"{arm_stats[CHALLENGER].users} challenger"), **base)

    w = {k: float(v) for k, v in welch(samples[CHALLENGER], samples[CHAMPION], alpha).items()}
    result = dict(difference=w["difference"], ci_low=w["ci_low"], ci_high=w["ci_high"],
                  cohen_d=w["cohen_d"], t_statistic=w["t"], df=w["df"], p_value=w["p"])
    summary = (f"challenger - champion = {w['difference']:+.4g} "
               f"({1 - alpha:.0%} CI {w['ci_low']:+.4g} .. {w['ci_high']:+.4g}, "
               f"d = {w['cohen_d']:+.2f}), p = {w['p']:.3g}, "
               f"{arm_stats[CHAMPION].users} vs {arm_stats[CHALLENGER].users} users, "
               f"{duration:.1f} h")
    if duration < min_hours:
        decision = "insufficient_duration"
        why = f"only {duration:.1f} h of data, need {min_hours:g} h"
    elif w["p"] < alpha:
        better = (w["difference"] > 0) == higher_is_better
        decision = "promote" if better else "keep"
        why = f"challenger significantly {'better' if better else 'worse'} at p < {alpha:g}"
    else:
        decision, why = "inconclusive", f"no significant difference at p < {alpha:g}"
    return ABResult(decision=decision, reason=f"{why}: {summary}", **result, **base)
