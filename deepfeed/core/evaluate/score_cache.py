"""Scores of a registered model version on one evaluation set, kept in the artifact store.

The champion is re-scored on every evaluation only so that the gate compares like with
like. Its version, the evaluation records and the scoring settings fix its answers and
metrics (greedy decoding), so when all three are unchanged the scores of an earlier run
are reused instead of generating again: the challenger of one run is saved under its
registry version, and is found when it has become the champion of the next. The base
model, scored in every report, is saved under a fingerprint of its checkpoint files, so
repeated evaluations on the same records score it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfeed.core.platform.artifacts import MANIFEST

if TYPE_CHECKING:  # evaluation imports torch; the cache only reads the config's fields
    from deepfeed.core.evaluate.evaluation import EvaluationConfig

CACHE_NAME = "candidate_scores"
# Bump when what a metric means changes, so older cached scores stop matching.
# 2: per-record scores (NLL, answers, toxicity) kept for paired comparisons.
SCORING_VERSION = 2
# Settings that change answers or metrics; batch size is in because padding changes
# the float sums slightly, and greedy argmax can follow.
KEY_FIELDS = (
    "max_length",
    "batch_size",
    "generation_batch_size",
    "max_new_tokens",
    "max_generation_records",
    "bootstrap_samples",
    "seed",
    "toxicity_threshold",
)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def eval_set_hash(records: list[dict[str, Any]]) -> str:
    """Content hash of the evaluation records, order included (it fixes the answered subset)."""
    return hashlib.sha256(_canonical(records).encode()).hexdigest()


def checkpoint_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a checkpoint folder's files. Not a content
    hash on purpose: hashing a base model's weights costs seconds on every evaluation,
    and a checkpoint replaced in place changes sizes or mtimes anyway."""
    path = Path(path)
    files = (p for p in path.rglob("*") if p.is_file())
    entries = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return hashlib.sha256(_canonical(entries).encode()).hexdigest()


def score_cache_key(
    model_version: str, model_source: str, eval_hash: str, config: EvaluationConfig, extra: dict[str, Any] | None = None
) -> str:
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name in KEY_FIELDS}
    payload = {
        "version": str(model_version),
        "source": str(model_source),
        "eval": eval_hash,
        "settings": settings,
        "extra": extra or {},
        "scoring": SCORING_VERSION,
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def find_scores(store, key: str) -> dict[str, Any] | None:
    """The newest cached scores saved under `key`, or None. A damaged entry is skipped:
    the caller then scores the model again."""
    for version in reversed(store.versions(CACHE_NAME)):
        folder = store.root / CACHE_NAME / version
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if manifest.get("counts", {}).get("cache_key") != key:
                continue
            return json.loads((store.local_path(manifest["uri"]) / "scores.json").read_text())
        except Exception:
            continue
    return None


def save_scores(store, key: str, result, samples: list[dict[str, Any]], meta: dict[str, Any], run_id: str = "") -> None:
    """`result` is a report.CandidateResult; errors are not cached (they may be transient)."""
    if result.error:
        return
    with store.new_version(
        CACHE_NAME, {"cache_key": key, **{k: str(v) for k, v in meta.items()}}, run_id=run_id
    ) as version:
        (version.path / "scores.json").write_text(
            _canonical({"result": asdict(result), "samples": samples, "meta": meta})
        )
