"""What both ONNX exports (logits-only and KV-cache decoder) share: the traceable
logits wrapper, the dense MoE path, the export error, and the ONNX Runtime session.

Kept apart from compression.py and onnx_kv.py so that each export imports these at module
level and neither needs the other.
"""

from __future__ import annotations

from pathlib import Path

import torch


class LogitsOnly(torch.nn.Module):
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
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits


class OnnxExportError(RuntimeError):
    pass


def dense_moe(self, hidden_states, topk_indices, topk_weights):
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


def use_dense_moe(model: torch.nn.Module) -> int:
    """Route every DeepSeek-style MoE layer of `model` through `dense_moe`; returns how many."""
    import types

    patched = 0
    for module in model.modules():
        if hasattr(module, "moe") and hasattr(module, "experts") and hasattr(module, "gate"):
            module.moe = types.MethodType(dense_moe, module)
            patched += 1
    return patched


def run_unlike_trace(session, names, feeds, path: Path):
    """session.run on inputs shaped unlike the trace example, where a graph with frozen
    data-dependent control flow breaks; its failure becomes an OnnxExportError."""
    try:
        return session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
        raise OnnxExportError(
            f"ONNX graph of {path.name} fails on inputs shaped unlike the trace example, so the tracer froze "
            f"data-dependent control flow (e.g. sparse MoE routing without an eager/dense path): {exc}"
        ) from exc


# Preference order: onnxruntime-gpu lists CUDA next to CPU; CPU stays as the fallback for
# nodes the CUDA provider has no kernel for. TensorRT and others are not chosen
# automatically (their engine builds take minutes and need per-model settings).
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def select_providers(available: list[str] | tuple[str, ...]) -> list[str]:
    """The execution providers to ask ONNX Runtime for, given what it reports available.

    Only the selection is tested here (no GPU on the CI machines): running on
    CUDAExecutionProvider is untested on real GPUs."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    if not chosen:
        raise RuntimeError(f"ONNX Runtime offers none of {list(PREFERRED_PROVIDERS)} (available: {list(available)})")
    return chosen


def onnx_session(path: Path, threads: int | None = None):
    """CUDA execution provider when onnxruntime-gpu offers it, CPU otherwise."""
    import onnxruntime as ort

    providers = select_providers(ort.get_available_providers())
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
