"""The statistical test that decides a rollback (:func:`drop_test`, docs/model-lifecycle.md).

The alias move itself is :func:`deepfeed.core.loop.registry.rollback`: ``champion`` goes back
to ``previous`` and the failed version is tagged. The tags below are what the test compares
a champion's live ratings with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Model-version tags: the key metric (mean rating) a champion is expected to hold, and the
# spread and count of the ratings it was measured on (so its own uncertainty is tested too).
BASELINE_TAG = "deepfeed.baseline_metric"
BASELINE_STD_TAG = "deepfeed.baseline_std"
BASELINE_N_TAG = "deepfeed.baseline_n"


@dataclass(frozen=True)
class DropTest:
    rollback: bool
    baseline: float
    current: float
    threshold: float  # baseline * (1 - max_relative_drop): the level a rollback must prove we are below
    relative_change: float  # (current - baseline) / baseline
    p_value: float
    alpha: float
    samples: int
    method: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}


def drop_test(
    current: Sequence[float],
    baseline: float,
    *,
    baseline_std: float | None = None,
    baseline_n: int | None = None,
    max_relative_drop: float = 0.03,
    alpha: float = 0.01,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> DropTest:
    """One-sided test that the true mean of ``current`` (the champion's recent ratings) is more
    than ``max_relative_drop`` below ``baseline``: H0 mean >= baseline * (1 - drop), rejected
    (rollback) when p < ``alpha``.

    A plain "the window's mean is 3% lower" fires on noise: with 200 thumbs-up/down ratings
    the mean moves by +-3 points from window to window without any change. Here the window
    must be *significantly* below the 3% line, so a rollback on unchanged ratings happens in
    at most ``alpha`` of windows, and a real drop is caught once the window holds enough
    ratings to show it.

    - ``baseline_std``/``baseline_n`` given (the baseline is itself a sample mean: the A/B
      arm the champion was promoted on, or the previous version's window): Welch's test of
      current against the scaled baseline sample (scipy ``ttest_ind_from_stats``).
    - Otherwise the baseline is taken as exact: one-sample t-test (scipy ``ttest_1samp``).
    - No variance at all (every rating equal): a t-test is undefined, so Hoeffding's
      inequality for values within ``bounds`` gives the p-value, exp(-2 n gap^2 / range^2);
      valid for any distribution on that range, so a model whose every answer is rated 0
      is still rolled back.
    """
    x = np.asarray(current, dtype=float)
    if x.size < 2:
        raise ValueError(f"need at least 2 ratings to test a drop, have {x.size}")
    if not (math.isfinite(baseline) and baseline != 0):
        raise ValueError(f"baseline must be finite and non-zero, got {baseline}")
    if not 0 < max_relative_drop < 1 or not 0 < alpha < 1:
        raise ValueError(f"max_relative_drop and alpha must be within (0, 1), got {max_relative_drop}, {alpha}")
    scale = 1.0 - max_relative_drop
    threshold = baseline * scale
    mean, sd, n = float(x.mean()), float(x.std(ddof=1)), int(x.size)
    from scipy import stats  # here: scipy costs ~1 s at every load of the code location

    sample_baseline = baseline_std is not None and baseline_n is not None and baseline_n >= 2
    if sample_baseline and (sd > 0 or baseline_std > 0):
        res = stats.ttest_ind_from_stats(
            mean, sd, n, threshold, baseline_std * scale, int(baseline_n), equal_var=False, alternative="less"
        )
        p, method = float(res.pvalue), f"Welch one-sided vs the baseline sample (n={int(baseline_n)})"
    elif sd > 0:
        p, method = float(stats.ttest_1samp(x, threshold, alternative="less").pvalue), "one-sample one-sided t-test"
    else:
        gap, span = threshold - mean, bounds[1] - bounds[0]
        p = math.exp(-2 * n * gap**2 / span**2) if gap > 0 else 1.0
        method = f"Hoeffding bound (all {n} ratings equal)"
    rollback = p < alpha
    change = (mean - baseline) / abs(baseline)
    reason = (
        f"mean rating {baseline:.4g} -> {mean:.4g} ({change:+.2%}) over {n} ratings; "
        f"below the {max_relative_drop:.0%} line {threshold:.4g}? p = {p:.3g} ({method}); "
        f"rollback at p < {alpha:g}: {'yes' if rollback else 'no'}"
    )
    return DropTest(rollback, float(baseline), mean, threshold, change, p, alpha, n, method, reason)
