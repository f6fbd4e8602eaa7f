"""Weight-only int8 for torch: int8 weights with one fp32 scale per output channel.

Why not `torch.ao.quantization.quantize_dynamic`: it quantizes the activations too, and on
SmolLM2 that alone multiplies perplexity by 2.6-3.4 (docs/training-tiers.md, measured by
`benchmarks/bench_compression.py --int8-table`), far outside the 3%
budget; it is also deprecated in torch 2.13. Why not torchao: its Int8WeightOnlyConfig
does the same thing through the same kernel (`aten._weight_int8pack_mm`) but pins torch
versions tightly; the layer below is ~60 lines and keeps the dependency set as it is.

The matmul runs through `_weight_int8pack_mm` with bf16 activations (the kernel's fast
CPU path; fp32 activations take a slow path); inputs are cast back to the caller's dtype.
Embeddings are stored int8 per row and dequantized on lookup, so a tied lm_head and the
embedding share one int8 table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COMPUTE_DTYPE = torch.bfloat16


def quantize_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per row (output channel)."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(torch.nn.Module):
    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Int8Linear":
        q, scale = quantize_per_row(linear.weight)
        return cls(q, scale, linear.bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale.to(COMPUTE_DTYPE))
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


class Int8Embedding(torch.nn.Module):
    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight_int8.shape
        self.padding_idx = padding_idx
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)

    @classmethod
    def from_embedding(cls, embedding: torch.nn.Embedding) -> "Int8Embedding":
        q, scale = quantize_per_row(embedding.weight)
        return cls(q, scale, embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_int8).float() * self.scale[ids].unsqueeze(-1)


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize_weight_only(model: torch.nn.Module, skip: set[str] = frozenset(), embeddings: bool = True) -> list[str]:
    """Replace Linear layers (and the input embedding) in place, except the named ones.

    A tied lm_head reuses the embedding's int8 table instead of storing a second copy.
    Returns the names of the layers that were quantized.
    """
    quantized: list[str] = []
    input_embedding = model.get_input_embeddings() if embeddings else None
    output_embedding = model.get_output_embeddings()
    tied = (
        output_embedding is not None
        and input_embedding is not None
        and output_embedding.weight is input_embedding.weight
    )
    names = {id(m): n for n, m in model.named_modules()}
    int8_embedding = None
    if input_embedding is not None and names.get(id(input_embedding)) not in skip:
        int8_embedding = Int8Embedding.from_embedding(input_embedding)
        _set_module(model, names[id(input_embedding)], int8_embedding)
        quantized.append(names[id(input_embedding)])
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name in skip:
            continue
        if module is output_embedding and tied:
            if int8_embedding is None:
                continue  # the shared fp32 table stays; quantizing one side would untie them
            replacement = Int8Linear(int8_embedding.weight_int8, int8_embedding.scale, module.bias)
        else:
            replacement = Int8Linear.from_linear(module)
        _set_module(model, name, replacement)
        quantized.append(name)
    return quantized
