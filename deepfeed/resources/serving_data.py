from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.inference_log import InferenceLog
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.home import deepfeed_home


def _default_home() -> str:
    return str(deepfeed_home())


class ServingDataResource(dg.ConfigurableResource):
    """What the inference server writes and the monitors read: the inference log, the
    feedback store and the audit ledger (the same folders `deepfeed serve` uses)."""

    home: str = Field(
        default_factory=_default_home,
        description="Folder holding inference_log/, feedback/ and audit/ (default $DEEPFEED_HOME).",
    )

    def feedback_store(self) -> FeedbackStore:
        return FeedbackStore(Path(self.home) / "feedback")

    def inference_log(self) -> InferenceLog:
        return InferenceLog(Path(self.home) / "inference_log")

    def ledger(self) -> AuditLedger:
        return AuditLedger(Path(self.home) / "audit" / "ledger.jsonl")
