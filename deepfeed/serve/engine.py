"""Loading a registered model version for serving, and greedy generation with confidence.

The served runtime is the int8 ONNX Runtime file of the version's compressed_model
artifact when one exists (what docs/requirements.md §5 optimizes for serving); otherwise the version's
torch checkpoint. Both report the confidence the drift monitor watches: the mean, over
generated tokens, of the highest next-token probability.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from deepfeed.core.compress.onnx_kv import open_decoder
from deepfeed.core.platform.artifacts import MANIFEST
from deepfeed.core.train.modeling import load_model, load_tokenizer, prompt_ids

RUNTIMES = ("onnx_int8", "torch")


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Generation:
    text: str
    confidence: float
    new_tokens: int


class Generator(Protocol):
    runtime: str

    def generate(self, prompt: str, max_new_tokens: int) -> Generation: ...


def _softmax_max(logits: np.ndarray) -> float:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z)
    return float(p.max() / p.sum())


class TorchGenerator:
    runtime = "torch"

    def __init__(self, checkpoint: Path, max_context: int = 512, tokenizer_path: Path | None = None):
        self.tokenizer = load_tokenizer(tokenizer_path or checkpoint)
        self.model = load_model(checkpoint).eval()
        self.max_context = max_context

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        ids = prompt_ids(self.tokenizer, prompt)[-self.max_context :]
        input_ids = torch.tensor([ids])
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[0, len(ids) :]
        probs = [float(torch.softmax(s[0].float(), -1).max()) for s in out.scores]
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return Generation(text, float(np.mean(probs)) if probs else float("nan"), int(len(new)))


class OnnxGenerator:
    """Greedy decoding with ONNX Runtime over the int8 decoder-with-past graph (the
    prompt once, then one token per step), or over the logits-only graph when the
    version has no KV export (each step then re-reads the whole sequence).

    Not onnx_kv.onnx_greedy_generate: serving needs each step's probabilities for the
    confidence the drift monitor watches, which that function does not return."""

    runtime = "onnx_int8"

    def __init__(self, onnx_file: Path, checkpoint: Path, max_context: int = 512):
        from deepfeed.core.compress.onnx_graph import onnx_session

        self.tokenizer = load_tokenizer(checkpoint)
        self.session = onnx_session(onnx_file)
        self.max_context = max_context
        self.cached = any(i.name.startswith("past_key_values.") for i in self.session.get_inputs())
        self.onnx_file = onnx_file

    def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        ids = prompt_ids(self.tokenizer, prompt)[-self.max_context :]
        start, probs = len(ids), []
        eos = self.tokenizer.eos_token_id
        decoder = open_decoder(self.session, 1, len(ids) + max_new_tokens) if self.cached else None
        for _ in range(max_new_tokens):
            logits = self._next_logits(ids, decoder, first=len(ids) == start)
            token = int(logits.argmax())
            probs.append(_softmax_max(logits))
            ids.append(token)
            if token == eos:
                break
        text = self.tokenizer.decode(ids[start:], skip_special_tokens=True).strip()
        return Generation(text, float(np.mean(probs)) if probs else float("nan"), len(ids) - start)

    def _next_logits(self, ids: list[int], decoder, first: bool) -> np.ndarray:
        if decoder is None:
            window = np.asarray([ids[-self.max_context :]], dtype=np.int64)
            return self.session.run(None, {"input_ids": window, "attention_mask": np.ones_like(window)})[0][0, -1]
        step = np.asarray([ids] if first else [[ids[-1]]], dtype=np.int64)
        return decoder.step(step, np.ones((1, len(ids)), dtype=np.int64))[0]


ONNX_CANDIDATES = ("onnx/decoder_with_past_int8.onnx", "onnx/model_int8.onnx")


def compressed_onnx_for(checkpoint: Path) -> Path | None:
    """The int8 ONNX file of the newest compressed_model built from this checkpoint
    (the KV-cache decoder when it was exported, else the logits-only graph).

    A registered version's source is ``<artifact root>/<asset>/<version>/checkpoint``;
    compressed_model records the artifact version it was built from as ``source_version``.
    """
    checkpoint = Path(checkpoint)
    source_version = checkpoint.parent.name
    folder = checkpoint.parent.parent.parent / "compressed_model"
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.iterdir(), reverse=True):
        manifest = candidate / MANIFEST
        if not manifest.exists():
            continue
        counts = json.loads(manifest.read_text()).get("counts", {})
        if str(counts.get("source_version")) != source_version:
            continue
        for relative in ONNX_CANDIDATES:
            if (candidate / relative).exists():
                return candidate / relative
    return None


def load_generator(checkpoint: str | Path, runtime: str = "onnx_int8") -> Generator:
    """``onnx_int8`` falls back to torch when the version has no compressed ONNX file."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").exists():
        raise ModelLoadError(f"model source {checkpoint} is not a local checkpoint (no config.json)")
    if runtime == "onnx_int8":
        onnx_file = compressed_onnx_for(checkpoint)
        if onnx_file is not None:
            return OnnxGenerator(onnx_file, checkpoint)
    return TorchGenerator(checkpoint)
