"""Where a deepfeed home keeps its shared state: the one place these paths are spelled.

The server writes the inference log and the feedback store, the pipeline and the server
append to the audit ledger, the corpus stage spends privacy budget, training keeps
resumable state and a teacher-logit cache. Each of them is read by more than one program
(server, assets, sensors, CLI), so every program asks a :class:`Locations` instead of
joining folder names itself; a folder moved here moves for all of them
(docs/deploying.md describes the home folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepfeed.core.platform.home import deepfeed_home


@dataclass(frozen=True)
class Locations:
    """The paths of one deepfeed home (``$DEEPFEED_HOME`` unless given)."""

    home: Path

    @classmethod
    def from_environment(cls) -> Locations:
        return cls(deepfeed_home())

    @property
    def audit_ledger(self) -> Path:
        """The hash-chained ledger every stage and the server append to."""
        return self.home / "audit" / "ledger.jsonl"

    @property
    def privacy_ledger(self) -> Path:
        """The differential-privacy budget (ε) spent per dataset across runs."""
        return self.home / "privacy" / "epsilon_ledger.json"

    @property
    def feedback_root(self) -> Path:
        """User ratings and corrections written by the server, sealed into training batches."""
        return self.home / "feedback"

    @property
    def inference_log_root(self) -> Path:
        """Scrubbed request/response events written by the server, read by the drift monitor."""
        return self.home / "inference_log"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance of the embedded default (``$DAGSTER_HOME`` overrides it)."""
        return self.home / "dagster"

    def teacher_cache(self, local_artifact_root: Path | None = None) -> Path:
        """Cached teacher logits: beside the versioned artifacts when the artifact root is a
        local folder; in the home otherwise, since the logits are read every training step
        and must be on a local disk."""
        return (Path(local_artifact_root) if local_artifact_root is not None else self.home) / "teacher_logits"

    def training_state(self, asset: str, key: str) -> Path:
        """Resumable checkpoints of one training run of ``asset``, keyed so a retry of the
        same work resumes (the key's sanitizing lives with the training code)."""
        # Imported here: platform sits below train in core's layers.
        from deepfeed.core.train.incremental import training_state_dir

        return training_state_dir(self.home, asset, key)
