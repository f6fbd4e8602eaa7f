"""Weight-only 8-bit ONNX graphs for ONNX Runtime.

MatMul weights go through ORT's MatMulNBitsQuantizer (8 bits, symmetric, accuracy_level=4
= int8 compute; the layers in the largest blocks that pad none, the vocabulary table in
blocks of 32): ×1.005 perplexity on SmolLM2 where ORT's
`quantize_dynamic` costs ×1.64 (measured on SmolLM2-135M: docs/training-tiers.md). That quantizer
only handles embeddings (Gather) at 4 bits, and the fp32 embedding table would then hold most of the file, so
the embedding lookup is rewritten here to gather int8 rows and dequantize them. When the
model ties its embedding to lm_head, the lookup reads lm_head's own quantized table
(MatMulNBits stores B as [vocab, blocks, block size], i.e. embedding rows): one table, not two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfeed.core.compress.onnx_gqa import is_builder_graph
from deepfeed.core.compress.settings import CompressionConfig

ZERO_POINT_8BIT = 128  # MatMulNBits' implicit zero point for symmetric 8-bit weights
# The vocabulary table (lm_head, and the embedding lookup that shares it) keeps blocks of
# 32 (or the setting, where smaller) whatever the layers use: on the demo's fine-tuned
# SmolLM2 its rows in blocks of 64 cost +1.8% perplexity on the evaluation set where the
# layers in blocks of 64 cost +0.4% (docs/training-tiers.md); it is ~9% of a batched
# decode step.
VOCABULARY_BLOCK_SIZE = 32


def _initializers(graph) -> dict:
    return {init.name: init for init in graph.initializer}


def _embedding_gather(graph, initializers):
    """The Gather that looks input_ids up in a 2-D initializer table."""
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in initializers and node.input[1] == "input_ids":
            if len(initializers[node.input[0]].dims) == 2:
                return node
    return None


def _vocabulary_projections(graph, initializers, table: np.ndarray | None) -> list:
    """The MatMuls onto the vocabulary (lm_head): weights [hidden, vocab]."""
    if table is None:
        return []
    return [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in initializers
        and tuple(initializers[node.input[1]].dims) == table.shape[::-1]
    ]


def _tied_lm_head_weight(projections: list, initializers, table: np.ndarray) -> str | None:
    """The weight of the vocabulary projection that is the embedding table transposed."""
    from onnx import numpy_helper

    for node in projections:
        if np.array_equal(numpy_helper.to_array(initializers[node.input[1]]).T, table):
            return node.input[1]
    return None


def block_quantize_rows(table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows in blocks of `block_size`, symmetric, stored as uint8 around 128 (the
    MatMulNBits layout, so tied and untied tables dequantize the same way)."""
    rows, cols = table.shape
    blocks = -(-cols // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :cols] = table
    grouped = padded.reshape(rows, blocks, block_size)
    scales = np.abs(grouped).max(axis=2) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.round(grouped / scales[:, :, None]), -127, 127) + ZERO_POINT_8BIT
    return q.astype(np.uint8), scales.astype(np.float32)


def _dequantizing_lookup(gather, packed_name: str, scales_name: str, hidden: int, blocks: int, block_size: int) -> list:
    """Nodes: rows = Gather(packed, ids) -> float -> (rows - 128) * Gather(scales, ids) -> [.., hidden]."""
    from onnx import helper

    out, ids, p = gather.output[0], gather.input[1], gather.name or "embedding"

    def const(name, value, dtype):
        shape = [len(value)] if isinstance(value, list) else []
        values = value if isinstance(value, list) else [value]
        tensor = helper.make_tensor(f"{p}/{name}_value", dtype, shape, values)
        return helper.make_node("Constant", [], [f"{p}/{name}"], value=tensor)

    from onnx import TensorProto as T

    return [
        const("scale_shape", [-1, blocks, 1], T.INT64),
        const("zero_point", float(ZERO_POINT_8BIT), T.FLOAT),
        const("start", [0], T.INT64),
        const("end", [hidden], T.INT64),
        const("last_axis", [-1], T.INT64),
        helper.make_node("Gather", [packed_name, ids], [f"{p}/rows_q"], axis=0),
        helper.make_node("Cast", [f"{p}/rows_q"], [f"{p}/rows_f"], to=T.FLOAT),
        helper.make_node("Sub", [f"{p}/rows_f", f"{p}/zero_point"], [f"{p}/rows_c"]),
        helper.make_node("Reshape", [scales_name, f"{p}/scale_shape"], [f"{p}/scales_3d"]),
        helper.make_node("Gather", [f"{p}/scales_3d", ids], [f"{p}/row_scales"], axis=0),
        helper.make_node("Mul", [f"{p}/rows_c", f"{p}/row_scales"], [f"{p}/rows_dq"]),
        helper.make_node("Shape", [ids], [f"{p}/ids_shape"]),
        helper.make_node(
            "Constant",
            [],
            [f"{p}/flat_tail"],
            value=helper.make_tensor(f"{p}/flat_tail_value", T.INT64, [1], [blocks * block_size]),
        ),
        helper.make_node("Concat", [f"{p}/ids_shape", f"{p}/flat_tail"], [f"{p}/flat_shape"], axis=0),
        helper.make_node("Reshape", [f"{p}/rows_dq", f"{p}/flat_shape"], [f"{p}/rows_flat"]),
        helper.make_node("Slice", [f"{p}/rows_flat", f"{p}/start", f"{p}/end", f"{p}/last_axis"], [out]),
    ]


def unpadded_block_size(graph, initializers, largest: int) -> int:
    """The largest power of two <= `largest` (and >= 16, MatMulNBits' smallest) that
    divides the input size of every weight matrix, so no block is padded with zeros:
    SmolLM2's 576-wide layers would pad 128-blocks to 640 (a file no smaller than blocks
    of 32), a 64-wide test model to twice its size. 7B Qwen2 shapes take 128."""
    sizes = [
        initializers[node.input[1]].dims[0]
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2
    ]
    block = largest
    while block > 16 and any(size % block for size in sizes):
        block //= 2
    return block


def quantize_onnx_weight_only(
    source: Path, target: Path, block_size: int = CompressionConfig.onnx_block_size, accuracy_level: int = 4
) -> dict:
    """8-bit weight-only copy of `source`; returns what was quantized."""
    import logging

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    # The quantizer logs every node it visits at INFO.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(source))
    graph = model.graph
    initializers = _initializers(graph)
    gather = _embedding_gather(graph, initializers)
    table = numpy_helper.to_array(initializers[gather.input[0]]) if gather is not None else None
    projections = _vocabulary_projections(graph, initializers, table)
    vocabulary = [node.name for node in projections]
    tied_weight = _tied_lm_head_weight(projections, initializers, table)
    original_opsets = {o.domain: o.version for o in model.opset_import}
    vocabulary_block = min(VOCABULARY_BLOCK_SIZE, block_size)
    block_size = unpadded_block_size(graph, initializers, block_size)

    # Two passes, as MatMulNBitsQuantizer takes one block size: the layers, then the
    # vocabulary projection (and so the embedding that shares its table).
    for block, exclude in ((block_size, vocabulary), (vocabulary_block, [])):
        config = nbits.DefaultWeightOnlyQuantConfig(
            block_size=block,
            is_symmetric=True,
            accuracy_level=accuracy_level,
            bits=8,
            op_types_to_quantize=("MatMul",),
        )
        quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    graph = model.graph
    # The quantizer raises the default opset to 21 although MatMulNBits lives in
    # com.microsoft; the exported nodes (ReduceMean with `axes`) are only valid at the
    # opset they were exported for.
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and "" in original_opsets:
            opset.version = original_opsets[""]

    summary = {
        "matmul_nbits": sum(1 for n in graph.node if n.op_type == "MatMulNBits"),
        "embedding": "fp32",
        "block_size": block_size,
        "vocabulary_block_size": vocabulary_block if vocabulary else None,
    }
    if gather is not None:
        hidden = table.shape[1]
        blocks = -(-hidden // vocabulary_block)
        shared = None
        if tied_weight is not None:
            shared = next(
                (
                    n
                    for n in graph.node
                    if n.op_type == "MatMulNBits" and n.input[1].startswith(tied_weight) and len(n.input) == 3
                ),
                None,
            )
        if shared is not None:
            packed_name, scales_name = shared.input[1], shared.input[2]
            summary["embedding"] = "int8, shared with lm_head"
        else:
            packed, scales = block_quantize_rows(table, vocabulary_block)
            packed_name, scales_name = gather.input[0] + "_Q8", gather.input[0] + "_scales"
            graph.initializer.extend(
                [numpy_helper.from_array(packed, packed_name), numpy_helper.from_array(scales, scales_name)]
            )
            summary["embedding"] = "int8"
        position = list(graph.node).index(gather)
        replacement = _dequantizing_lookup(gather, packed_name, scales_name, hidden, blocks, vocabulary_block)
        graph.node.remove(gather)
        for offset, node in enumerate(replacement):
            graph.node.insert(position + offset, node)
        still_used = {name for node in graph.node for name in node.input}
        for init in [i for i in graph.initializer if i.name not in still_used]:
            graph.initializer.remove(init)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    if not is_builder_graph(model):  # its ORT-only ops are unknown to the checker (onnx_gqa.py)
        onnx.checker.check_model(str(target))
    return summary
