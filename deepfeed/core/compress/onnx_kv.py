"""ONNX decoder with a KV cache, and greedy generation on ONNX Runtime with it.

One graph serves both the prompt and every later step: past keys/values are inputs whose
sequence axis may be 0 (the prompt step) and the updated ones are outputs, so a step
feeds one new token instead of recomputing the whole prefix.

Inputs:  input_ids [batch, new], attention_mask [batch, past + new],
         past_key_values.<i>.key / .value [batch, heads, past, dim],
         last_logits_only (bool scalar)
Outputs: logits [batch, new or 1, vocab], present.<i>.key / .value [batch, heads, past + new, dim]

Generation needs the logits of the last position only; scoring (the quality gate's
perplexity) needs every position. ``last_logits_only`` chooses, as transformers'
``generate`` does with ``logits_to_keep=1``: for a 43-token prompt at batch 8 the
vocabulary projection of every prompt position is ~20 GFLOP and a 67 MB array that
greedy decoding never reads (docs/training-tiers.md). It is a required input: an ONNX
input with a default is an initializer ONNX Runtime warns about on every load. Graphs
exported before it existed lack it, and the helpers here feed it only where it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfeed.core.compress.onnx_gqa import SharedCacheDecoder, gqa_logits, shares_cache_buffer
from deepfeed.core.compress.onnx_graph import LogitsOnly, OnnxExportError, onnx_session, run_unlike_trace, use_dense_moe

PAST = "past_key_values.{layer}.{kind}"
LAST_LOGITS_ONLY = "last_logits_only"
PRESENT = "present.{layer}.{kind}"


@dataclass(frozen=True)
class CacheLayout:
    """Per layer: (heads, head_dim) of the key and of the value."""

    keys: list[tuple[int, int]]
    values: list[tuple[int, int]]
    last_logits_switch: bool = False  # the graph takes last_logits_only

    def logits_switch(self, last_only: bool = False) -> dict:
        """The ``last_logits_only`` feed, where the graph takes it."""
        return {LAST_LOGITS_ONLY: np.array(last_only)} if self.last_logits_switch else {}

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def input_names(self) -> list[str]:
        return [PAST.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def output_names(self) -> list[str]:
        return [PRESENT.format(layer=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def empty(self, batch: int, length: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
        arrays = {}
        for i in range(self.num_layers):
            arrays[PAST.format(layer=i, kind="key")] = np.zeros((batch, *self._shape(self.keys[i], length)), dtype)
            arrays[PAST.format(layer=i, kind="value")] = np.zeros((batch, *self._shape(self.values[i], length)), dtype)
        return arrays

    @staticmethod
    def _shape(heads_dim: tuple[int, int], length: int) -> tuple[int, int, int]:
        return heads_dim[0], length, heads_dim[1]


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


@torch.no_grad()
def cache_layout(model: torch.nn.Module) -> CacheLayout:
    ids = torch.ones((1, 2), dtype=torch.long)
    cache = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
    pairs = _cache_tensors(cache)
    return CacheLayout(
        keys=[(k.shape[1], k.shape[3]) for k, _ in pairs],
        values=[(v.shape[1], v.shape[3]) for _, v in pairs],
    )


class DecoderWithPast(torch.nn.Module):
    """Flat tensors in and out, for the exporter; the mask is built here with plain
    broadcasting for the same reason as onnx_graph.LogitsOnly (torch.vmap in
    transformers' mask code does not trace)."""

    def __init__(self, model: torch.nn.Module, num_layers: int):
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids, attention_mask, last_logits_only, *past):
        from transformers.cache_utils import DynamicCache

        new = input_ids.shape[1]
        total = attention_mask.shape[1]
        cache = DynamicCache()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        key_positions = torch.arange(total, device=input_ids.device)
        query_positions = key_positions[total - new :]
        causal = key_positions[None, :] <= query_positions[:, None]
        allowed = causal[None, None, :, :] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, total - new :]
        kept = torch.arange(new, device=input_ids.device)[(new - 1) * last_logits_only.to(torch.int64) :]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=kept,
        )
        flat = [t for pair in _cache_tensors(out.past_key_values) for t in pair]
        return (out.logits, *flat)


def export_decoder_with_past(model: torch.nn.Module, path: Path, opset: int) -> CacheLayout:
    """Export and check the graph (onnx.checker, then logits and presents vs torch)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    use_dense_moe(model)
    layout = cache_layout(model)
    wrapper = DecoderWithPast(model, layout.num_layers)
    # A non-empty past in the trace example: the tracer then keeps the concatenation
    # general; an empty past at run time is just a zero-length axis.
    ids = torch.ones((1, 2), dtype=torch.long)
    past = [torch.from_numpy(a) for a in layout.empty(1, length=3).values()]
    mask = torch.ones((1, 5), dtype=torch.long)
    dynamic = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    dynamic |= {name: {0: "batch", 2: "past_sequence"} for name in layout.input_names()}
    dynamic |= {name: {0: "batch", 2: "total_sequence"} for name in layout.output_names()}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask, torch.tensor(False), *past),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input_ids", "attention_mask", LAST_LOGITS_ONLY, *layout.input_names()],
            output_names=["logits", *layout.output_names()],
            dynamic_axes=dynamic,
        )
    onnx.checker.check_model(str(path))
    return layout


def layout_from_session(session) -> CacheLayout:
    shapes = {i.name: i.shape for i in session.get_inputs()}
    count = sum(1 for name in shapes if name.startswith("past_key_values.")) // 2
    keys = [
        (shapes[PAST.format(layer=i, kind="key")][1], shapes[PAST.format(layer=i, kind="key")][3]) for i in range(count)
    ]
    values = [
        (shapes[PAST.format(layer=i, kind="value")][1], shapes[PAST.format(layer=i, kind="value")][3])
        for i in range(count)
    ]
    # Graphs exported before last_logits_only existed do not take it.
    return CacheLayout(keys=keys, values=values, last_logits_switch=LAST_LOGITS_ONLY in shapes)


def kv_step(
    session,
    layout: CacheLayout,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    past: list | None,
    last_only: bool = False,
):
    """One decoder step: (logits as numpy, the new cache as ONNX Runtime values).
    ``last_only``: the logits of the last position only ([batch, 1, vocab]) where the graph
    can skip the others.

    The cache never leaves ONNX Runtime between steps (``run_with_ort_values``): copying
    it out to numpy and back each step cost 8-15% of decoding on two threads in
    side-by-side runs (docs/training-tiers.md); only the logits are read. ``past`` None: an empty cache."""
    import onnxruntime as ort

    value = ort.OrtValue.ortvalue_from_numpy
    feeds = {
        "input_ids": value(np.ascontiguousarray(input_ids, dtype=np.int64)),
        "attention_mask": value(np.ascontiguousarray(attention_mask, dtype=np.int64)),
    }
    if past is None:
        feeds |= {name: value(array) for name, array in layout.empty(input_ids.shape[0]).items()}
    else:
        feeds |= dict(zip(layout.input_names(), past))
    feeds |= {name: value(array) for name, array in layout.logits_switch(last_only).items()}
    logits, *presents = session.run_with_ort_values(["logits", *layout.output_names()], feeds)
    return logits.numpy(), presents


class ConcatCacheDecoder:
    """Steps over a graph exported here: the cache comes back as new values each step
    (kept in ONNX Runtime, see kv_step). The same ``step`` as onnx_gqa.SharedCacheDecoder."""

    def __init__(self, session, layout: CacheLayout):
        self.session, self.layout, self.past = session, layout, None

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, all_positions: bool = False) -> np.ndarray:
        logits, self.past = kv_step(
            self.session, self.layout, input_ids, attention_mask, self.past, last_only=not all_positions
        )
        return logits if all_positions else logits[:, -1]


def open_decoder(session, batch: int, capacity: int):
    """The step-by-step decoder this graph needs; `capacity`: prompt width + new tokens."""
    if shares_cache_buffer(session):
        return SharedCacheDecoder(session, batch, capacity)
    return ConcatCacheDecoder(session, layout_from_session(session))


def onnx_greedy_generate(
    session,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> np.ndarray:
    """Greedy decoding of left-padded prompts: the prompt once, then one token per step.

    Returns the new tokens [batch, <= max_new_tokens]; rows that produced eos are padded
    with pad_token_id (as transformers' generate does)."""
    step_ids = np.asarray(input_ids, dtype=np.int64)
    attention_mask = np.asarray(attention_mask, dtype=np.int64)
    batch = step_ids.shape[0]
    decoder = open_decoder(session, batch, step_ids.shape[1] + max_new_tokens)
    finished = np.zeros(batch, dtype=bool)
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    generated = []
    for _ in range(max_new_tokens):
        token = decoder.step(step_ids, attention_mask).argmax(-1).astype(np.int64)
        token = np.where(finished, pad, token)
        generated.append(token)
        if eos_token_id is not None:
            finished |= token == eos_token_id
            if finished.all():
                break
        attention_mask = np.concatenate([attention_mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        step_ids = token[:, None]
    return np.stack(generated, axis=1) if generated else np.zeros((batch, 0), dtype=np.int64)


def onnx_kv_logits(session):
    """LogitsFn over the KV graph (empty past), so the quality gate can score it."""
    if shares_cache_buffer(session):
        return lambda input_ids, attention_mask: torch.from_numpy(
            gqa_logits(session, input_ids.numpy(), attention_mask.numpy())
        )
    layout = layout_from_session(session)

    def run(input_ids, attention_mask):
        feeds = {
            "input_ids": input_ids.numpy(),
            "attention_mask": attention_mask.numpy(),
            **layout.empty(input_ids.shape[0]),
            **layout.logits_switch(),
        }
        return torch.from_numpy(session.run(["logits"], feeds)[0])

    return run


@torch.no_grad()
def check_decoder_parity(model: torch.nn.Module, path: Path, tolerance: float = 1e-3) -> float:
    """Max |onnx - torch| over a left-padded prompt step and two cached steps, against
    torch recomputing the whole sequence; raises OnnxExportError past `tolerance` times
    the largest logit (at least 1).

    Relative, because summation-order noise grows with the logits: on the demo's
    fine-tuned SmolLM2 (logits up to 36) the graph differed by 4.1e-3, and torch's own
    cached decoding differs from its full recompute by 8.7e-4, while a cache the
    exporter misrepresents is off by whole units."""
    session = onnx_session(path)
    layout = layout_from_session(session)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    expected = LogitsOnly(model)(ids, mask).numpy()
    prompt = 6
    if shares_cache_buffer(session):
        decoder = SharedCacheDecoder(session, 2, ids.shape[1])
        pieces = [decoder.step(ids[:, :prompt].numpy(), mask[:, :prompt].numpy(), all_positions=True)]
        for step in range(prompt, ids.shape[1]):
            pieces.append(decoder.step(ids[:, step : step + 1].numpy(), mask[:, : step + 1].numpy())[:, None])
    else:
        pieces = _concat_cache_pieces(session, layout, ids, mask, prompt, path)
    actual = np.concatenate(pieces, axis=1)
    keep = mask.bool().numpy()
    error = float(np.abs(actual - expected)[keep].max())
    scale = max(1.0, float(np.abs(expected[keep]).max()))
    if error > tolerance * scale:
        raise OnnxExportError(
            f"KV-cache graph {path.name} disagrees with torch by {error:.3g} (> {tolerance} x the largest logit, "
            f"{scale:.3g}): the exporter cannot represent this architecture's cache faithfully"
        )
    return error


def _concat_cache_pieces(session, layout: CacheLayout, ids, mask, prompt: int, path: Path) -> list[np.ndarray]:
    feeds = {
        "input_ids": ids[:, :prompt].numpy(),
        "attention_mask": mask[:, :prompt].numpy(),
        **layout.empty(2),
        **layout.logits_switch(),
    }
    names = ["logits", *layout.output_names()]
    pieces = []
    for step in range(prompt, ids.shape[1] + 1):
        logits, *presents = run_unlike_trace(session, names, feeds, path)
        pieces.append(logits)
        if step == ids.shape[1]:
            break
        feeds = {"input_ids": ids[:, step : step + 1].numpy(), "attention_mask": mask[:, : step + 1].numpy()}
        feeds |= dict(zip(layout.input_names(), presents)) | layout.logits_switch()
    return pieces
