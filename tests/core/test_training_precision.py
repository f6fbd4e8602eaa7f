"""Weights are held in the training precision, and the planner's memory model is the
trainer's: bytes per parameter measured on a tiny model equal the planner's figures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from deepfeed.core.train.memory_layout import LayoutError, training_layout
from deepfeed.core.train.modeling import ModelSourceError, collate, encode_record, load_model, load_tokenizer
from deepfeed.core.train.training import TrainingConfig, TrainingError, adamw, fine_tune, setup_model
from deepfeed.tools import planner as P

RECORDS = [
    {"kind": "pair", "prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"kind": "pair", "prompt": "How much water should I drink?", "response": "About two litres a day."},
] * 4

cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _saved_dtypes(folder) -> set:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("precision, base, saved", [("fp32", torch.float32, "F32"), ("bf16", torch.bfloat16, "BF16")])
def test_lora_base_is_loaded_in_the_configured_precision(tiny_llama, tmp_path, precision, base, saved):
    config = TrainingConfig(method="lora", precision=precision, max_steps=2, batch_size=4, learning_rate=3e-3)
    model, layout, _ = setup_model(tiny_llama, config)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    adapters = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {base} and adapters == {torch.float32}
    assert layout.base == precision and layout.trained == "fp32"
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config)
    assert result.base_dtype == precision and result.precision == precision
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert _saved_dtypes(tmp_path / "out") == {saved}


def test_full_fine_tuning_keeps_fp32_master_weights_under_bf16(tiny_llama):
    model, layout, _ = setup_model(tiny_llama, TrainingConfig(method="full", precision="bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert layout.compute == "bf16"


def _measured_bytes(model, optimizer) -> dict[str, int]:
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    opt = sum(size(v) for state in optimizer.state.values() for k, v in state.items() if k != "step")
    return {
        "weights": sum(size(p) for p in model.parameters()),
        "gradients": sum(size(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": opt,
    }


@pytest.mark.parametrize(
    "method, precision", [("full", "fp32"), ("full", "bf16"), ("lora", "fp32"), ("lora", "bf16"), ("lora", "fp16")]
)
def test_planner_bytes_equal_what_the_trainer_allocates(tiny_llama, method, precision):
    config = TrainingConfig(method=method, precision=precision, lora_rank=4)
    model, layout, device = setup_model(tiny_llama, config)
    tokenizer = load_tokenizer(tiny_llama)
    batch = collate([encode_record(tokenizer, r, 32) for r in RECORDS[:2]], tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(layout.compute, torch.float32)
    with torch.autocast("cpu", dtype=compute, enabled=layout.compute is not None):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    measured = _measured_bytes(model, optimizer)

    shape = P.shape_from_config(json.loads((tiny_llama / "config.json").read_text()))
    counts = P.count_params(shape)
    trainable = counts.total if method == "full" else P.lora_params(shape, 4)
    assert sum(p.numel() for p in params) == trainable
    planned = P.training_state_bytes(counts, training_layout(method, precision), trainable)
    assert measured == planned
    per_param = {k: v / counts.total for k, v in planned.items()}
    print(f"{method}/{precision}: bytes per model parameter {per_param}")


def test_qlora_refuses_clearly_without_cuda(tiny_llama, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelSourceError, match="CUDA"):
        load_model(tiny_llama, torch.bfloat16, quantization="nf4")
    with pytest.raises(TrainingError, match="CUDA"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(method="qlora", max_steps=1))
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrainingError, match="4-bit base"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(method="qlora", ewc_lambda=1.0))
    with pytest.raises(LayoutError, match="16 bit"):
        training_layout("qlora", "fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("_", [pytest.param(0, marks=cuda)])
def test_gpu_loads_16bit_base(tiny_llama, tmp_path, precision, _):
    config = TrainingConfig(method="lora", precision=precision, max_steps=2, batch_size=4, learning_rate=3e-3)
    model, layout, device = setup_model(tiny_llama, config)
    assert device.type == "cuda"
    wanted = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {wanted}
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config)
    assert result.device == "cuda" and result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("_", [pytest.param(0, marks=cuda)])
def test_qlora_loads_an_nf4_base_and_trains_fp32_adapters(tiny_llama, tmp_path, _):
    pytest.importorskip("bitsandbytes")
    config = TrainingConfig(method="qlora", precision="bf16", max_steps=3, batch_size=4, learning_rate=3e-3)
    model, layout, _device = setup_model(tiny_llama, config)
    assert layout.base == "nf4"
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    result = fine_tune(tiny_llama, RECORDS, tmp_path / "out", config)
    assert result.base_dtype == "nf4" and (tmp_path / "out" / "config.json").exists()
    assert _saved_dtypes(tmp_path / "out") == {"BF16"}
