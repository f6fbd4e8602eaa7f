"""Held-out evaluation: perplexity of answers, BLEU-4 of generated answers, the gate.

Any artifact that maps (input_ids, attention_mask) to logits can be scored for
perplexity: a torch model (fp32 or int8) or an ONNX Runtime session.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from deepfeed.core.modeling import Example, collate, encode_record, prompt_ids

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvaluationConfig:
    max_length: int = 128
    batch_size: int = 16
    max_new_tokens: int = 32
    max_generation_records: int = 64
    max_relative_drop: float = 0.03


def torch_logits(model: torch.nn.Module) -> LogitsFn:
    def run(input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits

    return run


def onnx_logits(session) -> LogitsFn:
    def run(input_ids, attention_mask):
        out = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return torch.from_numpy(out)

    return run


@torch.no_grad()
def perplexity(logits_fn: LogitsFn, tokenizer, records: list[dict[str, Any]], config: EvaluationConfig) -> dict[str, float]:
    """Token-weighted perplexity of the answer tokens (or whole texts) of `records`."""
    examples: list[Example] = [encode_record(tokenizer, r, config.max_length) for r in records]
    examples = [e for e in examples if sum(1 for x in e.labels if x != -100) > 0]
    if not examples:
        raise ValueError("no evaluation record has any answer token to score")
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(examples), config.batch_size):
        batch = collate(examples[start:start + config.batch_size], tokenizer.pad_token_id)
        logits = logits_fn(batch["input_ids"], batch["attention_mask"]).float()
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = batch["labels"][:, 1:].reshape(-1)
        nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((shift_labels != -100).sum())
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "mean_nll": mean, "scored_tokens": total_tokens}


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], config: EvaluationConfig) -> list[str]:
    """Greedy, batched, left-padded generation."""
    answers: list[str] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), config.batch_size):
        encoded = [prompt_ids(tokenizer, p)[-config.max_length:] for p in prompts[start:start + config.batch_size]]
        width = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers.extend(tokenizer.batch_decode(output[:, width:], skip_special_tokens=True))
    return [a.strip() for a in answers]


def bleu4(hypotheses: list[str], references: list[str], langs: list[str | None]) -> dict[str, float]:
    """Corpus BLEU-4 per language (sacrebleu's zh tokenizer for Chinese), and overall
    as the hypothesis-count-weighted mean."""
    import sacrebleu

    scores: dict[str, float] = {}
    weighted, count = 0.0, 0
    for lang in sorted({l or "other" for l in langs}):
        idx = [i for i, l in enumerate(langs) if (l or "other") == lang]
        tokenize = "zh" if lang == "zh" else "13a"
        score = sacrebleu.corpus_bleu([hypotheses[i] for i in idx], [[references[i] for i in idx]], tokenize=tokenize)
        scores[f"bleu4_{lang}"] = float(score.score)
        weighted += score.score * len(idx)
        count += len(idx)
    scores["bleu4"] = weighted / count if count else 0.0
    return scores


def evaluate_generation(model, tokenizer, records: list[dict[str, Any]], config: EvaluationConfig) -> tuple[dict[str, float], list[dict[str, str]]]:
    pairs = [r for r in records if r.get("kind") == "pair"][: config.max_generation_records]
    if not pairs:
        return {"bleu4": float("nan"), "generated": 0}, []
    started = time.perf_counter()
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in pairs], config)
    seconds = time.perf_counter() - started
    metrics = bleu4(answers, [r["response"] for r in pairs], [r.get("lang") for r in pairs])
    metrics["generated"] = len(pairs)
    metrics["empty_generations"] = sum(1 for a in answers if not a)
    metrics["generation_seconds"] = seconds
    samples = [{"prompt": r["prompt"], "reference": r["response"], "answer": a} for r, a in zip(pairs, answers)]
    return metrics, samples


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]
    deltas: dict[str, float]


# Direction of each key metric: +1 higher is better, -1 lower is better.
KEY_METRICS = {"perplexity": -1, "bleu4": +1}


def promotion_gate(challenger: dict[str, float], champion: dict[str, float] | None, max_relative_drop: float) -> GateResult:
    """The challenger passes when no key metric is worse than the champion's by more than
    `max_relative_drop` (relative). With no champion there is nothing to lose against."""
    if not champion:
        return GateResult(True, ["no champion yet: the first model that evaluates becomes champion"], {})
    reasons, deltas, passed = [], {}, True
    for name, direction in KEY_METRICS.items():
        new, old = challenger.get(name), champion.get(name)
        if new is None or old is None or not np.isfinite(new) or not np.isfinite(old):
            reasons.append(f"{name}: not measured on both models; not gated")
            continue
        if old == 0:
            relative = 0.0 if new == old else direction * math.copysign(math.inf, new - old)
        else:
            relative = direction * (new - old) / abs(old)
        deltas[name] = relative
        if relative < -max_relative_drop:
            passed = False
            reasons.append(f"{name}: {new:.4g} vs champion {old:.4g} is {-relative:.1%} worse (limit {max_relative_drop:.0%})")
        else:
            reasons.append(f"{name}: {new:.4g} vs champion {old:.4g} ({relative:+.1%}, within {max_relative_drop:.0%})")
    return GateResult(passed, reasons, deltas)
