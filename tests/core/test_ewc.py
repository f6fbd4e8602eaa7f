"""EWC against catastrophic forgetting, measured on a tiny model (seeded, with a margin)."""

import pytest
import torch
from safetensors.torch import load_file

from deepfeed.core.train.ewc import EwcPenalty, fisher_path
from deepfeed.core.train.modeling import load_model, load_tokenizer
from deepfeed.core.train.training import TrainingConfig, TrainingError, encode_examples, fine_tune, mean_token_loss
from tests.conftest import PAIRS

NEW_PAIRS = [
    ("Where is the station?", "Walk north two blocks. The station is on the left."),
    ("How do I bake bread?", "Mix flour, water and yeast. Bake for forty minutes."),
    ("What time is it?", "It is half past three in the afternoon."),
    ("Who wrote the letter?", "My sister wrote it last week from Berlin."),
]


def records(pairs, copies):
    return [
        {"record_id": str(i), "kind": "pair", "prompt": p, "response": r, "text": None}
        for i, (p, r) in enumerate(pairs * copies)
    ]


OLD, NEW = records(PAIRS, 2), records(NEW_PAIRS, 4)


def loss_on(checkpoint, data) -> float:
    tokenizer = load_tokenizer(checkpoint)
    examples = encode_examples(tokenizer, data, TrainingConfig())
    return mean_token_loss(load_model(checkpoint), examples, tokenizer.pad_token_id, 8, torch.device("cpu"))


def test_penalty_is_zero_at_the_anchor_and_grows_with_fisher_weighted_distance():
    model = torch.nn.Linear(3, 2)
    fisher = {"weight": torch.ones(2, 3), "bias": torch.tensor([4.0, 0.0])}
    penalty = EwcPenalty.from_model(model, fisher, strength=2.0)
    assert penalty(model).item() == 0.0
    with torch.no_grad():
        model.bias += torch.tensor([1.0, 5.0])  # only the first bias has Fisher weight
    assert penalty(model).item() == pytest.approx(0.5 * 2.0 * 4.0 * 1.0)


@pytest.fixture(scope="module")
def champion(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ewc") / "champion"
    fine_tune(tiny_llama, OLD, folder, TrainingConfig(max_steps=40, method="full", learning_rate=3e-3))
    return folder


def test_ewc_reduces_forgetting_of_the_old_data(champion, tmp_path):
    before = loss_on(champion, OLD)
    step = dict(max_steps=20, method="full", learning_rate=3e-3, warmup_steps=0, fisher_samples=16)
    fine_tune(champion, NEW, tmp_path / "plain", TrainingConfig(**step))
    result = fine_tune(champion, NEW, tmp_path / "ewc", TrainingConfig(**step, ewc_lambda=3e4), ewc_records=OLD)

    plain_old, ewc_old = loss_on(tmp_path / "plain", OLD), loss_on(tmp_path / "ewc", OLD)
    # Measured: champion 3.04 on the old data; plain fine-tuning 4.19, with EWC 3.67.
    assert ewc_old < plain_old - 0.25
    assert ewc_old - before < 0.75 * (plain_old - before)
    # ...while it still learns the new data.
    assert loss_on(tmp_path / "ewc", NEW) < loss_on(champion, NEW) - 1.0

    stored = fisher_path(champion)
    assert result.fisher_file == str(stored) and stored.exists()
    fisher = load_file(str(stored))
    assert set(fisher) == {n for n, _ in load_model(champion).named_parameters()}
    assert all(bool((f >= 0).all()) for f in fisher.values()) and any(float(f.sum()) > 0 for f in fisher.values())
    mtime = stored.stat().st_mtime_ns
    fine_tune(
        champion, NEW, tmp_path / "again", TrainingConfig(**{**step, "max_steps": 1}, ewc_lambda=1.0), ewc_records=OLD
    )
    assert stored.stat().st_mtime_ns == mtime  # computed once per champion, then reused


def test_ewc_with_lora_reduces_forgetting_of_the_old_data(champion, tmp_path):
    """The adapters' delta of the effective weights pays the champion's Fisher."""
    before = loss_on(champion, OLD)
    step = dict(max_steps=20, method="lora", learning_rate=1e-2, warmup_steps=0, fisher_samples=16)
    fine_tune(champion, NEW, tmp_path / "plain", TrainingConfig(**step))
    result = fine_tune(champion, NEW, tmp_path / "ewc", TrainingConfig(**step, ewc_lambda=3e4), ewc_records=OLD)

    plain_old, ewc_old = loss_on(tmp_path / "plain", OLD), loss_on(tmp_path / "ewc", OLD)
    # Measured: champion 3.04 on the old data; plain LoRA 4.29, LoRA with EWC 3.47.
    assert ewc_old < plain_old - 0.4
    assert ewc_old - before < 0.5 * (plain_old - before)
    # ...while it still learns the new data (champion 6.21, LoRA + EWC 5.33).
    assert loss_on(tmp_path / "ewc", NEW) < loss_on(champion, NEW) - 0.5
    assert result.fisher_file == str(fisher_path(champion))


def test_lora_penalty_is_the_fisher_weighted_square_of_the_adapter_delta(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from deepfeed.core.train.ewc import LoraEwcPenalty

    base = load_model(tiny_llama)
    fisher = {n: torch.full_like(p, 2.0) for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    penalty = LoraEwcPenalty.from_model(model, fisher, strength=3.0)
    assert penalty(model).item() == 0.0  # B starts at zero: the effective weights are the champion's
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(0.1)
    delta = layer.get_delta_weight("default").detach()
    assert penalty(model).item() == pytest.approx(0.5 * 3.0 * 2.0 * float((delta**2).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="no entry for the LoRA-adapted weight"):
        LoraEwcPenalty.from_model(model, {}, strength=1.0)


def test_ewc_needs_the_old_data(tiny_llama, tmp_path):
    for method in ("full", "lora"):
        with pytest.raises(TrainingError, match="champion's training data"):
            fine_tune(tiny_llama, NEW, tmp_path / method, TrainingConfig(max_steps=1, method=method, ewc_lambda=1.0))
