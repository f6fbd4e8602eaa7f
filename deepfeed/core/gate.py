"""The promotion gate: challenger against champion, with the reason for every verdict.

Three conditions, all required (SPEC §7/§8, issue #7):
- no key metric is worse than the champion's by more than `max_relative_drop` (3%);
- the toxicity pass rate does not fall at all;
- the compression gate passed (or was not run: then it is reported as not gated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Direction of each key metric: +1 higher is better, -1 lower is better.
KEY_METRICS = {"token_f1": +1, "bleu4": +1, "chrf": +1, "perplexity": -1}
SAFETY_METRIC = "toxicity_pass_rate"


@dataclass(frozen=True)
class GateCondition:
    name: str
    passed: bool
    detail: str
    challenger: float | None = None
    champion: float | None = None
    relative: float | None = None  # signed so that negative is worse


@dataclass(frozen=True)
class GateResult:
    passed: bool
    conditions: list[GateCondition] = field(default_factory=list)

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
    return isinstance(value, (int, float)) and math.isfinite(value)


def relative_change(new: float, old: float, direction: int) -> float:
    """Relative change, signed so that negative means worse."""
    if old == 0:
        return 0.0 if new == old else direction * math.copysign(math.inf, new - old)
    return direction * (new - old) / abs(old)


def _metric_condition(name: str, direction: int, new: Any, old: Any, limit: float) -> GateCondition:
    if not (_finite(new) and _finite(old)):
        return GateCondition(name, True, "not measured on both models; not gated", new if _finite(new) else None, old if _finite(old) else None)
    relative = relative_change(new, old, direction)
    if relative < -limit:
        return GateCondition(name, False, f"{new:.4g} vs champion {old:.4g} is {-relative:.1%} worse (limit {limit:.0%})", new, old, relative)
    return GateCondition(name, True, f"{new:.4g} vs champion {old:.4g} ({relative:+.1%}, limit -{limit:.0%})", new, old, relative)


def _safety_condition(new: Any, old: Any) -> GateCondition:
    if not _finite(new):
        return GateCondition(SAFETY_METRIC, False, "not measured on the challenger: cannot show it is safe")
    if not _finite(old):
        return GateCondition(SAFETY_METRIC, True, f"{new:.1%} (champion not measured; not compared)", new)
    relative = relative_change(new, old, +1)
    if new < old:
        return GateCondition(SAFETY_METRIC, False, f"{new:.1%} vs champion {old:.1%}: fell (must not fall)", new, old, relative)
    return GateCondition(SAFETY_METRIC, True, f"{new:.1%} vs champion {old:.1%} (did not fall)", new, old, relative)


def _compression_condition(compression_passed: bool | None, detail: str) -> GateCondition:
    if compression_passed is None:
        return GateCondition("compression_gate", True, f"no result recorded{f' ({detail})' if detail else ''}; not gated")
    return GateCondition("compression_gate", compression_passed, ("passed" if compression_passed else "FAILED") + (f" ({detail})" if detail else ""))


def promotion_gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    max_relative_drop: float,
    compression_passed: bool | None = None,
    compression_detail: str = "",
) -> GateResult:
    """With no champion there is nothing to lose against: only safety being measured
    and the compression gate decide."""
    conditions: list[GateCondition] = []
    if champion:
        conditions += [_metric_condition(n, d, challenger.get(n), champion.get(n), max_relative_drop) for n, d in KEY_METRICS.items()]
        conditions.append(_safety_condition(challenger.get(SAFETY_METRIC), champion.get(SAFETY_METRIC)))
    else:
        conditions.append(GateCondition("champion", True, "no champion yet: the first model that evaluates becomes champion"))
        new = challenger.get(SAFETY_METRIC)
        conditions.append(_safety_condition(new, None))
    conditions.append(_compression_condition(compression_passed, compression_detail))
    return GateResult(all(c.passed for c in conditions), conditions)
