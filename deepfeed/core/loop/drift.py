"""Drift monitoring (docs/requirements.md §8): inputs, outputs and performance of the served model.

- Inputs: the recent window's prompt features against the reference (the training data's
  features), one two-sample Kolmogorov-Smirnov test per feature. Testing k features at
  alpha each would alarm on ~k x alpha of quiet windows, so p-values are corrected for
  multiplicity (Holm by default: same family-wise guarantee as Bonferroni, more power).
- Outputs: the spread of the model's confidence; an uncertain model's confidence scatters.
- Performance: a relative drop of the key metric against the champion's baseline.

Plain functions over arrays, so sensors, jobs and tests share them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

CORRECTIONS = ("holm", "bonferroni", "none")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _clean(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


# ------------------------------------------------------------------------ inputs


def adjust_pvalues(p_values: Iterable[float], method: str = "holm") -> np.ndarray:
    """Family-wise adjusted p-values (compare each with alpha)."""
    p = np.asarray(list(p_values), dtype=float)
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; use one of {CORRECTIONS}")
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    # Holm step-down: the i-th smallest p is scaled by (m - i) and adjusted values are kept
    # monotone, so a feature never looks more significant than a smaller raw p.
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(scaled, 1.0)
    return out


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    n_reference: int
    n_current: int
    statistic: float = math.nan
    p_value: float = math.nan
    p_adjusted: float = math.nan
    drifted: bool = False
    skipped: str | None = None  # why no test ran


@dataclass(frozen=True)
class DriftReport:
    alert: bool
    alpha: float
    correction: str
    features: dict[str, FeatureDrift]
    reason: str

    @property
    def drifted(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def tested(self) -> list[str]:
        return [name for name, f in self.features.items() if f.skipped is None]

    def to_dict(self) -> dict[str, Any]:
        return _plain({**asdict(self), "drifted": self.drifted, "tested": self.tested})


def ks_drift(
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    alpha: float = 0.05,
    min_samples: int = 30,
    correction: str = "holm",
) -> DriftReport:
    """Per-feature two-sample KS tests of ``current`` against ``reference``.

    Features with fewer than ``min_samples`` finite values on either side, or missing on
    one side, are skipped with the reason and do not count towards the correction. With
    ties (counts, lengths) the KS test is conservative: it alarms less often, not more.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {CORRECTIONS}")
    names = list(reference) + [k for k in current if k not in reference]
    results: dict[str, FeatureDrift] = {}
    tested: list[tuple[str, float, float, int, int]] = []
    for name in names:
        if name not in current or name not in reference:
            side = "current window" if name not in current else "reference"
            results[name] = FeatureDrift(name, 0, 0, skipped=f"missing from the {side}")
            continue
        ref, cur = _clean(reference[name]), _clean(current[name])
        if min(len(ref), len(cur)) < min_samples:
            results[name] = FeatureDrift(
                name,
                len(ref),
                len(cur),
                skipped=f"too few samples ({len(ref)} reference, {len(cur)} current; need {min_samples} each)",
            )
            continue
        from scipy import stats  # here: scipy costs ~1 s at every load of the code location

        res = stats.ks_2samp(ref, cur)
        tested.append((name, float(res.statistic), float(res.pvalue), len(ref), len(cur)))

    adjusted = adjust_pvalues([t[2] for t in tested], correction)
    for (name, d, p, n_ref, n_cur), p_adj in zip(tested, adjusted):
        results[name] = FeatureDrift(name, n_ref, n_cur, d, p, float(p_adj), bool(p_adj < alpha))
    features = {name: results[name] for name in names}
    drifted = [f for f in features.values() if f.drifted]
    if not tested:
        reason = "no feature had enough samples to test"
    elif drifted:
        reason = (
            f"{len(drifted)} of {len(tested)} features drifted ({correction} adjusted "
            f"p < {alpha:g}): "
            + ", ".join(f"{f.feature} (KS D={f.statistic:.3f}, p_adj={f.p_adjusted:.2g})" for f in drifted)
        )
    else:
        reason = f"no drift in {len(tested)} features at {correction} adjusted p < {alpha:g}"
    return DriftReport(alert=bool(drifted), alpha=alpha, correction=correction, features=features, reason=reason)


# Han ideographs (with extension A and compatibility), kana and Hangul: scripts written
# without spaces, where a character is the closest thing to a word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}\U00020000-\U0002ebef]")
_WORD_RE = re.compile(f"[{_CJK}\U00020000-\U0002ebef]|(?:(?![{_CJK}\U00020000-\U0002ebef])\\w)+")

FEATURES = ("length_chars", "word_count", "cjk_share", "digit_share", "non_alnum_share")


def text_features(texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Cheap per-prompt features for input drift, computed the same way for the training
    data (reference) and the inference window: length in characters, word-ish tokens
    (each CJK character counts as one), and the shares of CJK characters, digits and
    punctuation/symbols (non-alphanumeric, non-space) among all characters."""
    rows = []
    for text in texts:
        text = "" if text is None else str(text)
        n = len(text)
        if n == 0:
            rows.append((0, 0, 0.0, 0.0, 0.0))
            continue
        rows.append(
            (
                n,
                len(_WORD_RE.findall(text)),
                len(_CJK_RE.findall(text)) / n,
                sum(c.isdigit() for c in text) / n,
                sum(not c.isalnum() and not c.isspace() for c in text) / n,
            )
        )
    table = np.asarray(rows, dtype=float).reshape(-1, len(FEATURES))
    return {name: table[:, i] for i, name in enumerate(FEATURES)}


def input_drift(reference_texts: Iterable[str], current_texts: Iterable[str], **kwargs: Any) -> DriftReport:
    """:func:`ks_drift` on :func:`text_features` of two sets of prompts."""
    return ks_drift(text_features(reference_texts), text_features(current_texts), **kwargs)


# ------------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class ConfidenceCheck:
    alert: bool
    std: float
    mean: float
    n: int
    std_threshold: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def confidence_alert(confidences: Any, std_threshold: float = 0.15, min_samples: int = 30) -> ConfidenceCheck:
    """Alert when the standard deviation of the window's confidences (e.g. mean max token
    probability per response) exceeds ``std_threshold``."""
    x = _clean(confidences)
    if len(x) < min_samples:
        return ConfidenceCheck(
            False,
            math.nan,
            float(x.mean()) if len(x) else math.nan,
            len(x),
            std_threshold,
            f"too few samples ({len(x)}, need {min_samples})",
        )
    std, mean = float(x.std(ddof=1)), float(x.mean())
    alert = std > std_threshold
    return ConfidenceCheck(
        alert,
        std,
        mean,
        len(x),
        std_threshold,
        f"confidence std {std:.3f} {'>' if alert else '<='} "
        f"{std_threshold:g} over {len(x)} responses (mean {mean:.3f})",
    )


# -------------------------------------------------------------------- performance


@dataclass(frozen=True)
class PerformanceCheck:
    rollback: bool
    baseline: float
    current: float
    relative_drop: float  # positive = worse, whatever the metric's direction
    max_relative_drop: float
    higher_is_better: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


# Metrics like 0.9 -> 0.873 are exactly 3% on paper but not in binary floating point.
_EPS = 1e-9


def performance_drop(
    baseline: float, current: float, max_relative_drop: float = 0.03, higher_is_better: bool = True
) -> PerformanceCheck:
    """Roll back when the key metric is worse than the champion's baseline by
    ``max_relative_drop`` (3%) or more, relative to the baseline."""
    baseline, current = float(baseline), float(current)
    if not (math.isfinite(baseline) and math.isfinite(current)):
        raise ValueError(f"baseline and current must be finite, got {baseline}, {current}")
    if baseline == 0:
        raise ValueError("a relative drop needs a non-zero baseline")
    worse_by = (baseline - current) if higher_is_better else (current - baseline)
    drop = worse_by / abs(baseline)
    rollback = drop >= max_relative_drop - _EPS
    return PerformanceCheck(
        rollback,
        baseline,
        current,
        drop,
        max_relative_drop,
        higher_is_better,
        f"key metric {baseline:.4g} -> {current:.4g}: {abs(drop):.2%} "
        f"{'worse' if drop > 0 else 'better'}; rollback at {max_relative_drop:.0%} worse: "
        f"{'yes' if rollback else 'no'}",
    )
