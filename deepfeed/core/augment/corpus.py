"""The augmented training corpus: originals plus children of every technique.

Every child carries its provenance (``parent_id``, ``technique``, ``aug_params`` as
JSON, ``similarity`` of its MiniLM sentence embedding to the parent's where MiniLM can
read the text, else None), and :func:`audit_entries` turns each child into an audit
ledger entry (parent, technique, parameters, content hashes).

Synonym and structural children rewrite the text a pair's model learns to produce (its
``response``) with a paraphrase that keeps the meaning. FGSM children are adversarial:
they rewrite a pair's ``prompt`` and keep the reference response, so the model learns
to answer a perturbed question correctly rather than to produce perturbed text
(``AugmentPlan.fgsm_side``; measured in docs/augmentation.md). Text records have no
prompt, so FGSM skips them with that reason. Only train-split
records are augmented, so no sibling of a held-out record reaches training. Children
that near-duplicate an original (MinHash, ``near_duplicate_threshold``) are dropped:
they add nothing but weight on one example. A record a technique cannot handle stays
unchanged, and the reason is kept on it (``aug_skipped``) and counted.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer, MaskedLMReplacer, Skip, text_script
from deepfeed.core.augment.meaning import MeaningJudge
from deepfeed.core.augment.structural import structural_variant
from deepfeed.core.data.cleaning import content_key
from deepfeed.core.data.dedup import NearDuplicateIndex
from deepfeed.core.platform.audit import AuditEntry
from deepfeed.core.platform.encoders import SentenceEncoder

if TYPE_CHECKING:  # FGSM needs torch; only a run that attacks pays for importing it
    from deepfeed.core.augment.fgsm import FgsmTextAttack

TECHNIQUES = ("synonym", "structural", "fgsm")


@dataclass
class AugmentationResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class AugmentPlan:
    synonym_ratio: float = 0.5
    structural_ratio: float = 0.5
    fgsm_ratio: float = 0.0
    # FGSM costs a forward and backward pass of the full model per record; a cap keeps a
    # CPU run bounded whatever the corpus size (records past it are skipped with the reason).
    fgsm_max_records: int = 16
    # Which side of a pair FGSM perturbs: "prompt" (robustness; the default) or
    # "response" (kept only to measure why not: it teaches the model perturbed answers).
    fgsm_side: str = "prompt"
    max_chars: int = 2000
    near_duplicate_threshold: float = 0.9
    batch_size: int = 64
    seed: int = 0
    # Recorded in each child's aug_params; the augmenters themselves hold them.
    technique_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("synonym_ratio", "structural_ratio", "fgsm_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.fgsm_side not in ("prompt", "response"):
            raise ValueError(f"fgsm_side must be 'prompt' or 'response', got {self.fgsm_side!r}")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")


@dataclass
class Augmenters:
    encoder: SentenceEncoder | None = None
    synonyms: ContextualSynonymReplacer | MaskedLMReplacer | None = None
    fgsm: FgsmTextAttack | None = None
    judge: MeaningJudge | None = None  # decides which model may score a child's similarity


def augmented_field(record: dict[str, Any]) -> str:
    return "response" if record.get("kind") == "pair" else "text"


def fgsm_field(record: dict[str, Any], side: str) -> str | None:
    """The field FGSM perturbs, or None where there is no input side (text records)."""
    if side == "response" or record.get("kind") != "pair":
        return augmented_field(record) if side == "response" else None
    return "prompt"


def _child(
    parent: dict[str, Any], text: str, technique: str, params: dict, similarity: float | None, field: str | None = None
) -> dict[str, Any]:
    child = {**parent, field or augmented_field(parent): text, "parent_id": parent["record_id"], "technique": technique}
    child["aug_params"] = json.dumps(params, sort_keys=True, ensure_ascii=False)
    child["similarity"] = similarity
    child["aug_skipped"] = "[]"
    child["record_id"] = hashlib.sha1(f"{parent['record_id']}:{technique}:{text}".encode()).hexdigest()[:16]
    return child


def augment_corpus(records: list[dict[str, Any]], plan: AugmentPlan, augmenters: Augmenters) -> AugmentationResult:
    """Train-split originals (unchanged) followed by their augmented children."""
    rng = random.Random(plan.seed)
    result = AugmentationResult()
    originals = [r for r in records if r.get("split") == "train"]
    notes: dict[str, list[str]] = {r["record_id"]: [] for r in originals}

    def skip(record: dict, technique: str, reason: str) -> None:
        notes[record["record_id"]].append(f"{technique}: {reason}")
        result.skip(f"{technique}: {reason}")

    wanted: dict[str, list[dict]] = {t: [] for t in TECHNIQUES}
    available = {"synonym": augmenters.synonyms, "structural": True, "fgsm": augmenters.fgsm}
    ratios = {"synonym": plan.synonym_ratio, "structural": plan.structural_ratio, "fgsm": plan.fgsm_ratio}
    for record in originals:
        text = record.get(augmented_field(record)) or ""
        for technique in TECHNIQUES:
            # One draw per record and technique, taken even when unused, so changing one
            # ratio does not reshuffle which records the other techniques pick.
            draw = rng.random()
            if not available[technique] or draw >= ratios[technique]:
                continue
            if not text.strip():
                skip(record, technique, "empty text")
            elif len(text) > plan.max_chars:
                skip(record, technique, f"longer than max_chars={plan.max_chars}")
            else:
                wanted[technique].append(record)

    candidates: list[tuple[dict, str, str, dict, str]] = []  # parent, text, technique, params, field
    reordered = []
    for record in wanted["structural"]:
        outcome = structural_variant(record[augmented_field(record)], rng)
        if isinstance(outcome, str):
            skip(record, "structural", outcome)
        else:
            reordered.append((record, *outcome))
    # The rules of structural.py cannot see every dependency between clauses (Chinese
    # topic-comment clauses, a question's clauses): the judge's score refuses reorders
    # that its model reads as a different or broken text (measured in docs/augmentation.md).
    verdicts = _judge_reorders(reordered, augmenters.judge)
    for (record, new, technique), verdict in zip(reordered, verdicts):
        if verdict is not None and not verdict.keeps_meaning:
            skip(
                record, "structural", f"reordered text judged to change the meaning ({verdict.judge}: {verdict.reason})"
            )
            continue
        params = {"seed": plan.seed}
        if verdict is not None:
            params.update(judge=verdict.judge, meaning_score=verdict.score)
        candidates.append((record, new, technique, params, augmented_field(record)))
    for start in range(0, len(wanted["synonym"]), plan.batch_size):
        batch = wanted["synonym"][start : start + plan.batch_size]
        outcomes = augmenters.synonyms.replace_batch([r[augmented_field(r)] for r in batch], rng)
        name = "masked_lm_synonym" if isinstance(augmenters.synonyms, MaskedLMReplacer) else "contextual_synonym"
        for record, outcome in zip(batch, outcomes):
            if isinstance(outcome, Skip):
                skip(record, "synonym", outcome.reason)
            else:
                params = {
                    **plan.technique_params.get("synonym", {}),
                    "replaced": outcome.replaced,
                    "_similarity": outcome.similarity,
                }
                if getattr(outcome, "lm_logprob", None) is not None:
                    params["lm_logprob"] = outcome.lm_logprob
                if hasattr(outcome, "judge"):
                    params.update(judge=outcome.judge, meaning_score=outcome.meaning_score)
                candidates.append((record, outcome.text, name, params, augmented_field(record)))
    attackable = []
    for record in wanted["fgsm"]:
        side = fgsm_field(record, plan.fgsm_side)
        if side is None:
            skip(record, "fgsm", "no prompt to perturb: an adversarial response would be learnt as the answer")
        elif not (record.get(side) or "").strip():
            skip(record, "fgsm", f"empty {side}")
        else:
            attackable.append((record, side))
    for record, _ in attackable[plan.fgsm_max_records :]:
        skip(record, "fgsm", f"over fgsm_max_records={plan.fgsm_max_records}")
    for record, side in attackable[: plan.fgsm_max_records]:
        (outcome,) = augmenters.fgsm.attack([record[side]])
        if isinstance(outcome, Skip):
            skip(record, "fgsm", outcome.reason)
        else:
            swaps = [list(s) for s in outcome.swaps]
            params = {
                **plan.technique_params.get("fgsm", {}),
                "side": side,
                "swaps": swaps,
                "loss_before": round(outcome.loss_before, 4),
                "loss_after": round(outcome.loss_after, 4),
                "judge": outcome.judge,
                "meaning_score": outcome.meaning_score,
            }
            candidates.append((record, outcome.text, "fgsm", params, side))

    similarities = _similarities(candidates, augmenters.encoder, augmenters.judge)
    index = NearDuplicateIndex(threshold=plan.near_duplicate_threshold)
    index.add_batch([r["record_id"] for r in originals], [r.get(augmented_field(r)) or "" for r in originals])
    seen = {content_key(r) for r in originals}
    children = []
    # A prompt-side (adversarial) child is meant to be close to its parent's prompt; only
    # children that rewrite the learnt text are checked against the corpus for near-duplicates.
    target_side = [i for i, c in enumerate(candidates) if c[4] == augmented_field(c[0])]
    found = index.add_batch(target_side, [candidates[i][1] for i in target_side])
    duplicates: list = [None] * len(candidates)
    for i, duplicate_of in zip(target_side, found):
        duplicates[i] = duplicate_of
    for (parent, text, technique, params, side_field), similarity, duplicate_of in zip(
        candidates, similarities, duplicates
    ):
        family = "synonym" if "synonym" in technique else "structural" if technique.endswith("reorder") else technique
        recorded = {k: v for k, v in params.items() if not k.startswith("_")}
        child = _child(parent, text, technique, recorded, similarity, side_field)
        if duplicate_of is not None or content_key(child) in seen:
            skip(parent, family, "near-duplicate of an existing record")
            continue
        seen.add(content_key(child))
        children.append(child)

    for record in originals:
        result.records.append(
            {
                **record,
                "parent_id": None,
                "technique": "original",
                "aug_params": "{}",
                "similarity": 1.0,
                "aug_skipped": json.dumps(notes[record["record_id"]], ensure_ascii=False),
            }
        )
    result.records.extend(children)
    return result


def _similarities(
    candidates: list[tuple[dict, str, str, dict, str]],
    encoder: SentenceEncoder | None,
    judge: MeaningJudge | None = None,
) -> list[float | None]:
    """The synonym filter's own score where it has one, else one batched encoder call
    for the children MiniLM can read (a Chinese text is mostly [UNK] to it: its cosine
    would say nothing, so it stays None)."""
    out: list[float | None] = [c[3].get("_similarity") for c in candidates]
    missing = [i for i, s in enumerate(out) if s is None]
    if judge is not None:
        missing = [i for i in missing if judge.scorer(candidates[i][0][candidates[i][4]]) == "encoder"]
    if encoder is not None and missing:
        parents = [candidates[i][0][candidates[i][4]] for i in missing]
        scores = encoder.similarity(parents, [candidates[i][1] for i in missing])
        for i, score in zip(missing, scores):
            out[i] = round(float(score), 4)
    return [None if s is None else round(float(s), 4) for s in out]


def _judge_reorders(reordered: list[tuple[dict, str, str]], judge: MeaningJudge | None) -> list:
    if judge is None or not reordered:
        return [None] * len(reordered)
    parents = [r[augmented_field(r)] for r, _, _ in reordered]
    return judge.judge(parents, [new for _, new, _ in reordered], [text_script(p) for p in parents], gate=False)


def audit_entries(records: list[dict[str, Any]], run_id: str, stage: str = "augmented_corpus") -> Iterator[AuditEntry]:
    """One ``augmented`` ledger entry per child: its parent, technique and parameters,
    and the hashes of the field it changed before and after (the content never goes in)."""
    parents = {r["record_id"]: r for r in records if r.get("technique") == "original"}
    for child in records:
        if child.get("technique") in (None, "original"):
            continue
        parent = parents.get(child["parent_id"], {})
        params = json.loads(child.get("aug_params") or "{}")
        changed = params.get("side") or augmented_field(child)
        yield AuditEntry.from_texts(
            child["record_id"],
            stage,
            "augmented",
            f"{child['technique']} child of {child['parent_id']}",
            run_id,
            before=parent.get(changed),
            after=child.get(changed),
            extra={
                "parent_id": child["parent_id"],
                "technique": child["technique"],
                "field": changed,
                "params": params,
                "similarity": child.get("similarity"),
            },
        )


def plan_dict(plan: AugmentPlan) -> dict[str, Any]:
    return asdict(plan)
