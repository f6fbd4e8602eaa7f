"""Metadata helpers and retry policies shared by the asset modules."""

from typing import Any

import dagster as dg

from deepfeed.core.platform.artifacts import ArtifactHandle

# Reading sources and writing artifacts can meet a flaky network filesystem or object store:
# worth a few spaced retries. A dg.Failure from `fail` (bad input or config) is never retried.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Training and evaluation are long; one retry after a crash (OOM-killed worker, a lost GPU)
# resumes from the last training checkpoint where checkpoint_every is set.
COMPUTE_RETRY = dg.RetryPolicy(max_retries=1, delay=30)

SIGNIFICANT_DIGITS = 4


def tidy(value: Any) -> Any:
    """Floats rounded to 4 significant digits: metadata is read, not computed with."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def handle_metadata(handle: ArtifactHandle) -> dict[str, Any]:
    # "path" is the IO manager's own row, which also shows the artifact folder
    # (resources/handle_io.py); "artifact_path" keeps it next to the counts.
    return {
        "artifact_path": dg.MetadataValue.path(handle.uri),
        "version": handle.version,
        "content_hash": handle.content_hash,
        **{k: tidy(v) for k, v in handle.counts.items() if isinstance(v, (int, float, str))},
    }


def counts_table(counts: dict[str, int], key: str = "reason", value: str = "records") -> dg.MetadataValue:
    """A two-column Dagster table, largest count first (sortable in the UI)."""
    rows = sorted(counts.items(), key=lambda kv: -kv[1])
    kind = "float" if any(isinstance(v, float) for _, v in rows) else "int"
    schema = dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn(value, kind)])
    records = [dg.TableRecord({key: str(k), value: tidy(v)}) for k, v in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def fail(field: str, message: str) -> dg.Failure:
    """A run failure that names the config field the user should look at; retrying the same
    input would only fail again, so a RetryPolicy does not retry it."""
    return dg.Failure(description=f"{field}: {message}", metadata={"config_field": field}, allow_retries=False)
