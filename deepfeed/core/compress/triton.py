"""The Triton Inference Server model repository, checked against Triton's own schema.

config.pbtxt is parsed into `ModelConfig` from tritonclient's generated protobuf module
(the server's schema, not a regex), then every input/output is compared with the ONNX
graph: name, element type and shape (without the batch axis, which Triton adds when
max_batch_size > 0).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

TRITON_INPUT = "input_ids"
TRITON_OUTPUT = "logits"
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")

# ONNX TensorProto element type -> Triton DataType name.
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    9: "TYPE_BOOL",
    16: "TYPE_BF16",
}


class TritonRepositoryError(ValueError):
    pass


def triton_config(
    name: str,
    vocab_size: int,
    max_batch_size: int,
    has_attention_mask: bool,
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
) -> str:
    if instance_kind not in INSTANCE_KINDS:
        raise TritonRepositoryError(f"triton_instance_kind={instance_kind!r}: expected one of {INSTANCE_KINDS}")
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
        f"instance_group [ {{ kind: {instance_kind} count: {instance_count} }} ]\n"
    )


def write_triton_repository(
    root: Path, onnx_file: Path, name: str, vocab_size: int, max_batch_size: int, instance_kind: str = "KIND_CPU"
) -> Path:
    """<root>/<name>/config.pbtxt and <root>/<name>/1/model.onnx, validated."""
    import onnx

    model_dir = root / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, model_dir / "1" / "model.onnx")
    inputs = {i.name for i in onnx.load(str(onnx_file), load_external_data=False).graph.input}
    (model_dir / "config.pbtxt").write_text(
        triton_config(
            name, vocab_size, max_batch_size, has_attention_mask="attention_mask" in inputs, instance_kind=instance_kind
        )
    )
    validate_triton_repository(model_dir)
    return model_dir


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]  # -1 for a dynamic axis


def _onnx_specs(values) -> dict[str, TensorSpec]:
    specs = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs[value.name] = TensorSpec(
            value.name, _ONNX_TO_TRITON.get(tensor.elem_type, f"onnx:{tensor.elem_type}"), dims
        )
    return specs


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonRepositoryError(f"{path}: not a valid Triton ModelConfig: {exc}") from exc


def validate_triton_repository(model_dir: Path) -> dict:
    """Raise TritonRepositoryError listing every mismatch; return a summary when valid."""
    import onnx
    from tritonclient.grpc import model_config_pb2

    config_file, onnx_file = model_dir / "config.pbtxt", model_dir / "1" / "model.onnx"
    missing = [str(p) for p in (config_file, onnx_file) if not p.exists()]
    if missing:
        raise TritonRepositoryError(f"Triton repository {model_dir} is missing {', '.join(missing)}")
    config = parse_config(config_file)
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    onnx_inputs = _onnx_specs(i for i in graph.input if i.name not in initializers)
    onnx_outputs = _onnx_specs(graph.output)
    batched = config.max_batch_size > 0
    problems = []
    if config.name != model_dir.name:
        problems.append(f"name {config.name!r} differs from the folder name {model_dir.name!r}")
    if config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
        problems.append(f"platform {config.platform!r} is not onnxruntime_onnx")
    for kind, declared, actual in (("input", config.input, onnx_inputs), ("output", config.output, onnx_outputs)):
        names = {t.name for t in declared}
        for missing_name in sorted(set(actual) - names):
            problems.append(f"ONNX {kind} {missing_name!r} is not declared in config.pbtxt")
        for tensor in declared:
            spec = actual.get(tensor.name)
            if spec is None:
                problems.append(f"{kind} {tensor.name!r} is not an {kind} of the ONNX model (has {sorted(actual)})")
                continue
            data_type = model_config_pb2.DataType.Name(tensor.data_type)
            if data_type != spec.data_type:
                problems.append(f"{kind} {tensor.name!r}: config {data_type}, ONNX {spec.data_type}")
            onnx_dims = spec.dims[1:] if batched else spec.dims
            dims = tuple(tensor.dims)
            if (
                len(dims) != len(onnx_dims)
                or any(c != o and o != -1 for c, o in zip(dims, onnx_dims))
                or any(o == -1 and c != -1 for c, o in zip(dims, onnx_dims))
            ):
                problems.append(
                    f"{kind} {tensor.name!r}: config dims {list(dims)}, ONNX dims {list(onnx_dims)} (batch "
                    f"axis excluded)"
                )
    if problems:
        raise TritonRepositoryError(f"Triton repository {model_dir}: " + "; ".join(problems))
    return {
        "name": config.name,
        "max_batch_size": config.max_batch_size,
        "inputs": {t.name: list(t.dims) for t in config.input},
        "outputs": {t.name: list(t.dims) for t in config.output},
        "instance_kinds": [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group],
        "dynamic_batching": config.HasField("dynamic_batching"),
    }
