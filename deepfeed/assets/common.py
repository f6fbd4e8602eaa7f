"""Metadata helpers shared by the asset modules."""

from typing import Any

import dagster as dg

from deepfeed.core.artifacts import ArtifactHandle


def handle_metadata(handle: ArtifactHandle) -> dict[str, Any]:
    return {
        "path": dg.MetadataValue.path(handle.uri),
        "version": handle.version,
        "content_hash": handle.content_hash,
        **{k: v for k, v in handle.counts.items() if isinstance(v, (int, float, str))},
    }


def counts_table(counts: dict[str, int], key: str = "reason", value: str = "records") -> dg.MetadataValue:
    rows = sorted(counts.items(), key=lambda kv: -kv[1])
    lines = [f"| {key} | {value} |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]
    return dg.MetadataValue.md("\n".join(lines) if rows else f"_no {key}s_")


def fail(field: str, message: str) -> dg.Failure:
    """A run failure that names the config field the user should look at."""
    return dg.Failure(description=f"{field}: {message}", metadata={"config_field": field})
