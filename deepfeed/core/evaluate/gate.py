"""The promotion gate: challenger against champion (or, for the first champion, against the
base model), decided on paired 95% intervals, with the reason for every verdict.

All conditions are required (the rule and why it was chosen: docs/evaluation-gates.md):
- reference: the champion; with no champion, the base model the challenger was
  fine-tuned from. A reference that cannot be scored fails the gate.
- key metrics (token F1, BLEU-4, chrF, perplexity): a metric fails when the whole paired
  95% interval of its relative change lies below -max_relative_drop (3%), i.e. when a
  drop past the limit is beyond resampling noise. A metric not measured on both sides
  fails (closed).
- first champion only: the challenger must be significantly better than the base model
  on token F1 (the paired 95% interval of the difference lies above zero).
- the toxicity pass rate does not fall at all (point estimate: safety gets no benefit
  of the doubt) and must be measured.
- the compression gate passed. No verdict fails, unless the caller explicitly says the
  compression gate is not part of this evaluation (`compression_required=False`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from deepfeed.core.evaluate.paired import DIRECTIONS, PairedChange

KEY_METRICS = {name: DIRECTIONS[name] for name in ("token_f1", "bleu4", "chrf", "perplexity")}
PRIMARY_METRIC = "token_f1"
SAFETY_METRIC = "toxicity_pass_rate"


@dataclass(frozen=True)
class GateCondition:
    name: str
    passed: bool
    detail: str
    challenger: float | None = None
    reference: float | None = None  # the champion's value, or the base model's
    relative: float | None = None  # signed so that negative is worse
    relative_low: float | None = None  # paired 95% interval of `relative`
    relative_high: float | None = None


@dataclass(frozen=True)
class GateResult:
    passed: bool
    conditions: list[GateCondition] = field(default_factory=list)
    reference: str = "champion"  # what the challenger was gated against

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.conditions]

    @property
    def failed(self) -> list[GateCondition]:
        return [c for c in self.conditions if not c.passed]

    @property
    def deltas(self) -> dict[str, float]:
        return {c.name: c.relative for c in self.conditions if c.relative is not None}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def relative_change(new: float, old: float, direction: int) -> float:
    """Relative change, signed so that negative means worse."""
    if old == 0:
        return 0.0 if new == old else direction * math.copysign(math.inf, new - old)
    return direction * (new - old) / abs(old)


def interval_fails(change: PairedChange, limit: float) -> bool:
    """The rule: fail when the whole paired 95% interval of the relative change lies below
    -limit (a drop past the limit that resampling noise does not explain)."""
    return change.relative_high is not None and change.relative_high < -limit


def _metric_condition(name: str, change: PairedChange | None, limit: float, reference: str) -> GateCondition:
    if change is None or not (_finite(change.candidate) and _finite(change.reference)):
        return GateCondition(
            name,
            False,
            f"not measured on both the challenger and the {reference} on the same "
            "records: cannot show it did not get worse (fails closed)",
        )
    values = dict(
        challenger=change.candidate,
        reference=change.reference,
        relative=change.relative,
        relative_low=change.relative_low,
        relative_high=change.relative_high,
    )
    head = f"{change.candidate:.4g} vs {reference} {change.reference:.4g}"
    if change.relative is None:
        # Only a higher-is-better metric can score 0, and then nothing can be lower.
        return GateCondition(name, True, f"{head}: the {reference} scores 0, nothing to lose", **values)
    span = (
        f"{change.relative:+.1%} with negative = worse, paired 95% CI {change.relative_low:+.1%} … "
        f"{change.relative_high:+.1%} on {change.records} records"
    )
    if interval_fails(change, limit):
        return GateCondition(name, False, f"{head} ({span}): the whole interval lies below -{limit:.0%}", **values)
    note = "" if change.relative_low >= -limit else f"; a drop past -{limit:.0%} is not ruled out on this many records"
    rule = f"fails only when the whole interval is below -{limit:.0%}"
    return GateCondition(name, True, f"{head} ({span}; {rule}{note})", **values)


def _gain_condition(change: PairedChange | None) -> GateCondition:
    name = f"beats_base_{PRIMARY_METRIC}"
    if change is None or not (_finite(change.candidate) and _finite(change.reference)):
        return GateCondition(
            name,
            False,
            "token F1 not measured on both the challenger and the base model: "
            "the first champion must be shown to beat the base (fails closed)",
        )
    values = dict(challenger=change.candidate, reference=change.reference, relative=change.relative)
    span = (
        f"token F1 {change.reference:.3f} → {change.candidate:.3f}, {change.difference:+.3f} "
        f"(paired 95% CI {change.difference_low:+.3f} … {change.difference_high:+.3f}, {change.records} records)"
    )
    if change.significant_gain:
        return GateCondition(name, True, f"{span}: significantly better than the base model", **values)
    return GateCondition(
        name,
        False,
        f"{span}: the interval does not lie above zero, so the first champion is not shown to beat the base model",
        **values,
    )


def _safety_condition(new: Any, old: Any, reference: str) -> GateCondition:
    if not _finite(new):
        return GateCondition(SAFETY_METRIC, False, "not measured on the challenger: cannot show it is safe")
    if not _finite(old):
        return GateCondition(
            SAFETY_METRIC, False, f"{new:.1%}, but not measured on the {reference}: cannot show it did not fall", new
        )
    relative = relative_change(new, old, +1)
    if new < old:
        return GateCondition(
            SAFETY_METRIC, False, f"{new:.1%} vs {reference} {old:.1%}: fell (must not fall)", new, old, relative
        )
    return GateCondition(SAFETY_METRIC, True, f"{new:.1%} vs {reference} {old:.1%} (did not fall)", new, old, relative)


def _compression_condition(compression_passed: bool | None, detail: str, required: bool) -> GateCondition:
    suffix = f" ({detail})" if detail else ""
    if compression_passed is None:
        if required:
            return GateCondition(
                "compression_gate",
                False,
                f"no verdict recorded{suffix}: the served artifacts are not shown to keep quality (fails closed)",
            )
        return GateCondition(
            "compression_gate",
            True,
            f"not part of this evaluation{suffix}; waived by configuration (compression_gate_required=false)",
        )
    verdict = "passed" if compression_passed else "FAILED"
    return GateCondition("compression_gate", compression_passed, verdict + suffix)


def promotion_gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    max_relative_drop: float,
    compression_passed: bool | None = None,
    compression_detail: str = "",
    *,
    champion_changes: dict[str, PairedChange] | None = None,
    base: dict[str, float] | None = None,
    base_changes: dict[str, PairedChange] | None = None,
    compression_required: bool = True,
) -> GateResult:
    """`champion` / `base`: the reference's metrics (None: none, or not scored);
    `*_changes`: paired.compare(reference, challenger) per metric."""
    conditions: list[GateCondition] = []
    if champion is not None:
        reference, metrics, changes = "champion", champion, champion_changes or {}
    elif base is not None:
        reference, metrics, changes = "base", base, base_changes or {}
        conditions.append(
            GateCondition(
                "reference",
                True,
                "no champion yet: the base model plays the champion's role, "
                "and the challenger must beat it on token F1",
            )
        )
        conditions.append(_gain_condition(changes.get(PRIMARY_METRIC)))
    else:
        conditions.append(
            GateCondition(
                "reference",
                False,
                "no champion and the base model was not scored: nothing "
                "shows the challenger is better than what it started from",
            )
        )
        reference, metrics, changes = "base", {}, {}
    conditions += [_metric_condition(n, changes.get(n), max_relative_drop, reference) for n in KEY_METRICS]
    conditions.append(_safety_condition(challenger.get(SAFETY_METRIC), metrics.get(SAFETY_METRIC), reference))
    conditions.append(_compression_condition(compression_passed, compression_detail, compression_required))
    return GateResult(all(c.passed for c in conditions), conditions, reference)
