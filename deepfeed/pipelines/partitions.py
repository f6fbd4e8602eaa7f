"""The dynamic partition sets and the corpus-source helpers that assets, sensors and the CLI
share. They live here, below the asset modules, so that no sensor or command has to import
an asset module to name a partition."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import dagster as dg

from deepfeed.core.data.demo_corpus import ensure_demo_corpus
from deepfeed.core.data.ingest import as_source_path
from deepfeed.core.platform.artifacts import ArtifactHandle, ArtifactStore
from deepfeed.settings import demo_corpus_dir

# One partition per source of the corpus root (a sub-folder, or `_root` for loose files).
corpus_sources = dg.DynamicPartitionsDefinition(name="corpus_source")
# One partition per sealed feedback batch (the feedback sensor adds them).
feedback_batches = dg.DynamicPartitionsDefinition(name="feedback_batches")


def raw_artifact_name(source: str) -> str:
    """Artifact name of one source's raw_corpus versions (artifact root/raw_corpus/<source>/<version>)."""
    return f"raw_corpus/{source}"


def corpus_root(corpus_path: str) -> Path:
    """The configured corpus root, or the embedded demo corpus (written on first use)."""
    return as_source_path(corpus_path) if corpus_path else ensure_demo_corpus(demo_corpus_dir())


def latest_raw_versions(store: ArtifactStore, sources: list[str]) -> dict[str, Optional[ArtifactHandle]]:
    return {source: store.latest(raw_artifact_name(source)) for source in sorted(sources)}
