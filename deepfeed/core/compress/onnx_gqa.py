"""KV-cache decoder built by ONNX Runtime GenAI's model builder, decoded in place.

The builder writes the graph ONNX Runtime's own generate() uses: attention is one fused
GroupQueryAttention node per layer (rotary embedding inside), Q/K/V and gate/up are one
MatMul each, residual adds are fused into the norms, and the cache is a buffer of fixed
capacity that the graph writes the new keys/values into, so no step copies the cache.
The torch-exported graph (onnx_kv.py) spends ~44% of a batched decode step on the small
ops of unfused attention and concatenates the whole cache every step; on SmolLM2-135M,
int8, batch 8, two threads it makes 197 tokens/s where this graph makes 254
(docs/training-tiers.md). We use only the builder from that package, not its runtime:
its batching mis-positions left-padded prompts (a 7-token prompt batched with a
12-token one generated different tokens than alone), and the loop here also serves the
pipeline's scoring and confidence needs.

How the graph reads its inputs (GroupQueryAttention's contract): a row's position and
the length of its cache come from the row sum of ``attention_mask``, so prompts are
RIGHT-padded; the width of the mask is the cache's length so far. Left-padded batches,
which every caller here passes, are converted on the way in and the logits mapped back.
The same names as onnx_kv.py's graph: input_ids, attention_mask,
past_key_values.<i>.key/value in; logits, present.<i>.key/value out; and one input of
its own, logit_positions [batch, kept]: which of the step's positions get logits.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

KV_CACHE_KEY = "deepfeed.kv_cache"  # model metadata naming the cache contract
SHARED_BUFFER = "shared_buffer"
LOGIT_POSITIONS = "logit_positions"

# Architectures the builder (onnxruntime-genai 0.15) writes with this cache contract and
# the pipeline has checked: Llama (SmolLM2, the test models) and Qwen2 (the
# DeepSeek-R1-Distill-Qwen family); others still go through torch's exporter.
BUILDER_ARCHITECTURES = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"})


def builder_available() -> bool:
    try:
        import onnxruntime_genai.models.builder  # noqa: F401
    except (ImportError, OSError):  # not installed, or its native part cannot load (e.g. beside onnxruntime-gpu)
        return False
    return True


def shares_cache_buffer(session) -> bool:
    return session.get_modelmeta().custom_metadata_map.get(KV_CACHE_KEY) == SHARED_BUFFER


def export_gqa_decoder(checkpoint: Path, path: Path) -> None:
    """fp32 graph of the Hugging Face checkpoint folder at `path` (weights in `path`.data).

    The embedding stays a plain Gather on its own table (shared_embeddings=false): the
    int8 step (onnx_int8.py) then shares one int8 table between the lookup and lm_head.
    The builder's 8-bit path cannot: it names the shared table as if it were 4-bit and
    writes an invalid graph (onnxruntime-genai 0.15.2)."""
    import onnx
    from onnxruntime_genai.models import builder

    config = json.loads((checkpoint / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in BUILDER_ARCHITECTURES:
        raise NotImplementedError(f"{architecture}: the GenAI builder path covers {sorted(BUILDER_ARCHITECTURES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gqa-build-") as tmp:
        out, cache = Path(tmp) / "out", Path(tmp) / "cache"
        chatter = io.StringIO()  # the builder prints options and a progress bar per tensor
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), _graph_only(builder):
                options = builder.parse_extra_options(
                    "", str(checkpoint), str(out), "fp32", "cpu", str(cache), ["shared_embeddings=false"]
                )
                builder.create_model("", str(checkpoint), str(out), "fp32", "cpu", str(cache), **options)
        except Exception as exc:
            raise RuntimeError(f"GenAI builder failed: {exc}; its output ended: {chatter.getvalue()[-500:]}") from exc
        head_size = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
        model = onnx.load(str(out / "model.onnx"))
        _fix_head_size(model, head_size)
        _logits_at_chosen_positions(model)
        onnx.helper.set_model_props(model, {KV_CACHE_KEY: SHARED_BUFFER})
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save(model, str(path), save_as_external_data=True, location=data.name, size_threshold=1024)
    # No onnx.checker here: the builder writes ONNX Runtime's SimplifiedLayerNormalization
    # in the default domain, which the checker does not know. check_decoder_parity runs it instead.


def is_builder_graph(model) -> bool:
    """An onnx.ModelProto written by export_gqa_decoder (or quantized from one)."""
    return any(p.key == KV_CACHE_KEY and p.value == SHARED_BUFFER for p in model.metadata_props)


@contextlib.contextmanager
def _graph_only(builder):
    """The builder ends by copying the tokenizer next to the graph for GenAI's runtime;
    a pruned checkpoint has none (the tokenizer stays with the source checkpoint) and
    the copy would fail after the graph is written. Skipped while the builder runs."""
    original = builder.Model.save_processing
    builder.Model.save_processing = lambda *args, **kwargs: None
    try:
        yield
    finally:
        builder.Model.save_processing = original


def _fix_head_size(model, head_size: int) -> None:
    """The builder leaves the cache's last axis symbolic ('kv_cache_dim'); a fixed size
    lets callers allocate the cache from the graph's own signature."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[3].dim_value = head_size


def _logits_at_chosen_positions(model) -> None:
    """Adds the input ``logit_positions`` [batch, kept]: the positions of this step's
    tokens whose logits the graph returns. lm_head then projects only those rows, so the
    prompt step of generation projects one position per row instead of all of them:
    for a 43-token prompt at batch 8 that is ~19 GFLOP and a 67 MB array fewer
    (docs/training-tiers.md); scoring asks for every position."""
    from onnx import TensorProto, helper

    graph = model.graph
    lm_head = next(node for node in graph.node if "logits" in node.output)
    hidden_size = next(
        init.dims[0] for init in graph.initializer if init.name == lm_head.input[1] and len(init.dims) == 2
    )
    graph.input.append(helper.make_tensor_value_info(LOGIT_POSITIONS, TensorProto.INT64, ["batch_size", "logits_kept"]))
    prefix = "/lm_head/chosen_positions"
    graph.initializer.extend(
        [
            helper.make_tensor(f"{prefix}/axes", TensorProto.INT64, [1], [2]),
            helper.make_tensor(f"{prefix}/width", TensorProto.INT64, [3], [1, 1, hidden_size]),
        ]
    )
    hidden = lm_head.input[0]
    nodes = [
        helper.make_node(
            "Unsqueeze", [LOGIT_POSITIONS, f"{prefix}/axes"], [f"{prefix}/column"], name=f"{prefix}/Unsqueeze"
        ),
        helper.make_node(
            "Expand", [f"{prefix}/column", f"{prefix}/width"], [f"{prefix}/index"], name=f"{prefix}/Expand"
        ),
        helper.make_node(
            "GatherElements", [hidden, f"{prefix}/index"], [f"{prefix}/hidden"], axis=1, name=f"{prefix}/Gather"
        ),
    ]
    lm_head.input[0] = f"{prefix}/hidden"
    at = list(graph.node).index(lm_head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)


def right_padded(input_ids: np.ndarray, attention_mask: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids with each row's tokens moved to the front, tokens per row)."""
    lengths = attention_mask.sum(axis=1).astype(np.int64)
    out = np.full_like(input_ids, pad)
    for row, length in enumerate(lengths):
        out[row, :length] = input_ids[row][attention_mask[row].astype(bool)]
    return out, lengths


class SharedCacheDecoder:
    """Greedy steps of one batch over a shared-buffer graph: the cache is allocated once
    with room for `capacity` tokens and bound as both past and present, so the graph
    writes each step's keys/values in place (ONNX Runtime I/O binding).

    ``step`` takes what onnx_kv's decoding passes (left-padded prompt, then one new
    token per row with the mask grown by one) and returns the logits of each row's last
    token, or with ``all_positions`` the prompt's logits at the places of their tokens
    (scoring pads on the right, generation on the left)."""

    def __init__(self, session, batch: int, capacity: int):
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self.binding.bind_output("logits")
        self.cache = []
        for value in session.get_inputs():
            if value.name.startswith("past_key_values."):
                _, heads, _, dim = value.shape
                buffer = ort.OrtValue.ortvalue_from_shape_and_type([batch, heads, capacity, dim], np.float32)
                self.binding.bind_ortvalue_input(value.name, buffer)
                self.binding.bind_ortvalue_output(value.name.replace("past_key_values.", "present."), buffer)
                self.cache.append(buffer)
        self.capacity = capacity
        self.chooses_positions = LOGIT_POSITIONS in {value.name for value in session.get_inputs()}
        self.lengths: np.ndarray | None = None
        self.width = 0

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, all_positions: bool = False) -> np.ndarray:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        prompt = self.lengths is None
        if prompt:
            input_ids, self.lengths = right_padded(input_ids, attention_mask)
            self.width = input_ids.shape[1]
        else:
            self.lengths = self.lengths + input_ids.shape[1]
            self.width += input_ids.shape[1]
        if self.width > self.capacity:
            raise ValueError(f"cache holds {self.capacity} tokens; step {self.width} asked for more")
        mask = (np.arange(self.width)[None, :] < self.lengths[:, None]).astype(np.int64)
        self.binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids))
        self.binding.bind_cpu_input("attention_mask", mask)
        if prompt and all_positions:
            positions = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        elif prompt:
            positions = (self.lengths - 1)[:, None]
        else:
            positions = np.full((len(self.lengths), 1), input_ids.shape[1] - 1)
        if self.chooses_positions:
            self.binding.bind_cpu_input(LOGIT_POSITIONS, np.ascontiguousarray(positions, dtype=np.int64))
        self.binding.bind_output("logits")  # again: the last run's logits have the last run's shape
        self.session.run_with_iobinding(self.binding)
        logits = self.binding.get_outputs()[0].numpy()
        if not self.chooses_positions:  # a graph written before logit_positions: every position came back
            logits = np.take_along_axis(logits, positions[:, :, None], axis=1)
        if not (prompt and all_positions):
            return logits[:, -1]
        aligned = np.zeros_like(logits)  # back where each token was: callers pad left or right
        for row, length in enumerate(self.lengths):
            aligned[row, attention_mask[row].astype(bool)] = logits[row, :length]
        return aligned


def gqa_logits(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Logits of every position of left-padded sequences (zeros at padding)."""
    decoder = SharedCacheDecoder(session, input_ids.shape[0], input_ids.shape[1])
    return decoder.step(input_ids, attention_mask, all_positions=True)
