"""The names of the candidates an evaluation scores and of the compressed artifacts it can score.

Kept apart from scoring.py (which imports torch) so the Dagster config that offers these
names loads without torch.
"""

CHALLENGER, CHAMPION, BASE = "challenger", "champion", "base"

# The logits-only ONNX graphs compute what their KV-cache twins compute; decoding through
# them recomputes the prefix every step, so by default they are scored without generation.
LOGITS_ONLY = ("onnx_fp32", "onnx_int8")
# Scored by default: the torch int8 model and the int8 ONNX decoder with KV cache (what
# generates on CPU). The logits-only ONNX graphs hold the same int8 weights as their KV
# twins, and the fp32 intermediates are numerically the pruned checkpoint; the
# compression gate already scores all of them for perplexity, and on 2 cores each extra
# candidate costs about a minute.
DEFAULT_ARTIFACTS = ("torch_int8", "onnx_kv_int8")
DESCRIPTIONS = {
    "pruned": "pruned fp32 (torch)",
    "torch_int8": "pruned + int8 (torch)",
    "onnx_fp32": "ONNX fp32, logits only",
    "onnx_int8": "ONNX int8, logits only (Triton)",
    "onnx_kv_fp32": "ONNX fp32 with KV cache",
    "onnx_kv_int8": "ONNX int8 with KV cache",
}
