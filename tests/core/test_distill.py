import math

import pytest
import torch
import torch.nn.functional as F

from deepfeed.core.distill import DistillationConfig, distillation_loss
from deepfeed.core.training import TrainingConfig, TrainingError, fine_tune
from tests.core.test_training import RECORDS


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, 9, -100]])


def test_alpha_one_is_plain_next_token_cross_entropy():
    student = _logits(0)
    expected = F.cross_entropy(student[:, :-1].reshape(-1, 11), LABELS[:, 1:].reshape(-1), ignore_index=-100)
    loss = distillation_loss(student, _logits(1), LABELS, DistillationConfig(alpha=1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_kl_term_is_scaled_by_t_squared_and_vanishes_for_an_identical_teacher():
    student, teacher = _logits(0), _logits(1)
    t = 0.7
    only_kl = distillation_loss(student, teacher, LABELS, DistillationConfig(alpha=0.0, temperature=t))
    mask = LABELS[:, 1:] != -100
    s = F.log_softmax(student[:, :-1][mask] / t, -1)
    p = F.softmax(teacher[:, :-1][mask] / t, -1)
    manual = (p * (p.log() - s)).sum(-1).mean() * t * t
    assert only_kl.item() == pytest.approx(manual.item(), rel=1e-5)
    assert distillation_loss(student, student.clone(), LABELS, DistillationConfig(alpha=0.0)).item() == pytest.approx(0.0, abs=1e-6)
    mixed = distillation_loss(student, teacher, LABELS, DistillationConfig(alpha=0.3, temperature=t))
    ce = distillation_loss(student, teacher, LABELS, DistillationConfig(alpha=1.0))
    assert mixed.item() == pytest.approx(0.3 * ce.item() + 0.7 * only_kl.item(), rel=1e-5)


def test_bad_distillation_settings_are_named():
    with pytest.raises(ValueError, match="distill_alpha"):
        DistillationConfig(alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        DistillationConfig(temperature=0)


def test_student_moves_towards_the_teacher(tiny_llama, tmp_path):
    """Pure distillation (α=0) from a fine-tuned teacher lowers the student's KL to it."""
    teacher = tmp_path / "teacher"
    fine_tune(tiny_llama, RECORDS, teacher, TrainingConfig(max_steps=15, method="full", learning_rate=3e-3))
    config = TrainingConfig(max_steps=12, method="full", learning_rate=3e-3, distill_alpha=0.0, warmup_steps=0)
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "student", config, teacher_path=teacher)
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < 0.6 * result.losses[0]
    with pytest.raises(TrainingError, match="no teacher"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "x", config)
