"""Where a registered model version stands, and the only moves between the stages
(docs/model-lifecycle.md).

    registered --(evaluation_report + promotion_gate pass)--> challenger --(A/B: promote,
    and the promotion gate still holds)--> champion
    registered / challenger --(a gate fails, or the A/B says keep)--> rejected

The registry is the source of truth: the server splits traffic to whatever holds the
``challenger`` alias, so that alias is only ever set by :func:`grant_challenger`, which
refuses a version whose evaluation did not pass. Each version carries tags recording its
stage and the evaluation that let it through, and the server re-checks them
(:func:`may_serve_as_challenger`) before it sends a single user to a challenger.

Plain functions over an ``MlflowClient``, so the Dagster assets, the A/B report and the
tests share them. The aliases themselves are moved (and audited) only by
deepfeed.core.loop.registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deepfeed.core.loop import registry
from deepfeed.core.loop.registry import CHALLENGER, CHAMPION, AliasMove, version_by_alias
from deepfeed.core.platform.audit import AuditLedger

STAGE_TAG = "deepfeed.stage"
GATE_TAG = "deepfeed.gate"  # passed | failed: the verdict of the version's latest evaluation
GATE_REPORT_TAG = "deepfeed.gate_report"  # the evaluation_report version that gave the verdict
GATE_CHAMPION_TAG = "deepfeed.gate_champion"  # the champion it was compared with ("none": the first)
REGISTERED, CHALLENGER_STAGE, CHAMPION_STAGE, REJECTED, RETIRED = (
    "registered",
    "challenger",
    "champion",
    "rejected",
    "retired",
)
PASSED, FAILED = "passed", "failed"
NO_CHAMPION = "none"


class LifecycleError(RuntimeError):
    pass


def _tag(client, model: str, version: str, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model, str(version), key, str(value))


def registration_tags() -> dict[str, str]:
    """Tags of a freshly registered version: no alias, not servable until evaluated."""
    return {STAGE_TAG: REGISTERED}


def record_gate(client, model: str, version: str, passed: bool, report: str, champion: str | None) -> None:
    """The evaluation's verdict on ``version``, kept on the version itself."""
    _tag(
        client,
        model,
        version,
        {GATE_TAG: PASSED if passed else FAILED, GATE_REPORT_TAG: report, GATE_CHAMPION_TAG: champion or NO_CHAMPION},
    )


def grant_challenger(
    client,
    model: str,
    version: str,
    report: str,
    compared_with: str | None,
    reason: str,
    run_id: str,
    ledger: AuditLedger | None = None,
) -> AliasMove:
    """``version`` passed its evaluation gate against ``compared_with`` (the current champion):
    it becomes ``challenger`` and the server starts its A/B share. A challenger already in
    a test is retired: the test restarts with the newer candidate (the A/B report counts
    only ratings of the versions that hold the aliases)."""
    champion = version_by_alias(client, model, CHAMPION)
    if champion is None:
        raise LifecycleError(
            f"{model!r} has no champion to A/B test v{version} against; "
            "the first champion is promoted by the gate directly"
        )
    if str(champion.version) == str(version):
        raise LifecycleError(f"v{version} is already the champion")
    if compared_with is not None and str(champion.version) != str(compared_with):
        raise LifecycleError(
            f"v{version} was evaluated against v{compared_with}, but the champion is now "
            f"v{champion.version}: evaluate it again before it serves"
        )
    record_gate(client, model, version, True, report, compared_with)
    old = version_by_alias(client, model, CHALLENGER)
    if old is not None and str(old.version) != str(version):
        _tag(client, model, old.version, {STAGE_TAG: RETIRED, "retired_reason": f"replaced by v{version}"})
    move = registry.set_challenger(
        client,
        model,
        version,
        reason,
        run_id,
        ledger,
        {"report": report, "compared_with": compared_with or NO_CHAMPION},
    )
    _tag(client, model, version, {STAGE_TAG: CHALLENGER_STAGE})
    return move


def revoke_challenger(
    client, model: str, version: str, reason: str, run_id: str, ledger: AuditLedger | None = None, stage: str = REJECTED
) -> bool:
    """``version`` may no longer serve as challenger (a gate failed, the A/B test kept the
    champion). Removes the alias only if ``version`` holds it, so a newer challenger's test
    is never ended by an older version's verdict. True when the alias was removed."""
    removed = registry.remove_challenger(client, model, version, reason, run_id, ledger)
    _tag(client, model, version, {STAGE_TAG: stage, f"{stage}_reason": reason[:500]})
    if not removed and stage != REGISTERED:  # a version merely entering evaluation again is no event
        registry.record(ledger, model, str(version), "retired", stage, reason, run_id, {"alias_removed": False})
    return removed


def apply_failed_gate(
    client, model: str, version: str, report: str, reason: str, run_id: str, ledger: AuditLedger | None = None
) -> bool:
    """``version`` failed an evaluation gate: the verdict is recorded on it and it loses the
    ``challenger`` alias if it held one (a re-evaluated challenger). True when removed."""
    record_gate(client, model, version, False, report, None)
    return revoke_challenger(client, model, version, f"evaluation gate failed: {reason}", run_id, ledger)


def may_serve_as_challenger(tags: Mapping[str, str] | None) -> bool:
    """The server's own check: the challenger alias alone is not enough, the version must
    also carry a passed gate and the challenger stage (set together by grant_challenger)."""
    tags = tags or {}
    return tags.get(GATE_TAG) == PASSED and tags.get(STAGE_TAG) == CHALLENGER_STAGE


@dataclass(frozen=True)
class PromotionVerdict:
    passed: bool
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reasons(self) -> str:
        return "; ".join(f"{c['name']}: {c['detail']}" for c in self.conditions if not c["passed"]) or "all passed"


def promotion_gate(
    ab_decision: str, ab_reason: str, challenger_tags: Mapping[str, str] | None, champion_version: str
) -> PromotionVerdict:
    """What the A/B decision feeds: the challenger becomes champion only if the live test
    says it is better *and* its offline evaluation gate passed against the champion it would
    replace (if the champion moved since, e.g. by a rollback, the evaluation is stale)."""
    tags = challenger_tags or {}
    compared = tags.get(GATE_CHAMPION_TAG)
    conditions = [
        {"name": "ab_test", "passed": ab_decision == "promote", "detail": f"{ab_decision}: {ab_reason}"},
        {
            "name": "evaluation_gate",
            "passed": tags.get(GATE_TAG) == PASSED,
            "detail": f"gate {tags.get(GATE_TAG, 'never evaluated')} (report {tags.get(GATE_REPORT_TAG, 'none')})",
        },
        {
            "name": "evaluated_against_this_champion",
            "passed": compared == str(champion_version),
            "detail": f"evaluated against v{compared}, champion is v{champion_version}",
        },
        {
            "name": "not_rolled_back",
            "passed": tags.get("rolled_back") != "true",
            "detail": "rolled back before" if tags.get("rolled_back") == "true" else "never rolled back",
        },
    ]
    return PromotionVerdict(all(c["passed"] for c in conditions), conditions)


def conclude_ab_test(
    client,
    model: str,
    versions: Mapping[str, str],
    ab_decision: str,
    ab_reason: str,
    run_id: str,
    ledger: AuditLedger | None = None,
) -> tuple[str, PromotionVerdict | None]:
    """Act on a decided A/B test. ``promote`` goes through :func:`promotion_gate`: passed ->
    champion (the old one kept as ``previous``), failed -> the challenger is revoked. ``keep``
    -> revoked. Anything else (inconclusive, too early) changes nothing. Returns the action."""
    challenger, champion = str(versions[CHALLENGER]), str(versions[CHAMPION])
    if ab_decision == "keep":
        revoke_challenger(client, model, challenger, f"A/B test kept the champion: {ab_reason}", run_id, ledger)
        return f"test ended, v{champion} stays champion", None
    if ab_decision != "promote":
        return "none", None
    verdict = promotion_gate(ab_decision, ab_reason, client.get_model_version(model, challenger).tags, champion)
    if not verdict.passed:
        revoke_challenger(client, model, challenger, f"promotion gate failed: {verdict.reasons}", run_id, ledger)
        return f"v{challenger} not promoted (promotion gate: {verdict.reasons}); challenger alias removed", verdict
    if ledger is None:
        raise LifecycleError("a promotion needs the audit ledger")
    registry.promote(client, model, challenger, f"A/B test and promotion gate: {ab_reason}", run_id, ledger)
    _tag(client, model, challenger, {STAGE_TAG: CHAMPION_STAGE})
    return f"promoted v{challenger} to champion", verdict


def promote_gated(
    client,
    model: str,
    version: str,
    report: str,
    reason: str,
    run_id: str,
    ledger: AuditLedger,
    extra: Mapping[str, Any] | None = None,
) -> str | None:
    """The gate alone promotes: the first champion (nothing to A/B test against; the gate
    made it beat the base model), or a deployment without live traffic (``ab_test: false``).
    The old champion keeps ``previous``; returns its version."""
    champion = version_by_alias(client, model, CHAMPION)
    record_gate(client, model, version, True, report, str(champion.version) if champion is not None else None)
    registry.promote(client, model, version, reason, run_id, ledger, extra)
    _tag(client, model, version, {STAGE_TAG: CHAMPION_STAGE})
    return str(champion.version) if champion is not None else None
