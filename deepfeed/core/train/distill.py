"""Knowledge distillation loss: α·CE + (1−α)·T²·KL between teacher and student.

Hinton et al.'s form: both distributions are softened by the temperature T (required: 0.7; docs/requirements.md)
and the KL term is multiplied by T² so its gradient keeps the same scale as the CE term
whatever T is. The KL is taken with the teacher as the reference distribution
(Σ p_teacher · log(p_teacher / p_student)), which is what `torch.nn.functional.kl_div`
computes and what the distillation literature means by "KL(student ‖ teacher)" loosely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepfeed.core.platform.settings import setting
from deepfeed.core.train.settings import DISTILL_TEMPERATURE

IGNORE = -100


@dataclass(frozen=True)
class DistillationConfig:
    """The loss's two knobs; fine_tune builds one from TrainingConfig.distill_alpha/_temperature."""

    alpha: float = setting(0.5, "Weight of the hard-label CE; 1 - alpha goes to the teacher's soft labels (KL).")
    temperature: float = setting(
        DISTILL_TEMPERATURE, "Softmax temperature of teacher and student; the KL is scaled by T^2."
    )

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill_alpha={self.alpha}: must be within [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"distill_temperature={self.temperature}: must be > 0")


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at positions that predict a labelled next token, and those tokens."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    return logits[mask], targets[mask]


def token_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of labelled tokens.

    A sum (not a mean) lets data-parallel ranks normalise by the global token count, so
    two processes follow the same loss curve as one process with the whole batch.
    """
    # Shifting the labels (not the logits) and letting ignore_index skip the unlabelled
    # positions keeps the backward a single write into the logits' gradient; slicing and
    # masking the logits cost two extra full-size copies (~10% of a CPU step on SmolLM2).
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return ce, int((targets != IGNORE).sum())


def kl_sum(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Σ over labelled positions of KL(teacher_T ‖ student_T) · T²."""
    student, _ = shifted(student_logits, labels)
    teacher, _ = shifted(teacher_logits, labels)
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"teacher vocabulary ({teacher.shape[-1]}) differs from the student's ({student.shape[-1]}): "
            "distillation needs the same tokenizer"
        )
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_token = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    return per_token.sum() * temperature**2


def kl_sum_cached(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_values: torch.Tensor,
    teacher_indices: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """`kl_sum` against cached teacher logits (see teacher_cache.py), one row per
    labelled position. Full rows give exactly `kl_sum`; top-k rows (with their token ids)
    give the KL over the teacher's top k tokens, the teacher renormalised over them."""
    student, _ = shifted(student_logits, labels)
    if student.shape[0] != teacher_values.shape[0]:
        raise ValueError(
            f"the cached teacher logits cover {teacher_values.shape[0]} positions, the batch has "
            f"{student.shape[0]}: the cache does not match the data"
        )
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_values.float() / temperature, dim=-1)
    if teacher_indices is None:
        if log_teacher.shape[-1] != log_student.shape[-1]:
            raise ValueError(
                f"cached teacher vocabulary ({log_teacher.shape[-1]}) differs from the student's "
                f"({log_student.shape[-1]})"
            )
        per_token = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    else:
        per_token = F.kl_div(
            log_student.gather(-1, teacher_indices), log_teacher, log_target=True, reduction="none"
        ).sum(-1)
    return per_token.sum() * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    config: DistillationConfig,
) -> torch.Tensor:
    """Mean per labelled token of α·CE + (1−α)·T²·KL; plain CE without a teacher."""
    ce, tokens = token_ce_sum(student_logits, labels)
    tokens = max(tokens, 1)
    if teacher_logits is None or config.alpha >= 1.0:
        return ce / tokens
    kl = kl_sum(student_logits, teacher_logits.detach(), labels, config.temperature)
    return (config.alpha * ce + (1 - config.alpha) * kl) / tokens
