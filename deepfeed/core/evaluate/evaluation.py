"""Held-out evaluation of one model: perplexity, generated answers and their scores.

Any artifact that maps (input_ids, attention_mask) to logits can be scored for
perplexity and can answer prompts by greedy decoding: a torch model (fp32 or int8) or
an ONNX Runtime session. Torch models generate with their KV cache through `generate`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from deepfeed.core.evaluate.safety import ToxicityScorer, toxicity_summary
from deepfeed.core.evaluate.settings import EvaluationConfig  # noqa: F401 (its settings live in a torch-free module)
from deepfeed.core.evaluate.textmetrics import bleu4_with_ci, chrf_with_ci, label_prf, token_prf, token_prf_corpus
from deepfeed.core.train.modeling import Example, collate, encode_record, prompt_ids

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Why a record is left out of a metric; counted per candidate in the report.
NO_PROMPT = "no prompt (plain-text record): perplexity only"
NO_REFERENCE = "reference missing: no accuracy/BLEU, toxicity still scored"
EMPTY_GENERATION = "generation produced nothing: scored as a wrong answer"
NO_ANSWER_TOKENS = "no answer token to score: left out of perplexity"


def torch_logits(model: torch.nn.Module) -> LogitsFn:
    def run(input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits

    return run


def onnx_logits(session) -> LogitsFn:
    def run(input_ids, attention_mask):
        out = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return torch.from_numpy(out)

    return run


def scoreable(tokenizer, records: list[dict[str, Any]], config: EvaluationConfig) -> tuple[list[Example], int]:
    examples = [encode_record(tokenizer, r, config.max_length) for r in records]
    kept = [e for e in examples if any(x != -100 for x in e.labels[1:])]
    return kept, len(examples) - len(kept)


@torch.no_grad()
def record_nll(
    logits_fn: LogitsFn,
    tokenizer,
    records: list[dict[str, Any]],
    config: EvaluationConfig,
) -> tuple[list[float | None], list[int]]:
    """Summed NLL and scored-token count of each record, in the order of `records`;
    None / 0 for a record with no answer token. Kept per record so that two models can be
    compared on the same records (paired bootstrap of the perplexity change)."""
    examples = [encode_record(tokenizer, r, config.max_length) for r in records]
    # Batches of similar length waste less compute on padding; results go back by index.
    scored = [i for i, e in enumerate(examples) if any(x != -100 for x in e.labels[1:])]
    order = sorted(scored, key=lambda i: len(examples[i].input_ids))
    nll: list[float | None] = [None] * len(records)
    tokens = [0] * len(records)
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        batch = collate([examples[i] for i in index], tokenizer.pad_token_id)
        logits = logits_fn(batch["input_ids"], batch["attention_mask"]).float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(labels.shape)
        for row, i in enumerate(index):
            nll[i] = float(losses[row].sum())
            tokens[i] = int((labels[row] != -100).sum())
    return nll, tokens


def perplexity_from_records(nll: list[float | None], tokens: list[int]) -> dict[str, float]:
    scored = [(n, t) for n, t in zip(nll, tokens) if n is not None]
    if not scored:
        raise ValueError("no evaluation record has any answer token to score")
    total_tokens = sum(t for _, t in scored)
    mean = sum(n for n, _ in scored) / total_tokens
    return {
        "perplexity": math.exp(mean),
        "mean_nll": mean,
        "scored_tokens": total_tokens,
        "perplexity_skipped": len(nll) - len(scored),
    }


def perplexity(
    logits_fn: LogitsFn, tokenizer, records: list[dict[str, Any]], config: EvaluationConfig
) -> dict[str, float]:
    """Token-weighted perplexity of the answer tokens (or whole texts) of `records`."""
    return perplexity_from_records(*record_nll(logits_fn, tokenizer, records, config))


@dataclass
class Generation:
    answers: list[str]
    new_tokens: int
    seconds: float
    # Per answer, the generated ids up to and including EOS (torch generation fills it):
    # drafts for generate_logits_from_draft.
    token_ids: list[list[int]] | None = None


def trim_answer(row: list[int], eos: int | None, pad: int) -> list[int]:
    """The row's tokens up to and including the first EOS, trailing padding dropped."""
    n = 0
    for t in row:
        n += 1
        if t == eos:
            break
    while n and row[n - 1] == pad and pad != eos:
        n -= 1
    return row[:n]


def left_pad(tokenizer, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [prompt_ids(tokenizer, p)[-max_length:] for p in prompts]
    width = max(len(e) for e in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def count_new_tokens(tokens: torch.Tensor, eos: int | None, pad: int) -> int:
    """Generated tokens up to and including the first EOS of each row."""
    return sum(len(trim_answer(row, eos, pad)) for row in tokens.tolist())


def by_length(tokenizer, prompts: list[str], generate: Callable[[list[str]], Generation]) -> Generation:
    """Run `generate` on the prompts sorted by length (less left padding per batch) and
    return the answers in the original order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids(tokenizer, prompts[i])))
    result = generate([prompts[i] for i in order])
    answers = [""] * len(prompts)
    token_ids: list[list[int]] | None = [[] for _ in prompts] if result.token_ids is not None else None
    for position, index in enumerate(order):
        answers[index] = result.answers[position]
        if token_ids is not None:
            token_ids[index] = result.token_ids[position]
    return Generation(answers, result.new_tokens, result.seconds, token_ids)


@torch.no_grad()
def generate_torch(model, tokenizer, prompts: list[str], config: EvaluationConfig) -> Generation:
    """Greedy, batched, left-padded generation with the KV cache."""
    answers: list[str] = []
    token_ids: list[list[int]] = []
    new_tokens, started = 0, time.perf_counter()
    for start in range(0, len(prompts), config.generation_batch_size):
        input_ids, attention = left_pad(
            tokenizer, prompts[start : start + config.generation_batch_size], config.max_length
        )
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        fresh = output[:, input_ids.shape[1] :]
        token_ids.extend(trim_answer(row, tokenizer.eos_token_id, tokenizer.pad_token_id) for row in fresh.tolist())
        new_tokens += count_new_tokens(fresh, tokenizer.eos_token_id, tokenizer.pad_token_id)
        answers.extend(tokenizer.batch_decode(fresh, skip_special_tokens=True))
    return Generation([a.strip() for a in answers], new_tokens, time.perf_counter() - started, token_ids)


def left_pad_ids(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def _greedy_logits(
    logits_fn: LogitsFn, rows: list[list[int]], max_new_tokens: int, eos: int | None, pad: int
) -> list[list[int]]:
    """Greedy new tokens of each row of ids, re-running the whole sequence every step."""
    ids, mask = left_pad_ids(rows, pad)
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    steps = []
    for _ in range(max_new_tokens):
        next_ids = logits_fn(ids, mask)[:, -1].float().argmax(-1)
        next_ids = torch.where(done, torch.full_like(next_ids, pad), next_ids)
        steps.append(next_ids)
        ids = torch.cat([ids, next_ids[:, None]], 1)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        done |= next_ids == eos
        if bool(done.all()):
            break
    if not steps:
        return [[] for _ in rows]
    return [trim_answer(row, eos, pad) for row in torch.stack(steps, 1).tolist()]


def _prompt_rows(tokenizer, prompts: list[str], max_length: int) -> list[list[int]]:
    return [prompt_ids(tokenizer, p)[-max_length:] for p in prompts]


@torch.no_grad()
def generate_logits(logits_fn: LogitsFn, tokenizer, prompts: list[str], config: EvaluationConfig) -> Generation:
    """Greedy decoding through a logits-only artifact (ONNX has no KV cache outputs), so
    every step re-reads the whole sequence: slower than `generate_torch`, same answers."""
    started = time.perf_counter()
    rows = _prompt_rows(tokenizer, prompts, config.max_length)
    token_ids: list[list[int]] = []
    for start in range(0, len(rows), config.generation_batch_size):
        token_ids += _greedy_logits(
            logits_fn,
            rows[start : start + config.generation_batch_size],
            config.max_new_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
    answers = [a.strip() for a in tokenizer.batch_decode(token_ids, skip_special_tokens=True)] if token_ids else []
    return Generation(answers, sum(map(len, token_ids)), time.perf_counter() - started, token_ids)


@torch.no_grad()
def generate_logits_from_draft(
    logits_fn: LogitsFn,
    tokenizer,
    prompts: list[str],
    drafts: list[list[int]],
    config: EvaluationConfig,
    redraft: Redraft | None = None,
) -> Generation:
    """The greedy answers of a logits-only artifact, found by checking draft answers
    (another model's greedy tokens, e.g. the fp32 checkpoint's) in one forward pass.

    The logits over prompt + draft give the artifact's greedy choice after every prefix
    of the draft at once. Up to the first position where its choice differs from the
    draft, its greedy answer *is* the draft; from there on (rows that differ only) it is
    decoded step by step. Same answers as `generate_logits` (up to float rounding of
    near-ties, as between any two batch shapes), at one pass instead of one per token
    when the artifact agrees with the draft, which a faithful compression mostly does.

    `redraft` (optional) continues the rows that differ: given prompt + confirmed prefix
    it drafts the rest with a fast generator (the KV-cache twin of a logits-only graph),
    and the continuation is checked again in one pass, until every row ends. Each round
    confirms at least one token per row, so the answers are still the artifact's own;
    without it those rows are decoded step by step, one full pass per token."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    started = time.perf_counter()
    rows = _prompt_rows(tokenizer, prompts, config.max_length)
    drafts = [list(d[: config.max_new_tokens]) for d in drafts]
    answers_ids: list[list[int] | None] = [None] * len(rows)
    unfinished = _check_drafts(logits_fn, rows, drafts, answers_ids, list(range(len(rows))), eos, pad, config)
    while redraft is not None and unfinished:
        indices = [i for i, _ in unfinished]
        confirmed = {i: prefix for i, prefix in unfinished}
        budget = config.max_new_tokens - min(len(p) for _, p in unfinished)
        more = redraft([rows[i] + confirmed[i] for i in indices], budget)
        extended = {i: (confirmed[i] + list(extra))[: config.max_new_tokens] for i, extra in zip(indices, more)}
        unfinished = _check_drafts(
            logits_fn, rows, extended, answers_ids, indices, eos, pad, config, confirmed=confirmed
        )
    for start in range(0, len(unfinished), config.generation_batch_size):
        group = unfinished[start : start + config.generation_batch_size]
        # Rows continue for the same number of steps; each is cut at its own budget.
        steps = config.max_new_tokens - min(len(p) for _, p in group)
        more = _greedy_logits(logits_fn, [rows[i] + p for i, p in group], steps, eos, pad)
        for (i, prefix), extra in zip(group, more):
            answers_ids[i] = (prefix + extra)[: config.max_new_tokens]
    token_ids = [a or [] for a in answers_ids]
    answers = [a.strip() for a in tokenizer.batch_decode(token_ids, skip_special_tokens=True)] if token_ids else []
    return Generation(answers, sum(map(len, token_ids)), time.perf_counter() - started, token_ids)


# (prompt + confirmed prefix token rows, tokens still allowed) -> a greedy continuation per row
Redraft = Callable[[list[list[int]], int], list[list[int]]]


def _check_drafts(
    logits_fn: LogitsFn,
    rows: list[list[int]],
    drafts,
    answers_ids: list[list[int] | None],
    indices: list[int],
    eos: int | None,
    pad: int,
    config: EvaluationConfig,
    confirmed: dict[int, list[int]] | None = None,
) -> list[tuple[int, list[int]]]:
    """One forward pass per batch over prompt + draft of the rows `indices`: rows whose
    draft the artifact repeats to the end get their answer in `answers_ids`; the others
    come back as (row, confirmed prefix), the prefix ending at the artifact's own choice
    where it first differs. `confirmed[i]` (already checked) is not counted again."""
    unfinished: list[tuple[int, list[int]]] = []
    for start in range(0, len(indices), config.batch_size):
        chunk = indices[start : start + config.batch_size]
        ids, mask = left_pad_ids([rows[i] for i in chunk], pad)
        width = max(len(drafts[i]) for i in chunk)
        # Drafts go right of the prompts; their right padding comes after every position
        # read below, so causal attention never sees it.
        tail = torch.full((len(chunk), width), pad, dtype=torch.long)
        for r, i in enumerate(chunk):
            tail[r, : len(drafts[i])] = torch.tensor(drafts[i], dtype=torch.long)
        full_mask = torch.cat([mask, torch.ones_like(tail)], 1)
        predicted = logits_fn(torch.cat([ids, tail], 1), full_mask)[:, ids.shape[1] - 1 :].float().argmax(-1).tolist()
        for r, i in enumerate(chunk):
            draft, choice = drafts[i], predicted[r]
            # A confirmed prefix stays confirmed (a near-tie that rounds the other way in
            # this batch shape must not undo it): every round then adds at least one token.
            checked = len(confirmed[i]) if confirmed else 0
            k = next((j for j in range(checked, len(draft)) if choice[j] != draft[j]), len(draft))
            prefix = draft
            if k < len(draft):
                prefix = draft[:k] + [choice[k]]
            elif len(draft) < config.max_new_tokens and not (draft and draft[-1] == eos):
                prefix = draft + [choice[len(draft)]]  # a draft cut short: the artifact goes on
            if (prefix and prefix[-1] == eos) or len(prefix) >= config.max_new_tokens:
                answers_ids[i] = prefix
            else:
                unfinished.append((i, prefix))
    return unfinished


def record_label(record: dict[str, Any]) -> str | None:
    meta = record.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            return None
    return str(meta["label"]) if isinstance(meta, dict) and meta.get("label") not in (None, "") else None


@dataclass
class AnswerScores:
    metrics: dict[str, float]
    samples: list[dict[str, Any]]
    exclusions: dict[str, int] = field(default_factory=dict)


def generation_records(records: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    with_prompt = [r for r in records if r.get("kind") == "pair" and (r.get("prompt") or "").strip()]
    exclusions = {NO_PROMPT: len(records) - len(with_prompt)} if len(with_prompt) < len(records) else {}
    return with_prompt[:limit] if limit else with_prompt, exclusions


def score_answers(
    records: list[dict[str, Any]], generation: Generation, config: EvaluationConfig, toxicity: ToxicityScorer
) -> AnswerScores:
    """Accuracy (token and label P/R/F1), BLEU-4 and chrF with intervals, toxicity and
    speed of one candidate's answers to `records` (same order)."""
    answers = generation.answers
    langs = [r.get("lang") for r in records]
    exclusions: dict[str, int] = {}
    referenced = [i for i, r in enumerate(records) if (r.get("response") or "").strip()]
    if len(referenced) < len(records):
        exclusions[NO_REFERENCE] = len(records) - len(referenced)
    empty = sum(1 for a in answers if not a)
    if empty:
        exclusions[EMPTY_GENERATION] = empty
    hyps = [answers[i] for i in referenced]
    refs = [records[i]["response"] for i in referenced]
    ref_langs = [langs[i] for i in referenced]
    metrics: dict[str, float] = {"generated": len(answers), "referenced": len(referenced), "empty_generations": empty}
    metrics |= token_prf_corpus(hyps, refs, ref_langs, config.bootstrap_samples, config.seed)
    metrics |= bleu4_with_ci(hyps, refs, ref_langs, config.bootstrap_samples, config.seed)
    metrics |= chrf_with_ci(hyps, refs, config.bootstrap_samples, config.seed)
    labelled = [(answers[i], record_label(records[i])) for i in range(len(records)) if record_label(records[i])]
    metrics |= label_prf([a for a, _ in labelled], [label for _, label in labelled])
    verdicts = toxicity.score(answers, langs)
    metrics |= toxicity_summary(verdicts)
    metrics |= {
        "generation_seconds": generation.seconds,
        "generated_tokens": generation.new_tokens,
        "tokens_per_second": generation.new_tokens / generation.seconds if generation.seconds else float("nan"),
        "latency_ms_per_answer": 1000 * generation.seconds / len(answers) if answers else float("nan"),
    }
    samples = []
    for record, answer, verdict in zip(records, answers, verdicts):
        reference = record.get("response") or ""
        samples.append(
            {
                "record_id": record.get("record_id"),
                "lang": record.get("lang"),
                "prompt": record["prompt"],
                "reference": reference,
                "answer": answer,
                "token_f1": token_prf(answer, reference, record.get("lang"))[2] if reference.strip() else None,
                "toxic": verdict.toxic,
                "toxicity_score": round(verdict.score, 4),
            }
        )
    return AnswerScores(metrics, samples, exclusions)
