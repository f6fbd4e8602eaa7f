"""Resource efficiency: FLOPs per token (prefill and decode apart), peak memory, size.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on real forward passes,
so attention, MoE routing and whatever the architecture does are counted as run (an
estimate from the parameter count would miss them). A quantized model's int8 kernels
(aten._weight_int8pack_mm) get the same 2*M*K*N formula registered here, so the torch
int8 artifact is counted too. ONNX artifacts are counted from their graph: the shapes of
every matrix product under symbolic shape inference on a concrete input size.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import torch


def _count_cpu_attention() -> None:
    """FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU
    one that SDPA dispatches to, so attention would count as zero on CPU. Register the
    same formula torch uses for the others (full, not causal-halved, like theirs)."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@torch.no_grad()
def flops_per_token(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per token of a prefill over `input_ids` (batch, seq) and of one
    decode step that reuses its KV cache."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    _count_int8_weight_only()
    attention = torch.ones_like(input_ids)
    with FlopCounterMode(display=False) as prefill:
        out = model(input_ids=input_ids, attention_mask=attention, use_cache=True)
    next_token = out.logits[:, -1:].argmax(-1)
    cache = out.past_key_values
    with FlopCounterMode(display=False) as decode:
        model(
            input_ids=next_token,
            attention_mask=torch.ones((input_ids.shape[0], input_ids.shape[1] + 1), dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
        )
    batch, length = input_ids.shape
    return {
        "prefill_flops_per_token": prefill.get_total_flops() / (batch * length),
        "decode_flops_per_token": decode.get_total_flops() / batch,
        "flops_context_tokens": length,
    }


def _return_freed_memory() -> None:
    """Collect garbage and hand malloc's free pages back to the OS (glibc malloc_trim):
    otherwise the previous candidate's freed heap stays in the resident baseline, and
    the next candidate reuses it without raising RSS, so its peak reads too low."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(libc).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to trim
        pass


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every `interval` seconds.

    On CPU torch allocations go through malloc, so RSS is the only honest view; a
    sampling thread catches the peak that the start and end values would miss. On
    CUDA the allocator's own peak counter is exact and is used instead.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._process = psutil.Process()
        _return_freed_memory()
        self._base = self._process.memory_info().rss
        self._peak = self._base
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20
        if torch.cuda.is_available():
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20


def folder_size_mb(path: Path, pattern: str = "*") -> float:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) / 2**20


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.onnx.data")


def weights_size_mb(path: Path) -> float:
    """MB of the weight files on disk: the file itself, or a folder's weight files of
    every kind it holds (safetensors checkpoints, the torch int8 state dict, ONNX graphs
    and their external data), not its tokenizer and config files."""
    path = Path(path)
    if path.is_file():
        return folder_size_mb(path)
    return sum(folder_size_mb(path, pattern) for pattern in WEIGHT_FILES)


class Stopwatch:
    """Named stage timings, logged as each stage completes: wall seconds, and the CPU
    seconds of this process, which still mean something on a shared, busy machine."""

    def __init__(self, log=None):
        self.stages: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._log = log

    @contextlib.contextmanager
    def stage(self, name: str):
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            self.stages[name] = self.stages.get(name, 0.0) + seconds
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu
            if self._log:
                self._log(f"stage {name}: {seconds:.1f}s (CPU {cpu:.1f}s)")


def _count_int8_weight_only() -> None:
    """Weight-only int8 Linear layers (weight_only_int8.Int8Linear) run
    aten._weight_int8pack_mm, which FlopCounterMode has no formula for: register the
    matmul's (x [M, K] times int8 weight [N, K]^T is 2*M*K*N), so the torch int8
    artifact is counted like the fp32 model, not as its float parts only."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if op is None or op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _int8pack_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs):
        m, k = a_shape
        n = b_shape[0]
        return 2 * m * k * n


# ONNX matrix products and where their operands sit: (A index, B index). FLOPs are
# 2*M*K*N like FlopCounterMode's mm formula; elementwise ops, softmax and norms are
# left out on both sides, so torch and ONNX numbers compare.
_ONNX_MATMULS = {
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "DynamicQuantizeMatMul": (0, 1),
    "FusedMatMul": (0, 1),
    "QLinearMatMul": (0, 3),
}


def _onnx_graph_flops(model, dims: dict[str, int]) -> float:
    """FLOPs of one run of `model` with its symbolic input dims set to `dims`, from the
    shapes ONNX Runtime's symbolic shape inference propagates through the graph
    (it knows the com.microsoft ops, MatMulNBits included, which onnx's own does not)."""
    import math

    import numpy as np
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from deepfeed.core.compress.onnx_kv import LAST_LOGITS_ONLY

    # Every position's logits, the work the torch count (flops_per_token) measures, so
    # the artifacts compare; as a constant the switch lets shape inference size them.
    for value in list(model.graph.input):
        if value.name == LAST_LOGITS_ONLY:
            model.graph.input.remove(value)
            model.graph.initializer.append(numpy_helper.from_array(np.array(False), LAST_LOGITS_ONLY))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                if dim.dim_param not in dims:
                    raise ValueError(f"input {value.name} has a dimension {dim.dim_param!r} with no value given")
                size = dims[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {i.name: list(i.dims) for i in inferred.graph.initializer}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims_ = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims_):
            shapes[value.name] = [d.dim_value for d in dims_]
    total, unknown = 0.0, []
    for node in inferred.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type in _ONNX_MATMULS:
            a_index, b_index = _ONNX_MATMULS[node.op_type]
            a, out = shapes.get(node.input[a_index]), shapes.get(node.output[0])
            if a is None or out is None:
                unknown.append(node.name or node.op_type)
                continue
            total += 2 * math.prod(out) * a[-1]
        elif node.op_type == "MatMulNBits":
            a = shapes.get(node.input[0])
            if a is None:
                unknown.append(node.name or node.op_type)
                continue
            total += 2 * math.prod(a[:-1]) * attrs["K"].i * attrs["N"].i
        elif node.op_type == "GroupQueryAttention":
            # Q·K^T and weights·V over every cached token, as an unfused graph's MatMuls
            # count; the cache is a buffer here, so its length is the mask's width.
            query, present, mask = (shapes.get(n) for n in (node.input[0], node.output[1], "attention_mask"))
            if query is None or present is None or mask is None:
                unknown.append(node.name or node.op_type)
                continue
            heads, head_size = attrs["num_heads"].i, present[3]
            total += 2 * 2 * query[0] * heads * query[1] * mask[1] * head_size
        elif node.op_type == "Gemm":
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a is None or out is None:
                unknown.append(node.name or node.op_type)
                continue
            k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
            total += 2 * math.prod(out) * k
    if unknown:
        raise ValueError(
            f"shape inference left {len(unknown)} matrix products without shapes (e.g. {unknown[:3]}); "
            "FLOPs not counted"
        )
    return total


def _kv_dims(batch: int, new: int, past: int) -> dict[str, int]:
    """Symbolic input dims of both KV graphs: torch's export and the GenAI builder's
    (whose cache is a buffer; sized here to exactly the tokens it holds)."""
    return {
        "batch": batch,
        "sequence": new,
        "total_sequence": past + new,
        "past_sequence": past,
        "batch_size": batch,
        "sequence_length": new,
        "total_sequence_length": past + new,
        "past_sequence_length": past,
        "logits_kept": new,  # every position's logits, as the torch count
    }


def onnx_flops_per_token(path: Path, context_tokens: int, batch: int = 1) -> dict[str, float]:
    """Prefill and decode FLOPs per token of an ONNX decoder, counted from the graph.

    A graph with past key values (onnx_kv.py) decodes one token over a cache of
    `context_tokens`; a logits-only graph has no cache, so each generated token re-runs
    the whole sequence and its decode cost is a full pass over context + 1 tokens."""
    import onnx

    model = onnx.load(str(path))
    names = {i.name for i in model.graph.input}
    with_past = any(n.startswith("past_key_values.") for n in names)
    if with_past:
        prefill = _onnx_graph_flops(model, _kv_dims(batch, context_tokens, 0))
        model = onnx.load(str(path))
        decode = _onnx_graph_flops(model, _kv_dims(batch, 1, context_tokens))
        decode_per_token = decode / batch
    else:
        prefill = _onnx_graph_flops(model, {"batch": batch, "sequence": context_tokens})
        model = onnx.load(str(path))
        decode_per_token = _onnx_graph_flops(model, {"batch": batch, "sequence": context_tokens + 1}) / batch
    return {
        "prefill_flops_per_token": prefill / (batch * context_tokens),
        "decode_flops_per_token": decode_per_token,
        "flops_context_tokens": context_tokens,
    }
