"""Did training help? Loss-curve windows, paired differences with bootstrap intervals,
per-record perplexity and the forgetting ratio of an incremental round.

Plain numpy over per-record scores, so the demo's MLflow summary, the learning-outcome
benchmark and the tests share one definition. Differences are absolute (fine-tune minus
base): the relative change of compression_gate is undefined when the base scores 0, which
a base model answering in another style often does on token F1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from deepfeed.core.train.modeling import collate, encode_record


@dataclass(frozen=True)
class LossWindows:
    first: float  # mean training loss of the first `window` steps
    last: float  # mean of the last `window` steps
    window: int

    @property
    def relative_change(self) -> float:
        return self.last / self.first - 1 if self.first else float("nan")

    @property
    def fell(self) -> bool:
        return self.last < self.first

    def as_dict(self, prefix: str = "loss") -> dict[str, float]:
        return {
            f"{prefix}_first{self.window}_mean": self.first,
            f"{prefix}_last{self.window}_mean": self.last,
            f"{prefix}_window_relative_change": self.relative_change,
        }


def loss_windows(losses: Sequence[float], window: int = 10) -> LossWindows:
    """Means of the first and last `window` losses (at most half the run each, so the two
    windows never overlap)."""
    losses = [float(x) for x in losses]
    if len(losses) < 2:
        raise ValueError(f"a loss curve needs at least 2 steps to compare its start and end, got {len(losses)}")
    if window < 1:
        raise ValueError(f"window={window}: must be >= 1")
    k = min(window, len(losses) // 2)
    return LossWindows(first=float(np.mean(losses[:k])), last=float(np.mean(losses[-k:])), window=k)


@dataclass(frozen=True)
class PairedDifference:
    reference: float  # mean score of the reference (e.g. the base model)
    candidate: float
    difference: float  # candidate - reference
    low: float  # 95% paired bootstrap interval of the difference
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_reference": self.reference,
            f"{prefix}_candidate": self.candidate,
            f"{prefix}_difference": self.difference,
            f"{prefix}_difference_ci_low": self.low,
            f"{prefix}_difference_ci_high": self.high,
        }


def paired_difference(
    reference: Sequence[float], candidate: Sequence[float], samples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> PairedDifference:
    """mean(candidate) - mean(reference) over the same records, with a paired percentile
    bootstrap interval (each draw resamples records for both sides at once)."""
    ref, cand = np.asarray(reference, float), np.asarray(candidate, float)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"paired scores need two equally long, non-empty lists; got {ref.shape} and {cand.shape}")
    diff = cand - ref
    mean = float(diff.mean())
    if ref.size < 2 or samples <= 0:
        low = high = mean
    else:
        draws = np.random.default_rng(seed).integers(0, ref.size, size=(samples, ref.size))
        low, high = (float(x) for x in np.quantile(diff[draws].mean(1), [alpha / 2, 1 - alpha / 2]))
    return PairedDifference(float(ref.mean()), float(cand.mean()), mean, low, high, int(ref.size))


@dataclass(frozen=True)
class RecordLosses:
    """Summed answer-token NLL and token count per record (records without a labelled token dropped)."""

    nll: np.ndarray
    tokens: np.ndarray

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.sum() / self.tokens.sum()))


@torch.no_grad()
def record_losses(
    model, tokenizer, records: list[dict[str, Any]], max_length: int = 128, batch_size: int = 16
) -> RecordLosses:
    """Per-record NLL of the answer tokens (or whole texts), as evaluation.perplexity scores
    them, kept per record so two models can be compared on the same records."""
    examples = [encode_record(tokenizer, r, max_length) for r in records]
    examples = [e for e in examples if any(x != -100 for x in e.labels[1:])]
    if not examples:
        raise ValueError("no record has an answer token to score")
    was_training = model.training
    model.eval()
    nll, tokens = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        nll.extend(per_token.sum(1).tolist())
        tokens.extend((labels != -100).sum(1).tolist())
    model.train(was_training)
    return RecordLosses(np.asarray(nll, float), np.asarray(tokens, float))


def perplexity_ratio(
    reference: RecordLosses, candidate: RecordLosses, samples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """ppl(candidate) / ppl(reference) - 1 on the same records, with a paired bootstrap
    interval. On old data after an incremental round this is the forgetting ratio."""
    if reference.nll.shape != candidate.nll.shape or not np.array_equal(reference.tokens, candidate.tokens):
        raise ValueError("perplexity ratio: both models must be scored on the same records and tokens")
    ratio = candidate.perplexity / reference.perplexity - 1
    n = reference.nll.size
    if n < 2 or samples <= 0:
        return ratio, ratio, ratio
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    tokens = reference.tokens[draws].sum(1)
    log_ratio = (candidate.nll[draws].sum(1) - reference.nll[draws].sum(1)) / tokens
    low, high = np.quantile(np.exp(log_ratio) - 1, [alpha / 2, 1 - alpha / 2])
    return ratio, float(low), float(high)
