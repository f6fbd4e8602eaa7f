"""Pruning, int8 quantization, ONNX export and the Triton model repository.

Order follows the article: load with from_pretrained, prune with torch.nn.utils.prune
keeping 85% of the weights, quantize Linear layers to int8 dynamically, export ONNX.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from deepfeed.core.modeling import load_model

TRITON_INPUT = "input_ids"
TRITON_OUTPUT = "logits"


@dataclass(frozen=True)
class CompressionConfig:
    keep_fraction: float = 0.85
    prune_method: str = "l1_unstructured"  # or "ln_structured"
    quantize_per_channel: bool = True
    # The output projection is the most quantization-sensitive layer of small LMs
    # (OFFLINE.md: per-channel ×2.9 vs ×2.6 perplexity with lm_head kept in fp32).
    keep_lm_head_fp32: bool = True
    onnx_opset: int = 17
    triton_model_name: str = "deepfeed"
    triton_max_batch_size: int = 32


def _linear_layers(model: torch.nn.Module, skip_lm_head: bool = True):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not (skip_lm_head and name.endswith("lm_head")):
            yield name, module


def prune_model(model: torch.nn.Module, config: CompressionConfig) -> dict[str, float]:
    """Prune every Linear layer (not lm_head, tied to the embeddings) and make it permanent.
    Returns the measured sparsity per layer."""
    import torch.nn.utils.prune as prune

    amount = 1.0 - config.keep_fraction
    sparsity = {}
    for name, module in _linear_layers(model):
        if config.prune_method == "l1_unstructured":
            prune.l1_unstructured(module, "weight", amount=amount)
        elif config.prune_method == "ln_structured":
            prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
        else:
            raise ValueError(f"prune_method={config.prune_method!r}: expected l1_unstructured or ln_structured")
        prune.remove(module, "weight")
        sparsity[name] = float((module.weight == 0).float().mean())
    return sparsity


def quantize_int8(model: torch.nn.Module, config: CompressionConfig) -> torch.nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if config.quantize_per_channel else default_dynamic_qconfig
    spec = {name: qconfig for name, _ in _linear_layers(model, skip_lm_head=config.keep_lm_head_fp32)}
    return quantize_dynamic(model, spec, dtype=torch.qint8)


def save_int8_torch(model: torch.nn.Module, path: Path) -> Path:
    """The quantized state dict; reload with load_int8_torch (weights_only=True)."""
    path.mkdir(parents=True, exist_ok=True)
    file = path / "model_int8.pt"
    torch.save(model.state_dict(), file)
    model.config.to_json_file(path / "config.json")
    return file


def load_int8_torch(checkpoint: Path, int8_dir: Path, config: CompressionConfig) -> torch.nn.Module:
    model = quantize_int8(load_model(checkpoint), config)
    state = torch.load(int8_dir / "model_int8.pt", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class _LogitsOnly(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits, without the KV cache outputs.

    The 4D causal + padding mask is built here with plain broadcasting: transformers 4.57
    builds it with torch.vmap, which the TorchScript-based ONNX exporter cannot trace
    ("unordered_map::at"). Position ids follow the padding, as in `generate`.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]
        allowed = causal[None, None, :, :] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits


class OnnxExportError(RuntimeError):
    pass


def _dense_moe(self, hidden_states, topk_indices, topk_weights):
    """Every expert on every token, weighted by the router (zero for unselected experts).

    Numerically the same as the sparse loop, but free of the data-dependent branch
    (`if token_indices.numel() > 0`) that the tracer freezes into the graph, which made
    exported DeepSeek MoE graphs silently wrong on inputs other than the trace example.
    """
    weights = torch.zeros(
        hidden_states.shape[0], len(self.experts), dtype=topk_weights.dtype, device=hidden_states.device
    ).scatter(1, topk_indices, topk_weights)
    outputs = torch.stack([expert(hidden_states) for expert in self.experts], dim=1)
    return (outputs * weights.unsqueeze(-1)).sum(dim=1).type(hidden_states.dtype)


def _use_dense_moe(model: torch.nn.Module) -> int:
    import types

    patched = 0
    for module in model.modules():
        if hasattr(module, "moe") and hasattr(module, "experts") and hasattr(module, "gate"):
            module.moe = types.MethodType(_dense_moe, module)
            patched += 1
    return patched


def check_onnx_parity(model: torch.nn.Module, path: Path, tolerance: float = 1e-3) -> float:
    """Max |onnx - torch| on a batch unlike the trace example (other shape, left padding)."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    expected = _LogitsOnly(model)(ids, mask).detach().numpy()
    actual = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    keep = mask.bool().numpy()
    error = float(abs(actual - expected)[keep].max())
    if error > tolerance:
        raise OnnxExportError(
            f"ONNX graph of {path.name} disagrees with torch by {error:.3g} (> {tolerance}): "
            "the exporter cannot represent this architecture faithfully"
        )
    return error


def export_onnx(model: torch.nn.Module, path: Path, opset: int) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    _use_dense_moe(model)
    wrapper = _LogitsOnly(model)
    ids = torch.ones((1, 8), dtype=torch.long)
    mask = torch.ones((1, 8), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=[TRITON_OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                TRITON_OUTPUT: {0: "batch", 1: "sequence"},
            },
        )
    onnx.checker.check_model(str(path))
    with torch.no_grad():
        check_onnx_parity(model, path)
    return path


def quantize_onnx_int8(source: Path, target: Path, per_channel: bool = True) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    return target


def onnx_session(path: Path):
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=providers)


def triton_config(name: str, vocab_size: int, max_batch_size: int, has_attention_mask: bool) -> str:
    inputs = [f'  {{ name: "{TRITON_INPUT}" data_type: TYPE_INT64 dims: [ -1 ] }}']
    if has_attention_mask:
        inputs.append('  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }')
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n"
        f'  {{ name: "{TRITON_OUTPUT}" data_type: TYPE_FP32 dims: [ -1, {vocab_size} ] }}\n'
        "]\n"
        "dynamic_batching { }\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def write_triton_repository(root: Path, onnx_file: Path, config: CompressionConfig, vocab_size: int) -> Path:
    """<root>/<name>/config.pbtxt and <root>/<name>/1/model.onnx."""
    model_dir = root / config.triton_model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    target = model_dir / "1" / "model.onnx"
    target.write_bytes(onnx_file.read_bytes())
    (model_dir / "config.pbtxt").write_text(
        triton_config(config.triton_model_name, vocab_size, config.triton_max_batch_size, has_attention_mask=True)
    )
    return model_dir


def file_size_mb(path: Path, suffix: str = "") -> float:
    files = [path] if path.is_file() else [p for p in path.rglob(f"*{suffix}") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def compress_checkpoint(checkpoint: Path, output: Path, config: CompressionConfig) -> dict[str, Any]:
    """All artifacts of one checkpoint under `output`; returns their description.

    A failing ONNX export is reported in `errors` and the torch artifacts still get
    built, so one exporter limitation does not cost the whole stage.
    """
    model = load_model(checkpoint).eval()
    sparsity = prune_model(model, config)
    pruned_dir = output / "pruned"
    model.save_pretrained(pruned_dir, safe_serialization=True)
    paths = {"pruned": "pruned", "torch_int8": "torch_int8"}
    sizes = {"pruned_fp32": file_size_mb(pruned_dir, suffix=".safetensors")}

    int8_model = quantize_int8(model, config)
    save_int8_torch(int8_model, output / "torch_int8")
    sizes["torch_int8"] = file_size_mb(output / "torch_int8" / "model_int8.pt")

    errors = {}
    try:
        onnx_fp32 = export_onnx(model, output / "onnx" / "model.onnx", config.onnx_opset)
        onnx_int8 = quantize_onnx_int8(onnx_fp32, output / "onnx" / "model_int8.onnx", config.quantize_per_channel)
        write_triton_repository(output / "triton", onnx_int8, config, model.config.vocab_size)
        paths.update(onnx_fp32="onnx/model.onnx", onnx_int8="onnx/model_int8.onnx", triton=f"triton/{config.triton_model_name}")
        sizes.update(onnx_fp32=file_size_mb(onnx_fp32), onnx_int8=file_size_mb(onnx_int8))
    except Exception as exc:  # the exporter raises many types; the reason is what matters
        errors["onnx"] = f"{type(exc).__name__}: {exc}"
    return {
        "sparsity_per_layer": sparsity,
        "mean_sparsity": sum(sparsity.values()) / max(1, len(sparsity)),
        "sizes_mb": sizes,
        "paths": paths,
        "errors": errors,
        "vocab_size": model.config.vocab_size,
    }


def config_dict(config: CompressionConfig) -> dict[str, Any]:
    return asdict(config)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
