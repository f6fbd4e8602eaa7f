import math

import pytest
import torch
import torch.nn.functional as F

from deepfeed.core.train.distill import DistillationConfig, distillation_loss
from deepfeed.core.train.training import TrainingConfig, TrainingError, fine_tune
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
    assert distillation_loss(student, student.clone(), LABELS, DistillationConfig(alpha=0.0)).item() == pytest.approx(
        0.0, abs=1e-6
    )
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


def test_cached_full_logits_give_exactly_the_live_kl_and_top_k_approximates_it():
    from deepfeed.core.train.distill import kl_sum, kl_sum_cached, shifted

    student, teacher = _logits(0), _logits(1) * 4  # a peaked teacher, as trained LMs are
    rows, _ = shifted(teacher, LABELS)
    live = kl_sum(student, teacher, LABELS, 0.7)
    assert kl_sum_cached(student, LABELS, rows, None, 0.7).item() == live.item()
    top = rows.topk(6, dim=-1)
    sparse = kl_sum_cached(student, LABELS, top.values.half(), top.indices, 0.7)
    assert sparse.item() == pytest.approx(live.item(), rel=0.1)
    with pytest.raises(ValueError, match="does not match the data"):
        kl_sum_cached(student, LABELS, rows[:-1], None, 0.7)


def test_cached_teacher_logits_match_the_live_teacher_and_skip_it_on_the_next_run(tiny_llama, tmp_path, monkeypatch):
    import deepfeed.core.train.training as training

    teacher = tmp_path / "teacher"
    fine_tune(tiny_llama, RECORDS, teacher, TrainingConfig(max_steps=10, method="full", learning_rate=3e-3))
    # Four epochs of 32 records: the cache is read again in every epoch.
    config = TrainingConfig(max_steps=16, method="full", learning_rate=3e-3, distill_alpha=0.3, warmup_steps=0)
    live = fine_tune(tiny_llama, RECORDS, tmp_path / "live", config, teacher_path=teacher)
    cached = TrainingConfig(**{**config.__dict__, "teacher_cache": True})
    first = fine_tune(
        tiny_llama, RECORDS, tmp_path / "first", cached, teacher_path=teacher, teacher_cache_dir=tmp_path / "cache"
    )
    assert first.teacher_cache_built
    assert first.losses == pytest.approx(live.losses, rel=1e-5)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its logits are cached")

    monkeypatch.setattr(training, "_load_teacher", no_teacher)
    second = fine_tune(
        tiny_llama, RECORDS, tmp_path / "second", cached, teacher_path=teacher, teacher_cache_dir=tmp_path / "cache"
    )
    assert not second.teacher_cache_built and second.teacher_cache == first.teacher_cache
    assert second.losses == first.losses
    # A different k is a different cache, which needs the teacher.
    with pytest.raises(AssertionError, match="teacher was loaded"):
        fine_tune(
            tiny_llama,
            RECORDS,
            tmp_path / "k",
            TrainingConfig(**{**cached.__dict__, "teacher_cache_top_k": 64}),
            teacher_path=teacher,
            teacher_cache_dir=tmp_path / "cache",
        )
    monkeypatch.undo()
    sparse = fine_tune(
        tiny_llama,
        RECORDS,
        tmp_path / "k",
        TrainingConfig(**{**cached.__dict__, "teacher_cache_top_k": 64}),
        teacher_path=teacher,
        teacher_cache_dir=tmp_path / "cache",
    )
    assert sparse.teacher_cache_built and sparse.teacher_cache != first.teacher_cache
    assert all(math.isfinite(x) for x in sparse.losses) and sparse.losses[-1] < sparse.losses[0]
    with pytest.raises(TrainingError, match="no teacher cache folder"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "x", cached, teacher_path=teacher)


def test_a_full_logit_cache_past_the_size_limit_asks_for_top_k(tiny_llama, tmp_path, monkeypatch):
    from deepfeed.core.train import teacher_cache

    monkeypatch.setattr(teacher_cache, "FULL_LOGITS_MAX_BYTES", 10_000)
    config = TrainingConfig(max_steps=1, distill_alpha=0.5, teacher_cache=True)
    with pytest.raises(TrainingError, match="set teacher_cache_top_k"):
        fine_tune(
            tiny_llama, RECORDS, tmp_path / "x", config, teacher_path=tiny_llama, teacher_cache_dir=tmp_path / "cache"
        )
    assert not (tmp_path / "cache").exists() and not (tmp_path / "x").exists()


def test_summed_ce_matches_the_models_own_loss_and_its_gradient(tiny_llama):
    from deepfeed.core.train.distill import token_ce_sum
    from deepfeed.core.train.modeling import load_model

    model = load_model(tiny_llama)
    input_ids = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=input_ids).logits.detach().requires_grad_()
    ce, tokens = token_ce_sum(logits, LABELS)
    assert tokens == 6
    assert (ce / tokens).item() == pytest.approx(model(input_ids=input_ids, labels=LABELS).loss.item(), rel=1e-5)
    ce.backward()
    reference = logits.detach().clone().requires_grad_()
    mask = LABELS[:, 1:] != -100
    F.cross_entropy(reference[:, :-1][mask], LABELS[:, 1:][mask], reduction="sum").backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-6)
    assert logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_teacher_caches_are_pruned_least_recently_used_first_to_the_budget(tiny_llama, tmp_path):
    import os

    from deepfeed.core.train import teacher_cache

    root = tmp_path / "cache"
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (root / name).mkdir(parents=True)
        (root / name / teacher_cache.FILE).write_bytes(b"x" * 1000)
        os.utime(root / name / teacher_cache.FILE, (1e9 - age, 1e9 - age))
    (root / "not-a-cache").mkdir()
    assert teacher_cache.prune(root, 2500) == [root / "oldest"]
    assert teacher_cache.prune(root, 10, keep=root / "middle") == [root / "newest"]
    assert sorted(p.name for p in root.iterdir()) == [
        "middle",
        "not-a-cache",
    ]  # the cache in use stays, even over budget

    # Through training: the run that builds a new cache removes the other one; a budget of 0 keeps everything.
    teacher = tmp_path / "teacher"
    fine_tune(tiny_llama, RECORDS, teacher, TrainingConfig(max_steps=2, method="full"))
    cached = dict(max_steps=2, method="full", distill_alpha=0.5, teacher_cache=True)
    first = fine_tune(
        tiny_llama,
        RECORDS,
        tmp_path / "a",
        TrainingConfig(**cached, teacher_cache_budget_gb=0),
        teacher_path=teacher,
        teacher_cache_dir=root,
    )
    second = fine_tune(
        tiny_llama,
        RECORDS,
        tmp_path / "b",
        TrainingConfig(**cached, teacher_cache_top_k=8, teacher_cache_budget_gb=0),
        teacher_path=teacher,
        teacher_cache_dir=root,
    )
    assert {first.teacher_cache, second.teacher_cache} <= {str(p) for p in root.iterdir()}
    third = fine_tune(
        tiny_llama,
        RECORDS,
        tmp_path / "c",
        TrainingConfig(**cached, teacher_cache_budget_gb=1e-9),
        teacher_path=teacher,
        teacher_cache_dir=root,
    )
    assert not third.teacher_cache_built and third.teacher_cache == first.teacher_cache
    assert sorted(str(p) for p in root.iterdir()) == sorted([first.teacher_cache, str(root / "not-a-cache")])
