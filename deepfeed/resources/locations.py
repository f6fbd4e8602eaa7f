"""The `locations` resource: the one way assets, sensors, jobs and the CLI reach the files a
deepfeed home shares with the inference server (deepfeed.core.platform.locations)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.core.data.dp import EpsilonLedger
from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.inference_log import InferenceLog
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.home import deepfeed_home
from deepfeed.core.platform.locations import Locations


def _default_home() -> str:
    return str(deepfeed_home())


class LocationsResource(dg.ConfigurableResource):
    """The home folder `deepfeed serve` writes to and the pipeline reads and appends to: audit ledger,
    privacy ledger, feedback store, inference log, training state and the teacher-logit cache."""

    home: str = Field(
        default_factory=_default_home,
        description="Folder holding audit/, privacy/, feedback/, inference_log/ and training_state/ "
        "(default $DEEPFEED_HOME); the server must use the same folder.",
    )

    def locations(self) -> Locations:
        return Locations(Path(self.home).expanduser().resolve())

    def audit_ledger(self) -> AuditLedger:
        return AuditLedger(self.locations().audit_ledger)

    def epsilon_ledger(self) -> EpsilonLedger:
        return EpsilonLedger(self.locations().privacy_ledger)

    def feedback_store(self) -> FeedbackStore:
        return FeedbackStore(self.locations().feedback_root)

    def inference_log(self) -> InferenceLog:
        return InferenceLog(self.locations().inference_log_root)

    def teacher_cache(self, store) -> Path:
        """For an ArtifactStore: beside its versions when it is local, else in the home."""
        return self.locations().teacher_cache(Path(str(store.root.path)) if store.is_local else None)

    def training_state(self, asset: str, key: str) -> Path:
        return self.locations().training_state(asset, key)
