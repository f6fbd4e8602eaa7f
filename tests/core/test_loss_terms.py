"""Each training loss term against a hand computation on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from deepfeed.core.train.ewc import EwcPenalty
from deepfeed.core.train.loss_terms import (
    AdversarialCrossEntropy,
    CachedDistillationKL,
    DistillationKL,
    EwcTerm,
    ForwardPass,
    LabelCrossEntropy,
    labelled_tokens,
    token_loss_sum,
)

IGNORE = -100


def _forward(logits, labels, adversarial=None) -> ForwardPass:
    ids = torch.zeros(labels.shape, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return ForwardPass(logits, batch, list(range(labels.shape[0])), adversarial)


# One row, three positions, vocabulary 2: position t predicts label t+1.
LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
LABELS = torch.tensor([[IGNORE, 0, 1]])


def _log_softmax(row):
    norm = math.log(sum(math.exp(v) for v in row))
    return [v - norm for v in row]


def test_labelled_tokens_counts_positions_with_a_next_label():
    assert labelled_tokens(LABELS) == 2
    assert labelled_tokens(torch.tensor([[5, IGNORE, IGNORE]])) == 0


def test_label_cross_entropy_is_the_summed_next_token_nll_times_its_weight():
    # Position 0 predicts 0 from logits (2, 0); position 1 predicts 1 from (0, 1).
    expected = -_log_softmax([2.0, 0.0])[0] - _log_softmax([0.0, 1.0])[1]
    assert float(LabelCrossEntropy()(_forward(LOGITS, LABELS))) == pytest.approx(expected, rel=1e-6)
    assert float(LabelCrossEntropy(0.25)(_forward(LOGITS, LABELS))) == pytest.approx(0.25 * expected, rel=1e-6)


class _FixedTeacher(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.logits})()


def _kl_by_hand(student_rows, teacher_rows, temperature):
    total = 0.0
    for s, t in zip(student_rows, teacher_rows):
        log_s = _log_softmax([v / temperature for v in s])
        log_t = _log_softmax([v / temperature for v in t])
        total += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t))
    return total * temperature**2


def test_distillation_kl_is_scaled_by_the_squared_temperature_and_its_weight():
    teacher_logits = torch.tensor([[[0.0, 3.0], [1.0, -1.0], [9.0, 9.0]]])
    temperature = 0.7
    # Only the two labelled positions (0 and 1) count; the last one predicts nothing.
    expected = _kl_by_hand([[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, -1.0]], temperature)
    term = DistillationKL(_FixedTeacher(teacher_logits), weight=0.4, temperature=temperature)
    assert float(term(_forward(LOGITS, LABELS))) == pytest.approx(0.4 * expected, rel=1e-5)
    # The same teacher at T = 2: the T² factor, not a changed formula, explains the value.
    hot = DistillationKL(_FixedTeacher(teacher_logits), weight=1.0, temperature=2.0)
    by_hand = _kl_by_hand([[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, -1.0]], 2.0)
    assert float(hot(_forward(LOGITS, LABELS))) == pytest.approx(by_hand, rel=1e-5)


def test_distillation_kl_is_zero_when_the_teacher_agrees():
    term = DistillationKL(_FixedTeacher(LOGITS.clone()), weight=1.0, temperature=0.7)
    assert float(term(_forward(LOGITS, LABELS))) == pytest.approx(0.0, abs=1e-7)


class _FullRowCache:
    """The teacher cache's interface: one row of logits per labelled position."""

    def __init__(self, rows):
        self.rows = rows

    def batch(self, example_ids, device):
        return self.rows.to(device), None


def test_cached_distillation_with_full_rows_equals_the_live_teacher():
    teacher_logits = torch.tensor([[[0.0, 3.0], [1.0, -1.0], [9.0, 9.0]]])
    live = DistillationKL(_FixedTeacher(teacher_logits), weight=0.5, temperature=0.7)
    cached = CachedDistillationKL(_FullRowCache(teacher_logits[0, :2]), weight=0.5, temperature=0.7)
    forward = _forward(LOGITS, LABELS)
    assert float(cached(forward)) == pytest.approx(float(live(forward)), rel=1e-6)


def test_adversarial_term_weights_the_forward_pass_adversarial_ce():
    forward = _forward(LOGITS, LABELS, adversarial=torch.tensor(3.0))
    assert float(AdversarialCrossEntropy(0.5)(forward)) == 1.5
    with pytest.raises(ValueError, match="adversarial CE"):
        AdversarialCrossEntropy(0.5)(_forward(LOGITS, LABELS))


def test_ewc_term_is_half_lambda_times_fisher_weighted_squared_distance():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    fisher = {"weight": torch.tensor([[0.5, 2.0]])}
    term = EwcTerm(EwcPenalty.from_model(model, fisher, strength=3.0))
    assert float(term(model)) == 0.0  # at the anchor
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0]]))
    # λ/2 · Σ F (θ − θ*)² = 3/2 · (0.5·1² + 2·2²) = 12.75
    assert float(term(model)) == pytest.approx(12.75)


def test_token_loss_sum_adds_the_terms_in_order_and_names_each():
    forward = _forward(LOGITS, LABELS, adversarial=torch.tensor(2.0))
    values = token_loss_sum([LabelCrossEntropy(), AdversarialCrossEntropy(0.25)], forward)
    ce = -_log_softmax([2.0, 0.0])[0] - _log_softmax([0.0, 1.0])[1]
    assert float(values["label_ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(values["adversarial_ce"]) == 0.5
    assert float(values["total"]) == pytest.approx(ce + 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        token_loss_sum([], forward)
