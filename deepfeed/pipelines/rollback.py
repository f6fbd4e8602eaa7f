"""rollback_job: the champion alias goes back to `previous` (launched by performance_sensor)."""

import dagster as dg
from pydantic import Field

from deepfeed.core.loop.registry import RegistryError, rollback
from deepfeed.resources import LocationsResource, MlflowResource


class RollbackConfig(dg.Config):
    reason: str = Field(description="Why the champion is rolled back (goes to the audit trail and the version's tags).")
    expected_champion: str = Field(
        default="",
        description="Roll back only if this version is still champion (empty = whatever is champion now); "
        "guards against undoing a newer promotion.",
    )


@dg.op(description="Move the `champion` alias back to the `previous` version and record it in the audit trail.")
def rollback_champion(
    context: dg.OpExecutionContext, config: RollbackConfig, mlflow: MlflowResource, locations: LocationsResource
) -> dict:
    ledger = locations.audit_ledger()
    try:
        move = rollback(
            mlflow.client(),
            mlflow.registered_model_name,
            config.reason,
            context.run.run_id,
            ledger,
            expected_champion=config.expected_champion or None,
        )
    except RegistryError as exc:
        raise dg.Failure(description=f"rollback_champion: {exc}") from exc
    context.add_output_metadata(
        {
            "rolled_back_version": move.from_version,
            "champion_version": move.to_version,
            "reason": move.reason,
            "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
        }
    )
    context.log.info("champion v%s -> v%s: %s", move.from_version, move.to_version, move.reason)
    return move.to_dict()


@dg.job(
    description="Roll the champion back to the previous version (servers follow on their next poll).",
    tags={"deepfeed/stream": "rollback"},
)
def rollback_job():
    rollback_champion()
