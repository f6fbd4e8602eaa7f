"""How a checkpoint is compressed and gated, in a module that imports no torch: compressed_model's
Dagster config is built from CompressionConfig when the code location loads (docs/operations.md, startup)."""

from dataclasses import dataclass

from deepfeed.core.platform.settings import setting


@dataclass(frozen=True)
class CompressionConfig:
    """How a checkpoint is compressed and gated; compressed_model's Dagster config is generated from these fields."""

    keep_fraction: float = setting(
        0.85,
        "Share of the decoder's Linear weights kept by global L1 pruning (85% by default; its measured cost is in "
        "docs/training-tiers.md).",
    )
    prune_method: str = setting(
        "global_l1_unstructured",
        "'global_l1_unstructured' (one magnitude threshold over all layers; ×0.97 perplexity on SmolLM2 at 85%), "
        "'l1_unstructured' (per layer; ×1.09) or 'ln_structured' (whole rows).",
    )
    # weight_only: int8 weights, fp32/bf16 activations (quality within 3%);
    # dynamic: torch quantize_dynamic, activations int8 too (×2.6 perplexity on SmolLM2).
    quantization: str = setting(
        "weight_only",
        "torch int8: 'weight_only' (int8 weights, ×1.008 perplexity on SmolLM2) or 'dynamic' (quantize_dynamic, "
        "activations too; ×2.6).",
    )
    quantize_per_channel: bool = setting(
        True, "Per-channel scales for 'dynamic' torch and ORT quantization (weight_only is always per channel)."
    )
    keep_lm_head_fp32: bool = setting(False, "Leave the output projection (and a tied embedding) unquantized.")
    fp32_layers: tuple[str, ...] = setting((), "Module names kept in fp32, e.g. 'model.layers.0.mlp.down_proj'.")
    int8_embeddings: bool = setting(True, "Store the input embedding int8 per row (needed for the 4x size ratio).")
    onnx_opset: int = setting(17, "ONNX opset of the export.")
    onnx_int8_method: str = setting(
        "weight_only",
        "ONNX int8: 'weight_only' (MatMulNBits 8-bit, ×1.01) or 'dynamic' (ORT quantize_dynamic, ×1.64).",
    )
    onnx_block_size: int = setting(
        128,
        "Largest number of weights per quantization block of the ONNX weight_only int8 (MatMulNBits, a power of "
        "two >= 16); halved until it divides every layer's input size, so no block is padded (SmolLM2: 64, "
        "1.1-1.2x the batched tokens/s of blocks of 32). The vocabulary table keeps blocks of 32 (accuracy).",
        ge=16,
    )
    export_kv_cache: bool = setting(
        True, "Also export the decoder with past key values for generation without recomputing the prefix."
    )
    kv_graph: str = setting(
        "auto",
        "How the KV-cache decoder is written: 'genai_builder' (ONNX Runtime GenAI's builder: fused attention, cache "
        "updated in place; 1.3-1.5x the tokens/s of 'torch_export' on CPU), 'torch_export' (torch's exporter, any "
        "architecture) or 'auto' (the builder where it covers the architecture and is installed).",
    )
    triton_model_name: str = setting("deepfeed", "Model name in the Triton repository.")
    triton_max_batch_size: int = setting(32, "max_batch_size in config.pbtxt (required: 32; docs/requirements.md).")
    triton_instance_kind: str = setting("KIND_CPU", "Triton instance group kind: 'KIND_CPU' or 'KIND_GPU'.")
    gate_max_relative_increase: float = setting(
        0.03,
        "Largest perplexity increase over the fp32 checkpoint an artifact may show (required: 3%; "
        "docs/requirements.md).",
    )
    gate_max_records: int = setting(48, "Held-out records the compression quality gate scores (0 = all).")
    gate_max_length: int = setting(128, "Tokens per scored sequence in the quality gate.")
    # Task metric of the gate (compress/gate.py): token F1 of greedy answers vs fp32.
    gate_max_f1_drop: float = setting(
        0.03,
        "Largest relative drop of token F1 (greedy answers to held-out QA records) vs the fp32 checkpoint "
        "(required: 3%; docs/requirements.md).",
    )
    gate_task_metric: str = setting(
        "paired",
        "How the F1 budget is applied: 'paired' fails an artifact when the whole paired-bootstrap 95% interval of "
        "its F1 change lies below -budget (robust on the demo's few answers), 'point' on the point estimate, "
        "'off' gates perplexity only.",
    )
    gate_max_answers: int = setting(
        24, "Held-out QA records both fp32 and each artifact answer for the task metric (0 = all)."
    )
    gate_max_new_tokens: int = setting(32, "Tokens generated per answer in the quality gate.")
