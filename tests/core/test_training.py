import math

import pytest

from deepfeed.core.train.modeling import describe_checkpoint, load_model
from deepfeed.core.train.training import TrainingConfig, TrainingError, cosine_with_floor, fine_tune
from tests.conftest import PAIRS

RECORDS = [
    {"record_id": str(i), "kind": "pair", "prompt": p, "response": r, "text": None}
    for i, (p, r) in enumerate(PAIRS * 4)
]


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TrainingConfig(max_steps=20, warmup_steps=4, learning_rate=1e-3, final_learning_rate=1e-6)
    rates = [cosine_with_floor(s, config) for s in range(20)]
    assert rates[0] < rates[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))
    assert rates[-1] == pytest.approx(1e-6)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tuning_lowers_the_loss_and_saves_a_plain_checkpoint(tiny_llama, tmp_path, method):
    config = TrainingConfig(
        max_steps=25, batch_size=8, learning_rate=1e-2 if method == "lora" else 1e-3, method=method, warmup_steps=2
    )
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config)
    assert len(result.losses) == 25 and all(math.isfinite(loss) for loss in result.losses)
    # LoRA on a random tiny model moves slower than full fine-tuning (B starts at zero).
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - (0.15 if method == "lora" else 0.3)
    assert describe_checkpoint(tmp_path / "out")["architecture"] == "LlamaForCausalLM"
    reloaded = load_model(tmp_path / "out")
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    if method == "lora":
        assert result.trainable_parameters < result.total_parameters / 2


def test_deepseek_v3_trains(tiny_deepseek, tmp_path):
    result = fine_tune(
        tiny_deepseek,
        RECORDS,
        tmp_path / "out",
        TrainingConfig(max_steps=4, batch_size=4, method="full", learning_rate=1e-3),
    )
    assert len(result.losses) == 4
    assert describe_checkpoint(tmp_path / "out")["architecture"] == "DeepseekV3ForCausalLM"


def test_gradient_checkpointing_path_runs(tiny_llama, tmp_path):
    result = fine_tune(
        tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(max_steps=2, batch_size=4, gradient_checkpointing=True)
    )
    assert len(result.losses) == 2


def test_no_records_and_nan_loss_fail_without_a_checkpoint(tiny_llama, tmp_path):
    with pytest.raises(TrainingError, match="no training records"):
        fine_tune(tiny_llama, [], tmp_path / "a", TrainingConfig(max_steps=1))
    with pytest.raises(TrainingError, match="loss became"):
        fine_tune(
            tiny_llama,
            RECORDS,
            tmp_path / "b",
            TrainingConfig(max_steps=3, method="full", learning_rate=float("inf"), warmup_steps=0),
        )
    assert not (tmp_path / "b").exists()


def test_fgsm_adversarial_training_adds_a_higher_loss_and_trains(tiny_llama, tmp_path):
    plain = fine_tune(
        tiny_llama, RECORDS, tmp_path / "plain", TrainingConfig(max_steps=8, method="full", learning_rate=3e-3)
    )
    config = TrainingConfig(max_steps=8, method="full", learning_rate=3e-3, fgsm_epsilon=0.1, fgsm_weight=0.5)
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "fgsm", config)
    assert len(result.adversarial_losses) == 8
    assert all(math.isfinite(x) for x in result.losses + result.adversarial_losses)
    # Step 0 sees the same weights and batch: the reported loss is the clean one plus
    # the weighted adversarial term, which FGSM makes larger than the clean loss.
    assert result.losses[0] == pytest.approx(plain.losses[0] + 0.5 * result.adversarial_losses[0], rel=1e-5)
    assert result.adversarial_losses[0] > plain.losses[0] + 0.1
    assert result.losses[1:] != pytest.approx(plain.losses[1:])  # it changes the training itself
    assert result.losses[-1] < result.losses[0] - 0.5
    assert result.summary()["final_adversarial_loss"] == result.adversarial_losses[-1]


def test_fgsm_training_with_lora_and_gradient_checkpointing(tiny_llama, tmp_path):
    config = TrainingConfig(max_steps=2, batch_size=4, fgsm_epsilon=0.05, gradient_checkpointing=True)
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config)
    assert len(result.adversarial_losses) == 2 and all(math.isfinite(x) for x in result.adversarial_losses)


@pytest.mark.parametrize(
    "bad",
    [
        {"fgsm_epsilon": 0.6},
        {"fgsm_epsilon": -0.1},
        {"fgsm_weight": -1.0},
        {"teacher_cache_top_k": -1},
        {"teacher_cache_budget_gb": -1.0},
    ],
)
def test_bad_fgsm_and_teacher_cache_settings_are_named(tiny_llama, tmp_path, bad):
    with pytest.raises(TrainingError, match=next(iter(bad))):
        fine_tune(tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(max_steps=1, **bad))


def test_adamw_is_fused_where_torch_has_it_and_takes_the_same_step():
    import torch

    from deepfeed.core.train.training import adamw

    config = TrainingConfig(learning_rate=1e-2, weight_decay=0.1)
    weights = [torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(s))) for s in range(2)]
    fused = adamw(weights, config)
    assert fused.defaults["fused"]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    loop = torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(3):
        for params, optimizer in ((weights, fused), (twins, loop)):
            optimizer.zero_grad()
            sum((p**2).sum() for p in params).backward()
            optimizer.step()
    for a, b in zip(weights, twins):
        assert torch.allclose(a, b, atol=1e-6)
    assert not adamw([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64).to("meta"))], config).defaults["fused"]


def test_fgsm_and_a_cached_teacher_under_two_processes_follow_one_process(tiny_llama, tmp_path):
    """torchrun with 2 gloo processes, FGSM adversarial loss and distillation from a teacher
    logit cache (rank 0 builds it, rank 1 opens it): the loss curve of one process."""
    import subprocess

    from deepfeed.core.train.distributed import launch_command, read_result, write_spec

    teacher = tmp_path / "teacher"
    fine_tune(tiny_llama, RECORDS, teacher, TrainingConfig(max_steps=4, method="full", learning_rate=3e-3))
    config = TrainingConfig(
        max_steps=3,
        method="full",
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=0,
        fgsm_epsilon=0.05,
        distill_alpha=0.5,
        teacher_cache=True,
    )
    single = fine_tune(
        tiny_llama, RECORDS, tmp_path / "single", config, teacher_path=teacher, teacher_cache_dir=tmp_path / "cache1"
    )
    spec = write_spec(
        tmp_path / "job",
        tiny_llama,
        RECORDS,
        tmp_path / "ddp",
        config,
        teacher_path=teacher,
        teacher_cache_dir=tmp_path / "cache2",
    )
    done = subprocess.run(launch_command(spec, 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = read_result(spec)
    assert ddp.teacher_cache_built and ddp.losses == pytest.approx(single.losses, rel=1e-3)
    assert ddp.adversarial_losses == pytest.approx(single.adversarial_losses, rel=1e-3)
    assert (tmp_path / "ddp" / "config.json").exists()


def test_held_out_loss_before_training_and_loss_windows_are_reported(tiny_llama, tmp_path):
    config = TrainingConfig(max_steps=12, batch_size=8, method="full", learning_rate=1e-3, warmup_steps=2)
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config, eval_records=RECORDS[:8])
    summary = result.summary()
    # The eval loss of the untouched weights, then of the trained ones (same records).
    assert result.initial_eval_loss is not None and summary["initial_eval_loss"] == result.initial_eval_loss
    assert summary["final_eval_loss"] < result.initial_eval_loss
    assert summary["loss_first6_mean"] == pytest.approx(sum(result.losses[:6]) / 6)
    assert summary["loss_last6_mean"] < summary["loss_first6_mean"]
