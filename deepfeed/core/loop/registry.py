"""The model registry's aliases and the only functions that move them (docs/model-lifecycle.md).

Three aliases on the registered model say what serves: ``champion`` (every user not in an
A/B test), ``challenger`` (the A/B share) and ``previous`` (the champion a rollback returns
to). Servers follow the aliases on their next poll, so moving one is a production change;
each move here writes one entry of one kind to the audit ledger: stage ``model_registry``,
the ledger's action (``released``, ``retired``, ``promoted``, ``rolled_back``) and the move
in ``extra["move"]``. Whether a move is allowed (gates, A/B decisions) is decided by the
callers (deepfeed.core.loop.lifecycle, the rollback sensor); this module only moves.

Plain functions over an ``MlflowClient``, so assets, jobs, the CLI and the tests share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepfeed.core.platform.audit import AuditEntry, AuditLedger

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
AUDIT_STAGE = "model_registry"
NONE = "none"  # the from_version of a move onto an alias nobody held


class RegistryError(RuntimeError):
    """An alias move that cannot be made as asked; nothing was changed."""


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: str
    to_version: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reason": self.reason,
        }


def version_by_alias(client, model: str, alias: str):
    """The model version holding ``alias``, or None (no alias, or no registered model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def record(
    ledger: AuditLedger | None,
    model: str,
    version: str,
    action: str,
    move: str,
    reason: str,
    run_id: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The audit entry of a registry event on ``version`` (``ledger`` None: not audited, as in
    unit tests of the lifecycle rules)."""
    if ledger is None:
        return
    ledger.append(
        AuditEntry(
            record_id=f"model:{model}:v{version}",
            stage=AUDIT_STAGE,
            action=action,
            reason=reason[:500],
            run_id=run_id,
            extra={"move": move, **(extra or {})},
        )
    )


def set_challenger(
    client,
    model: str,
    version: str,
    reason: str,
    run_id: str,
    ledger: AuditLedger | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AliasMove:
    """``version`` takes the ``challenger`` alias (the server starts its A/B share). A
    different version holding it is replaced, and that is audited as its retirement."""
    version = str(version)
    old = version_by_alias(client, model, CHALLENGER)
    if old is not None and str(old.version) != version:
        record(
            ledger,
            model,
            str(old.version),
            "retired",
            "challenger_retired",
            f"replaced by v{version}",
            run_id,
            {"replaced_by": version},
        )
    client.set_registered_model_alias(model, CHALLENGER, version)
    move = AliasMove(model, CHALLENGER, str(old.version) if old is not None else NONE, version, reason)
    record(
        ledger, model, version, "released", "challenger_granted", reason, run_id, {**move.to_dict(), **(extra or {})}
    )
    return move


def remove_challenger(
    client, model: str, version: str, reason: str, run_id: str, ledger: AuditLedger | None = None
) -> bool:
    """``version`` loses the ``challenger`` alias if it holds it, so an older version's verdict
    never ends a newer challenger's test. True (and audited) when the alias was removed."""
    holder = version_by_alias(client, model, CHALLENGER)
    if holder is None or str(holder.version) != str(version):
        return False
    client.delete_registered_model_alias(model, CHALLENGER)
    record(ledger, model, str(version), "retired", "challenger_revoked", reason, run_id, {"alias_removed": True})
    return True


def promote(
    client,
    model: str,
    version: str,
    reason: str,
    run_id: str,
    ledger: AuditLedger,
    extra: Mapping[str, Any] | None = None,
) -> AliasMove:
    """``version`` becomes ``champion``; the champion it replaces keeps ``previous`` (the
    rollback target). A ``challenger`` alias on ``version`` is removed: its test is over."""
    version = str(version)
    old = version_by_alias(client, model, CHAMPION)
    if old is not None and str(old.version) != version:
        client.set_registered_model_alias(model, PREVIOUS, str(old.version))
    holder = version_by_alias(client, model, CHALLENGER)
    if holder is not None and str(holder.version) == version:
        client.delete_registered_model_alias(model, CHALLENGER)
    client.set_registered_model_alias(model, CHAMPION, version)
    client.set_model_version_tag(model, version, "promoted", "true")
    move = AliasMove(model, CHAMPION, str(old.version) if old is not None else NONE, version, reason)
    record(ledger, model, version, "promoted", "champion_promoted", reason, run_id, {**move.to_dict(), **(extra or {})})
    return move


def rollback(
    client,
    model: str,
    reason: str,
    run_id: str,
    ledger: AuditLedger,
    expected_champion: str | None = None,
) -> AliasMove:
    """``champion`` goes back to the ``previous`` version. ``previous`` is consumed (a second
    rollback would need a version older than the one that failed, which the registry does not
    know), and the failed version is tagged so nobody promotes it again by accident.
    ``expected_champion``: roll back only if that version is still champion, so a rollback
    requested before a newer promotion never undoes the newer one."""
    if not reason.strip():
        raise RegistryError("a rollback needs a reason: it goes to the audit ledger and the version's tags")
    champion, previous = version_by_alias(client, model, CHAMPION), version_by_alias(client, model, PREVIOUS)
    if champion is None:
        raise RegistryError(f"registered model {model!r} has no '{CHAMPION}' alias to roll back")
    if previous is None:
        raise RegistryError(f"registered model {model!r} has no '{PREVIOUS}' version to roll back to")
    bad, good = str(champion.version), str(previous.version)
    if expected_champion is not None and bad != str(expected_champion):
        raise RegistryError(
            f"champion is v{bad}, not v{expected_champion}: it moved since the rollback was "
            f"requested, so rolling back now would undo the wrong version"
        )
    client.set_registered_model_alias(model, CHAMPION, good)
    client.delete_registered_model_alias(model, PREVIOUS)
    client.set_model_version_tag(model, bad, "rolled_back", "true")
    client.set_model_version_tag(model, bad, "rolled_back_reason", reason[:500])
    move = AliasMove(model, CHAMPION, bad, good, reason)
    record(ledger, model, bad, "rolled_back", "champion_rolled_back", reason, run_id, move.to_dict())
    return move
