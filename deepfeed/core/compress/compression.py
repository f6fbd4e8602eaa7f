"""Pruning, int8 quantization, ONNX export and the Triton model repository.

Order follows the source article (docs/requirements.md): load with from_pretrained, prune with torch.nn.utils.prune
keeping 85% of the weights, quantize to int8, export ONNX.

Defaults chosen by measurement on SmolLM2-135M (held-out chatterbot answers, perplexity
relative to the fp32 checkpoint): pruning each layer by its own L1 threshold at 85% keep
×1.09, one global L1 threshold across layers at 85% keep ×0.97; torch weight-only int8
(embedding and tied lm_head included) ×1.008, where dynamic int8 (activations quantized
too) costs ×2.6-2.9. Hence global pruning and weight-only int8.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from deepfeed.core.compress.onnx_gqa import BUILDER_ARCHITECTURES, builder_available, export_gqa_decoder
from deepfeed.core.compress.onnx_graph import LogitsOnly, OnnxExportError, onnx_session, run_unlike_trace, use_dense_moe
from deepfeed.core.compress.onnx_kv import check_decoder_parity, export_decoder_with_past
from deepfeed.core.compress.settings import CompressionConfig  # noqa: F401 (its settings live in a torch-free module)
from deepfeed.core.compress.triton import TRITON_INPUT, TRITON_OUTPUT, triton_config  # noqa: F401  (re-exported)
from deepfeed.core.compress.weight_only_int8 import quantize_weight_only
from deepfeed.core.train.modeling import ModelSourceError, describe_checkpoint, load_model

PRUNE_METHODS = ("global_l1_unstructured", "l1_unstructured", "ln_structured")
QUANTIZATION_METHODS = ("weight_only", "dynamic")
# How the compression gate judges the task metric (gate.py): bootstrap interval, point estimate, not at all.
TASK_GATES = ("paired", "point", "off")


class CompressionInputError(ValueError):
    pass


def _linear_layers(model: torch.nn.Module, skip_lm_head: bool = True):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not (skip_lm_head and name.endswith("lm_head")):
            yield name, module


def prune_model(model: torch.nn.Module, config: CompressionConfig) -> dict[str, float]:
    """Prune every Linear layer (not lm_head, tied to the embeddings) and make it permanent.
    Returns the measured sparsity per layer."""
    import torch.nn.utils.prune as prune

    if config.prune_method not in PRUNE_METHODS:
        raise ValueError(f"prune_method={config.prune_method!r}: expected one of {PRUNE_METHODS}")
    if not 0.0 < config.keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction={config.keep_fraction}: expected a share in (0, 1]")
    amount = 1.0 - config.keep_fraction
    layers = list(_linear_layers(model))
    if config.prune_method == "global_l1_unstructured":
        # One magnitude threshold for the whole model: layers with many small weights give
        # more, sensitive layers less (×0.97 vs ×1.09 perplexity per-layer on SmolLM2).
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=amount
        )
    for _, module in layers:
        if config.prune_method == "l1_unstructured":
            prune.l1_unstructured(module, "weight", amount=amount)
        elif config.prune_method == "ln_structured":
            prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
        prune.remove(module, "weight")
    return {name: float((module.weight == 0).float().mean()) for name, module in layers}


def overall_sparsity(model: torch.nn.Module) -> float:
    zeros = total = 0
    for _, module in _linear_layers(model):
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros / max(1, total)


def quantize_int8(model: torch.nn.Module, config: CompressionConfig) -> torch.nn.Module:
    """An int8 copy of `model` (the argument is left as it is)."""
    if config.quantization == "weight_only":
        quantized = copy.deepcopy(model)
        lm_head = [n for n, m in model.named_modules() if m is model.get_output_embeddings()]
        skip = set(config.fp32_layers) | (set(lm_head) if config.keep_lm_head_fp32 else set())
        quantize_weight_only(quantized, skip=skip, embeddings=config.int8_embeddings)
        return quantized
    if config.quantization != "dynamic":
        raise ValueError(f"quantization={config.quantization!r}: expected one of {QUANTIZATION_METHODS}")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if config.quantize_per_channel else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, _ in _linear_layers(model, skip_lm_head=config.keep_lm_head_fp32)
        if name not in config.fp32_layers
    }
    return quantize_dynamic(model, spec, dtype=torch.qint8)


INT8_SETTINGS = "int8_settings.json"
_INT8_KEYS = ("quantization", "quantize_per_channel", "keep_lm_head_fp32", "fp32_layers", "int8_embeddings")


def save_int8_torch(model: torch.nn.Module, path: Path, config: CompressionConfig | None = None) -> Path:
    """The quantized state dict and the settings that rebuild its modules; reload with
    load_int8_torch (weights_only=True)."""
    path.mkdir(parents=True, exist_ok=True)
    file = path / "model_int8.pt"
    torch.save(model.state_dict(), file)
    model.config.to_json_file(path / "config.json")
    if config is not None:
        write_json(path / INT8_SETTINGS, {k: getattr(config, k) for k in _INT8_KEYS})
    return file


def load_int8_torch(checkpoint: Path, int8_dir: Path, config: CompressionConfig | None = None) -> torch.nn.Module:
    """The int8 model of `int8_dir`; the settings it was saved with win over `config`, so
    a caller with default settings still loads an artifact built with others."""
    from dataclasses import replace

    config = config or CompressionConfig()
    settings = int8_dir / INT8_SETTINGS
    if settings.exists():
        saved = json.loads(settings.read_text())
        saved["fp32_layers"] = tuple(saved.get("fp32_layers") or ())
        config = replace(config, **saved)
    state = torch.load(int8_dir / "model_int8.pt", weights_only=True)
    model = _weight_only_skeleton(int8_dir, config, state) if config.quantization == "weight_only" else None
    if model is None:
        model = quantize_int8(load_model(checkpoint), config)
        model.load_state_dict(state)
    return model.eval()


def _weight_only_skeleton(int8_dir: Path, config: CompressionConfig, state: dict) -> torch.nn.Module | None:
    """The int8 model built on the meta device and filled from `state`, so loading reads
    only the int8 file instead of loading, copying and re-quantizing the fp32 weights
    (48 s vs <2 s for SmolLM2 on a busy 2-core machine). None when something is left
    unfilled (an architecture with other non-persistent buffers): the caller then takes
    the slow path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (int8_dir / "config.json").exists():
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(int8_dir)))
        lm_head = [n for n, m in model.named_modules() if m is model.get_output_embeddings()]
        skip = set(config.fp32_layers) | (set(lm_head) if config.keep_lm_head_fp32 else set())
        quantize_weight_only(model, skip=skip, embeddings=config.int8_embeddings)
    model.load_state_dict(state, assign=True)
    # Rotary embeddings keep inv_freq as a non-persistent buffer: recompute it as their
    # __init__ does.
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if inv_freq is not None and inv_freq.is_meta and hasattr(module, "rope_init_fn"):
            inv_freq, module.attention_scaling = module.rope_init_fn(module.config, "cpu")
            module.inv_freq = inv_freq
            module.original_inv_freq = inv_freq
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None
    model.config.use_cache = False
    return model


def check_onnx_parity(model: torch.nn.Module, path: Path, tolerance: float = 1e-3) -> float:
    """Max |onnx - torch| on a batch unlike the trace example (other shape, left padding)."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    expected = LogitsOnly(model)(ids, mask).detach().numpy()
    actual = run_unlike_trace(session, None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, path)[0]
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
    use_dense_moe(model)
    wrapper = LogitsOnly(model)
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


def quantize_onnx_int8(
    source: Path,
    target: Path,
    per_channel: bool = True,
    method: str = "weight_only",
    block_size: int = CompressionConfig.onnx_block_size,
) -> Path:
    if method == "weight_only":
        from deepfeed.core.compress.onnx_int8 import quantize_onnx_weight_only

        quantize_onnx_weight_only(source, target, block_size=block_size)
        return target
    if method != "dynamic":
        raise ValueError(f"onnx_int8_method={method!r}: expected weight_only or dynamic")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    return target


def write_triton_repository(root: Path, onnx_file: Path, config: CompressionConfig, vocab_size: int) -> Path:
    """<root>/<name>/config.pbtxt and <root>/<name>/1/model.onnx, validated against
    Triton's ModelConfig schema and the ONNX graph."""
    from deepfeed.core.compress.triton import write_triton_repository as write

    return write(
        root, onnx_file, config.triton_model_name, vocab_size, config.triton_max_batch_size, config.triton_instance_kind
    )


def file_size_mb(path: Path, suffix: str = "") -> float:
    files = [path] if path.is_file() else [p for p in path.rglob(f"*{suffix}") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


# Artifacts in build order: name -> (relative path, artifacts it is built from).
ARTIFACTS = {
    "pruned": ("pruned", ()),
    "torch_int8": ("torch_int8", ("pruned",)),
    "onnx_fp32": ("onnx/model.onnx", ("pruned",)),
    "onnx_int8": ("onnx/model_int8.onnx", ("onnx_fp32",)),
    "onnx_kv_fp32": ("onnx/decoder_with_past.onnx", ("pruned",)),
    "onnx_kv_int8": ("onnx/decoder_with_past_int8.onnx", ("onnx_kv_fp32",)),
    "triton": ("triton/{name}", ("onnx_int8",)),
}


KV_GRAPH_WRITERS = ("auto", "genai_builder", "torch_export")


def kv_graph_writer(choice: str, architecture: str) -> str:
    """Which exporter writes the KV-cache decoder (CompressionConfig.kv_graph)."""
    if choice not in KV_GRAPH_WRITERS:
        raise ValueError(f"kv_graph={choice!r}: expected one of {KV_GRAPH_WRITERS}")
    if choice != "auto":
        return choice
    return "genai_builder" if architecture in BUILDER_ARCHITECTURES and builder_available() else "torch_export"


def validate_checkpoint(checkpoint: Path) -> dict[str, Any]:
    try:
        return describe_checkpoint(checkpoint)
    except ModelSourceError as exc:
        raise CompressionInputError(f"compressed_model: cannot read the fine-tuned checkpoint: {exc}") from exc


def compress_checkpoint(checkpoint: Path, output: Path, config: CompressionConfig, log=None) -> dict[str, Any]:
    """All artifacts of one checkpoint under `output`; returns their description.

    Each artifact is built on its own: a failing step (an architecture the ONNX exporter
    cannot handle, say) is reported in `errors` under the artifact's name with the reason,
    the artifacts that depend on it are reported as skipped, and the others still get built.
    """
    if config.gate_task_metric not in TASK_GATES:
        raise ValueError(f"gate_task_metric={config.gate_task_metric!r}: expected one of {TASK_GATES}")
    if config.kv_graph not in KV_GRAPH_WRITERS:
        raise ValueError(f"kv_graph={config.kv_graph!r}: expected one of {KV_GRAPH_WRITERS}")
    architecture = validate_checkpoint(checkpoint)["architecture"]
    model = load_model(checkpoint).eval()
    sparsity = prune_model(model, config)
    paths: dict[str, str] = {}
    sizes = {
        "fp32_checkpoint": file_size_mb(checkpoint, suffix=".safetensors") or file_size_mb(checkpoint, suffix=".bin")
    }
    errors: dict[str, str] = {}
    details: dict[str, Any] = {}

    def pruned():
        model.save_pretrained(output / "pruned", safe_serialization=True)
        sizes["pruned_fp32"] = file_size_mb(output / "pruned", suffix=".safetensors")

    def torch_int8():
        int8 = quantize_int8(model, config)
        save_int8_torch(int8, output / "torch_int8", config)
        sizes["torch_int8"] = file_size_mb(output / "torch_int8" / "model_int8.pt")

    def onnx_fp32():
        export_onnx(model, output / "onnx" / "model.onnx", config.onnx_opset)
        sizes["onnx_fp32"] = file_size_mb(output / "onnx" / "model.onnx")

    def onnx_int8():
        quantize_onnx_int8(
            output / "onnx" / "model.onnx",
            output / "onnx" / "model_int8.onnx",
            config.quantize_per_channel,
            config.onnx_int8_method,
            config.onnx_block_size,
        )
        sizes["onnx_int8"] = file_size_mb(output / "onnx" / "model_int8.onnx")

    def onnx_kv_fp32():
        path = output / "onnx" / "decoder_with_past.onnx"
        details["onnx_kv_graph"] = kv_graph_writer(config.kv_graph, architecture)
        if details["onnx_kv_graph"] == "genai_builder":
            export_gqa_decoder(output / "pruned", path)
        else:
            export_decoder_with_past(model, path, config.onnx_opset)
        details["onnx_kv_fp32_max_error"] = check_decoder_parity(model, path)
        sizes["onnx_kv_fp32"] = file_size_mb(path) + file_size_mb(path.with_name(path.name + ".data"))

    def onnx_kv_int8():
        quantize_onnx_int8(
            output / "onnx" / "decoder_with_past.onnx",
            output / "onnx" / "decoder_with_past_int8.onnx",
            config.quantize_per_channel,
            config.onnx_int8_method,
            config.onnx_block_size,
        )
        sizes["onnx_kv_int8"] = file_size_mb(output / "onnx" / "decoder_with_past_int8.onnx")

    def triton():
        from deepfeed.core.compress.triton import validate_triton_repository

        model_dir = write_triton_repository(
            output / "triton", output / "onnx" / "model_int8.onnx", config, model.config.vocab_size
        )
        details["triton"] = validate_triton_repository(model_dir)

    steps = {
        "pruned": pruned,
        "torch_int8": torch_int8,
        "onnx_fp32": onnx_fp32,
        "onnx_int8": onnx_int8,
        "triton": triton,
    }
    if config.export_kv_cache:
        steps |= {"onnx_kv_fp32": onnx_kv_fp32, "onnx_kv_int8": onnx_kv_int8}
    for name, (relative, needs) in ARTIFACTS.items():
        if name not in steps:
            continue
        missing = [n for n in needs if n not in paths]
        if missing:
            errors[name] = f"skipped: {', '.join(missing)} not built"
            continue
        try:
            with torch.no_grad():
                steps[name]()
            paths[name] = relative.format(name=config.triton_model_name)
        except Exception as exc:  # exporters raise many types; the reason is what matters
            errors[name] = f"{architecture}: {type(exc).__name__}: {exc}"
        if log is not None:
            log(f"{name}: {'built' if name in paths else errors[name]}")
    return {
        "sparsity_per_layer": sparsity,
        "mean_sparsity": overall_sparsity(model),
        "sizes_mb": sizes,
        "paths": paths,
        "errors": errors,
        "details": details,
        "vocab_size": model.config.vocab_size,
        "config": config_dict(config),
    }


def config_dict(config: CompressionConfig) -> dict[str, Any]:
    return asdict(config)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
