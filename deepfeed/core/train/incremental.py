"""Data plans of the incremental stream and the knowledge review: what each run trains on.

A feedback batch alone is a few dozen records; training only on them shifts the model
towards whatever users asked this hour. A replay of earlier (clean/augmented) records is
mixed into the training set, and a separate, disjoint replay sample measures forgetting
(it drives the elastic learning rate), so it never doubles as training data.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

TRAINING_FIELDS = ("record_id", "kind", "prompt", "response", "text")


@dataclass(frozen=True)
class ReplayPlan:
    train: list[dict[str, Any]]  # feedback + replayed earlier records
    replay_eval: list[dict[str, Any]]  # earlier records never trained on in this run
    feedback: int
    replayed: int


def plan_replay(
    feedback: list[dict[str, Any]],
    earlier: list[dict[str, Any]],
    replay_ratio: float,
    eval_samples: int,
    seed: int,
) -> ReplayPlan:
    """Feedback plus round(ratio · len(feedback)) earlier records; a disjoint eval sample."""
    if replay_ratio < 0:
        raise ValueError(f"replay_ratio={replay_ratio}: must be >= 0")
    pool = list(earlier)
    random.Random(seed).shuffle(pool)
    replay_eval = pool[:eval_samples]
    wanted = round(replay_ratio * len(feedback))
    replayed = pool[eval_samples : eval_samples + wanted]
    return ReplayPlan(
        train=list(feedback) + replayed, replay_eval=replay_eval, feedback=len(feedback), replayed=len(replayed)
    )


def records_hash(records: Iterable[dict[str, Any]]) -> str:
    """sha256 of the fields that training reads, in order: the data-lineage tag."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(
            json.dumps({k: record.get(k) for k in TRAINING_FIELDS}, sort_keys=True, ensure_ascii=False).encode()
        )
        digest.update(b"\n")
    return digest.hexdigest()


def training_state_dir(home: Path, asset: str, key: str) -> Path:
    """Where a run keeps its resumable checkpoints: outside the artifact version being
    staged (which is deleted when a run fails), keyed so a retry of the same work resumes."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return Path(home) / "training_state" / asset / safe
