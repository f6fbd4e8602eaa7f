from __future__ import annotations

import dagster as dg
from pydantic import Field

from deepfeed.core.platform.artifacts import ArtifactStore, ArtifactStoreError
from deepfeed.settings import default_artifact_root


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where datasets, checkpoints and exported models are written (versioned, atomic)."""

    root: str = Field(
        default_factory=default_artifact_root,
        description="Artifact root: a local folder or any fsspec URL (s3://bucket/prefix). "
        "Defaults to $DEEPFEED_ARTIFACT_ROOT or $DEEPFEED_HOME/artifacts.",
    )

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        store = self.store()
        try:
            store.check_writable()
        except ArtifactStoreError as exc:
            raise dg.Failure(f"ArtifactStoreResource.root: {exc}") from exc
        # A run killed mid-save leaves its staging folder (up to a checkpoint's size) behind.
        for folder in store.clean_stale_staging():
            context.log.info("removed the staging folder of a run that died while saving: %s", folder)
