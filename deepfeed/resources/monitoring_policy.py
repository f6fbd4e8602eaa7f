"""The thresholds the sensors decide by, as a resource: visible with their descriptions
in the Dagster UI (Deployment → Resources) and changed by configuration, not code."""

import os
from typing import Literal

import dagster as dg
from pydantic import Field

from deepfeed.core.loop.monitoring import DriftSettings

OnAlert = Literal["report", "incremental", "full"]


class MonitoringPolicyResource(dg.ConfigurableResource):
    """Defaults: KS p < 0.05, confidence std 0.15, rollback on a significant (p < 0.01) drop of more than 3%
    (docs/model-lifecycle.md)."""

    # The drift thresholds' defaults are DriftSettings' (what drift_report uses when run by hand).
    drift_window_hours: float = Field(
        default=DriftSettings.window_hours, gt=0, description="Inference-log window the drift sensor tests, in hours."
    )
    drift_alpha: float = Field(
        default=DriftSettings.alpha,
        gt=0,
        lt=1,
        description="KS significance per prompt feature, after the Holm correction (required: 0.05; "
        "docs/requirements.md).",
    )
    drift_min_samples: int = Field(
        default=DriftSettings.min_samples,
        ge=5,
        description="Fewer requests than this in the window: no KS verdict (too little evidence).",
    )
    confidence_std: float = Field(
        default=DriftSettings.confidence_std,
        gt=0,
        description="Output alert when the std of answer confidence exceeds this (required: 0.15; "
        "docs/requirements.md).",
    )
    drift_embedding_features: bool = Field(
        default=DriftSettings.embedding_features,
        description="Also test the MiniLM embedding summary of prompts (topic drift); "
        "skipped per feature when the server does not log it.",
    )
    drift_on_alert: OnAlert = Field(
        default="report",
        description="On a drift alert: 'report' (a failing drift_report_job run carrying the evidence), "
        "'incremental' (also train on the waiting feedback now) or 'full' (also run full_chain_job).",
    )
    feedback_min_batch: int = Field(
        default=32, ge=1, description="Seal a feedback batch (one incremental run) once it holds this many records."
    )
    feedback_max_age_minutes: float = Field(
        default=60.0, ge=0, description="…or once its oldest record is this old, so small trickles still train."
    )
    rollback_window: int = Field(
        default=1000,
        ge=2,
        description="The champion's last N rated answers the performance sensor tests (more ratings: "
        "smaller drops are caught; fewer: faster reaction).",
    )
    rollback_min_samples: int = Field(default=100, ge=2, description="Fewer ratings than this: no rollback verdict.")
    rollback_max_relative_drop: float = Field(
        default=0.03,
        gt=0,
        lt=1,
        description="Roll back when the rating is significantly more than this far below the champion's baseline (3%).",
    )
    rollback_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Significance of the one-sided test that the drop exceeds "
        "rollback_max_relative_drop; the share of windows that roll back "
        "when nothing changed (docs/model-lifecycle.md).",
    )


def policy_from_environment(environ: dict[str, str] | None = None) -> MonitoringPolicyResource:
    """The code location's policy: the defaults, each overridable by ``DEEPFEED_<FIELD>``
    (e.g. DEEPFEED_DRIFT_ON_ALERT=full, DEEPFEED_ROLLBACK_MAX_RELATIVE_DROP=0.05), so a
    deployment (Helm values, systemd unit) changes thresholds without touching code."""
    environ = os.environ if environ is None else environ
    overrides = {
        name: environ[f"DEEPFEED_{name.upper()}"]
        for name in MonitoringPolicyResource.model_fields
        if f"DEEPFEED_{name.upper()}" in environ
    }
    try:
        return MonitoringPolicyResource(**overrides)
    except Exception as exc:  # pydantic's message names the field and the bad value
        raise ValueError(f"monitoring policy from the environment ({sorted(overrides)}): {exc}") from exc
