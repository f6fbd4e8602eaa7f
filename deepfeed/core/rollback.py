"""Moving the registry's aliases after a production decision, with an audit trail.

``rollback``: the ``champion`` alias goes back to the ``previous`` version. ``previous``
is consumed (a second rollback would need a version older than the one that failed, which
the registry does not know), and the failed version is tagged so nobody promotes it again
by accident. Servers follow the alias on their next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepfeed.core.audit import AuditEntry, AuditLedger

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# Model-version tag: the key metric (mean rating) a champion is expected to hold.
BASELINE_TAG = "deepfeed.baseline_metric"


class RollbackError(RuntimeError):
    pass


@dataclass(frozen=True)
class AliasMove:
    model: str
    from_version: str
    to_version: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "from_version": self.from_version, "to_version": self.to_version,
                "reason": self.reason}


def _alias(client, model: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def rollback(client, model: str, reason: str, run_id: str, ledger: AuditLedger,
             expected_champion: str | None = None) -> AliasMove:
    champion, previous = _alias(client, model, CHAMPION), _alias(client, model, PREVIOUS)
    if champion is None:
        raise RollbackError(f"registered model {model!r} has no '{CHAMPION}' alias to roll back")
    if previous is None:
        raise RollbackError(f"registered model {model!r} has no '{PREVIOUS}' version to roll back to")
    bad = str(champion.version)
    if expected_champion is not None and bad != str(expected_champion):
        raise RollbackError(f"champion is v{bad}, not v{expected_champion}: it moved since the rollback was "
                            f"requested, so rolling back now would undo the wrong version")
    good = str(previous.version)
    client.set_registered_model_alias(model, CHAMPION, good)
    client.delete_registered_model_alias(model, PREVIOUS)
    client.set_model_version_tag(model, bad, "rolled_back", "true")
    client.set_model_version_tag(model, bad, "rolled_back_reason", reason[:500])
    move = AliasMove(model, bad, good, reason)
    ledger.append(AuditEntry(record_id=f"{model}/v{bad}", stage="rollback", action="rolled_back",
                             reason=reason, run_id=run_id, extra=move.to_dict()))
    return move


def promote(client, model: str, version: str, reason: str, run_id: str, ledger: AuditLedger) -> AliasMove:
    """``version`` becomes champion; the old champion keeps ``previous`` (as MlflowResource.promote)."""
    old = _alias(client, model, CHAMPION)
    if old is not None and str(old.version) != str(version):
        client.set_registered_model_alias(model, PREVIOUS, old.version)
    client.set_registered_model_alias(model, CHAMPION, str(version))
    client.set_model_version_tag(model, str(version), "promoted", "true")
    move = AliasMove(model, str(old.version) if old is not None else "none", str(version), reason)
    ledger.append(AuditEntry(record_id=f"{model}/v{version}", stage="ab_test", action="promoted",
                             reason=reason, run_id=run_id, extra=move.to_dict()))
    return move
