"""What the production sensors decide on, computed from the inference log and feedback.

- Input + output drift of a recent window against the reference (the training data's
  prompts): :func:`drift_evidence`.
- The key task metric (mean feedback rating) of the champion against its baseline, by a
  one-sided test: :func:`performance_evidence`.
- The A/B events (one per rated answer) for :func:`deepfeed.core.loop.abtest.analyze_ab`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfeed.core.data.pii import scrub
from deepfeed.core.loop.abtest import ARMS
from deepfeed.core.loop.drift import confidence_alert, ks_drift, text_features
from deepfeed.core.loop.inference_log import InferenceLog, feature_columns
from deepfeed.core.loop.rollback import drop_test
from deepfeed.core.platform.settings import setting
from deepfeed.core.platform.tables import read_table

UTC = _dt.timezone.utc


def reference_features(
    clean_corpus_dir: Path, max_records: int = 5000, summarizer: Any = None, max_embedded: int = 2000
) -> dict[str, np.ndarray]:
    """Prompt features of the training split, scrubbed the way served prompts are; with a
    summarizer, the embedding summary of up to ``max_embedded`` of them as well (KS needs
    a sample, not the whole corpus, and encoding is the slow part)."""
    key = (str(Path(clean_corpus_dir).resolve()), max_records)
    if key not in _TEXT_REFERENCE:
        records = [
            r for r in read_table(Path(clean_corpus_dir) / "records.parquet") if r.get("split", "train") == "train"
        ]
        texts = [scrub(r.get("prompt") or r.get("text") or "").text for r in records[:max_records]]
        _TEXT_REFERENCE[key] = (texts, text_features(texts))
    texts, features = _TEXT_REFERENCE[key]
    if summarizer is None:
        return dict(features)
    embedded_key = (*key, max_embedded, summarizer.names)
    if embedded_key not in _EMBEDDED_REFERENCE:
        # Evenly spaced, so a corpus sorted by source is still sampled across sources.
        picked = np.linspace(0, len(texts) - 1, num=min(max_embedded, len(texts)), dtype=int) if texts else []
        _EMBEDDED_REFERENCE[embedded_key] = summarizer.features([texts[i] for i in picked])
    return {**features, **_EMBEDDED_REFERENCE[embedded_key]}


# An artifact version folder never changes, so its features are computed once per process
# (the sensor re-evaluates every few minutes in the same code-server process).
_TEXT_REFERENCE: dict[tuple, tuple[list[str], dict[str, np.ndarray]]] = {}
_EMBEDDED_REFERENCE: dict[tuple, dict[str, np.ndarray]] = {}


@dataclass(frozen=True)
class DriftSettings:
    """The drift test of drift_report (its Dagster config is generated from these fields)."""

    window_hours: float = setting(24.0, "Length of the inference-log window compared with the reference.")
    alpha: float = setting(0.05, "Family-wise significance of the KS tests (required: 0.05; docs/requirements.md).")
    correction: str = setting("holm", "Multiple-testing correction: holm, bonferroni or none.")
    min_samples: int = setting(30, "Fewest requests (and reference records) per feature to test at all.")
    confidence_std: float = setting(
        0.15, "Alert when the std of output confidence exceeds this (required: 0.15; docs/requirements.md)."
    )
    embedding_features: bool = setting(True, "Also test the prompts' MiniLM embedding summary (topic drift).")


@dataclass(frozen=True)
class DriftEvidence:
    alert: bool
    input_alert: bool
    output_alert: bool
    window_start: str
    window_end: str
    requests: int
    reason: str
    input: dict[str, Any]
    output: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_evidence(
    log: InferenceLog,
    reference: Mapping[str, Any],
    end: _dt.datetime,
    window_hours: float = 24,
    alpha: float = 0.05,
    min_samples: int = 30,
    correction: str = "holm",
    confidence_std: float = 0.15,
) -> DriftEvidence:
    start = end - _dt.timedelta(hours=window_hours)
    events = list(log.events(since=start, until=end))
    inputs = ks_drift(reference, feature_columns(events), alpha=alpha, min_samples=min_samples, correction=correction)
    outputs = confidence_alert([e.get("confidence", math.nan) for e in events], confidence_std, min_samples)
    reasons = [f"input: {inputs.reason}", f"output: {outputs.reason}"]
    return DriftEvidence(
        alert=inputs.alert or outputs.alert,
        input_alert=inputs.alert,
        output_alert=outputs.alert,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        requests=len(events),
        reason="; ".join(reasons),
        input=inputs.to_dict(),
        output=outputs.to_dict(),
    )


def _received(record: Mapping[str, Any]) -> _dt.datetime:
    return _dt.datetime.fromisoformat(record["received_at"])


def ratings_for(
    feedback: Iterable[Mapping[str, Any]], version: str, since: _dt.datetime | None = None, last: int | None = None
) -> list[float]:
    rows = [
        f for f in feedback if str(f.get("model_version")) == str(version) and (since is None or _received(f) >= since)
    ]
    rows.sort(key=_received)
    if last:
        rows = rows[-last:]
    return [float(f["rating"]) for f in rows]


@dataclass(frozen=True)
class PerformanceEvidence:
    rollback: bool
    champion: str
    baseline: float | None
    baseline_source: str
    current: float | None
    samples: int
    reason: str
    p_value: float | None = None
    alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def performance_evidence(
    feedback: list[Mapping[str, Any]],
    champion: str,
    previous: str | None,
    baseline_tag: float | None,
    window: int = 1000,
    min_samples: int = 100,
    max_relative_drop: float = 0.03,
    alpha: float = 0.01,
    *,
    baseline_std: float | None = None,
    baseline_n: int | None = None,
) -> PerformanceEvidence:
    """Is the champion's rating over its latest ``window`` rated answers significantly more
    than ``max_relative_drop`` below its baseline (:func:`deepfeed.core.loop.rollback.drop_test`)?

    The baseline is what the champion was promoted on when that was recorded (the version's
    ``deepfeed.baseline_metric`` tag, with its spread and count when recorded); otherwise the
    level the service had before it: the previous champion's ratings over its own latest window.
    """
    current = ratings_for(feedback, champion, last=window)
    if baseline_tag is not None:
        baseline, source = float(baseline_tag), f"tag on v{champion}"
    elif previous is not None and len(prev := ratings_for(feedback, previous, last=window)) >= min_samples:
        baseline, source = float(np.mean(prev)), f"v{previous} over {len(prev)} ratings"
        baseline_std, baseline_n = float(np.std(prev, ddof=1)), len(prev)
    else:
        return PerformanceEvidence(
            False,
            champion,
            None,
            "none",
            float(np.mean(current)) if current else None,
            len(current),
            "no baseline: no tag and too few ratings of a previous version",
        )
    if len(current) < max(min_samples, 2):
        return PerformanceEvidence(
            False,
            champion,
            baseline,
            source,
            float(np.mean(current)) if current else None,
            len(current),
            f"too few ratings of v{champion} ({len(current)}, need {min_samples})",
        )
    check = drop_test(
        current,
        baseline,
        baseline_std=baseline_std,
        baseline_n=baseline_n,
        max_relative_drop=max_relative_drop,
        alpha=alpha,
    )
    return PerformanceEvidence(
        check.rollback, champion, baseline, source, check.current, len(current), check.reason, check.p_value, alpha
    )


def ab_events(feedback: Iterable[Mapping[str, Any]], versions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One event per rated answer of either arm: time, user_hash, arm, metric (rating).

    With ``versions`` ({arm: version}) only ratings of those versions count, so a test
    restarted with a new challenger does not mix in the old one's ratings."""
    rows = []
    for f in feedback:
        arm = f.get("arm")
        if arm not in ARMS or not f.get("user_hash"):
            continue
        if versions and str(f.get("model_version")) != str(versions.get(arm)):
            continue
        rows.append({"time": f["received_at"], "user_hash": f["user_hash"], "arm": arm, "metric": float(f["rating"])})
    return pd.DataFrame(rows, columns=["time", "user_hash", "arm", "metric"])
