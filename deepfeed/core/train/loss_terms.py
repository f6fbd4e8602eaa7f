"""Each training technique of `fine_tune` as one loss term; a step's loss is their sum.

Two kinds of term, because they are normalised differently:

- token terms (label CE, distillation KL, FGSM adversarial CE) return a *sum* over the
  batch's labelled tokens; the step divides their total by the global token count, so N
  data-parallel processes compute the same gradient as one process with the whole batch;
- weight terms (the EWC penalty) depend on the weights only and are added once per step,
  after that normalisation.

The weights reproduce the formulas the configuration documents: α·CE + (1−α)·T²·KL for
distillation (distill.py), + fgsm_weight·CE at perturbed embeddings (augment/fgsm.py),
+ λ/2·Σ F (θ − θ*)² for EWC (ewc.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from deepfeed.core.train.distill import IGNORE, kl_sum, kl_sum_cached, token_ce_sum


@dataclass
class ForwardPass:
    """One batch through the student: everything a token term reads."""

    logits: torch.Tensor  # [rows, sequence, vocab]
    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, labels
    example_ids: Sequence[int]  # dataset index of each row (the teacher cache is keyed by it)
    adversarial_ce: torch.Tensor | None = None  # summed CE at FGSM-perturbed embeddings

    @property
    def labels(self) -> torch.Tensor:
        return self.batch["labels"]


def labelled_tokens(labels: torch.Tensor) -> int:
    """Tokens that have a next-token label: the count every token term is summed over."""
    return int((labels[:, 1:] != IGNORE).sum())


class TokenTerm(Protocol):
    name: str

    def __call__(self, forward: ForwardPass) -> torch.Tensor: ...


@dataclass(frozen=True)
class LabelCrossEntropy:
    """weight · Σ CE(student, label): the supervised loss (weight α when distilling)."""

    weight: float = 1.0
    name: str = "label_ce"

    def __call__(self, forward: ForwardPass) -> torch.Tensor:
        ce, _ = token_ce_sum(forward.logits, forward.labels)
        return ce if self.weight == 1.0 else self.weight * ce


@dataclass(frozen=True)
class DistillationKL:
    """weight · T² · Σ KL(teacher_T ‖ student_T) against a live teacher (weight 1 − α)."""

    teacher: torch.nn.Module
    weight: float
    temperature: float
    name: str = "distillation_kl"

    def __call__(self, forward: ForwardPass) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_ids=forward.batch["input_ids"], attention_mask=forward.batch["attention_mask"]
            ).logits
        return self.weight * kl_sum(forward.logits, teacher_logits, forward.labels, self.temperature)


@dataclass(frozen=True)
class CachedDistillationKL:
    """`DistillationKL` against teacher logits read from a cache (teacher_cache.py)."""

    cache: object  # teacher_cache.TeacherCache: .batch(example_ids, device) -> (values, indices)
    weight: float
    temperature: float
    name: str = "distillation_kl"

    def __call__(self, forward: ForwardPass) -> torch.Tensor:
        values, indices = self.cache.batch(forward.example_ids, forward.logits.device)
        return self.weight * kl_sum_cached(forward.logits, forward.labels, values, indices, self.temperature)


@dataclass(frozen=True)
class AdversarialCrossEntropy:
    """weight · Σ CE at embeddings moved by ε · sign(∇) (FGSM); the forward pass computes it."""

    weight: float
    name: str = "adversarial_ce"

    def __call__(self, forward: ForwardPass) -> torch.Tensor:
        if forward.adversarial_ce is None:
            raise ValueError("the FGSM term needs a forward pass that computed the adversarial CE")
        return self.weight * forward.adversarial_ce


@dataclass(frozen=True)
class EwcTerm:
    """λ/2 · Σ F (θ − θ*)², a weight term: `penalty` is an ewc.EwcPenalty or LoraEwcPenalty."""

    penalty: Callable[[torch.nn.Module], torch.Tensor]
    name: str = "ewc"

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        return self.penalty(model)


def token_loss_sum(terms: Sequence[TokenTerm], forward: ForwardPass) -> dict[str, torch.Tensor]:
    """Each token term's value by name, and their sum under "total" (summed in order)."""
    values: dict[str, torch.Tensor] = {}
    total = None
    for term in terms:
        value = term(forward)
        values[term.name] = value
        total = value if total is None else total + value
    if total is None:
        raise ValueError("a training step needs at least one token loss term")
    values["total"] = total
    return values
