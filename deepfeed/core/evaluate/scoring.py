"""Scoring every candidate on the same held-out records: the challenger (fp32), each of
its compressed artifacts, the champion re-scored for a like-for-like gate, and the base
model the challenger was fine-tuned from ("did feeding help?"). Every difference between
two of them gets a paired bootstrap interval (paired.py); the gate reads those (gate.py).

A candidate that cannot be loaded or scored is reported with its error; the others are
still scored and the report is still written. Rendering lives in report_render.py.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deepfeed.core.compress.compression import ARTIFACTS, CompressionConfig, load_int8_torch
from deepfeed.core.compress.onnx_graph import onnx_session
from deepfeed.core.compress.onnx_kv import onnx_greedy_generate, onnx_kv_logits
from deepfeed.core.evaluate.candidates import (
    BASE,
    CHALLENGER,
    CHAMPION,
    DEFAULT_ARTIFACTS,
    DESCRIPTIONS,
    LOGITS_ONLY,
)
from deepfeed.core.evaluate.evaluation import (
    NO_ANSWER_TOKENS,
    EvaluationConfig,
    Generation,
    LogitsFn,
    by_length,
    count_new_tokens,
    generate_logits,
    generate_torch,
    generation_records,
    left_pad,
    onnx_logits,
    perplexity_from_records,
    record_nll,
    score_answers,
    torch_logits,
)
from deepfeed.core.evaluate.gate import GateCondition, GateResult, promotion_gate
from deepfeed.core.evaluate.paired import PairedChange, compare
from deepfeed.core.evaluate.safety import ToxicityScorer
from deepfeed.core.evaluate.textmetrics import answer_tokens
from deepfeed.core.train.flops import PeakMemory, Stopwatch, flops_per_token, onnx_flops_per_token, weights_size_mb
from deepfeed.core.train.modeling import load_model, load_tokenizer, prompt_ids


@dataclass
class CandidateResult:
    name: str
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    exclusions: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it is absent
    # What paired comparisons need: "nll"/"tokens" per evaluation record, "answers"/"toxic"
    # per record answered by generation (the same records, in the same order, for all).
    per_record: dict[str, list] = field(default_factory=dict)


@dataclass
class EvaluationOutcome:
    candidates: list[CandidateResult]
    gate: GateResult
    samples: list[dict[str, Any]]
    eval_records: int
    generation_records: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # "challenger vs base" -> metric -> paired change of the first named against the second
    comparisons: dict[str, dict[str, PairedChange]] = field(default_factory=dict)

    def comparison(self, candidate: str, reference: str) -> dict[str, PairedChange] | None:
        return self.comparisons.get(f"{candidate} vs {reference}")

    def by_name(self, name: str) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == name), None)


@dataclass
class Scorable:
    """What scoring needs from a loaded artifact."""

    logits: LogitsFn
    generate: Callable[[list[str]], Generation]
    # prompt ids [1, seq] -> prefill/decode FLOPs per token: FlopCounterMode for torch
    # models (int8 included), the graph's matrix products for ONNX files.
    flops: Callable[[torch.Tensor], dict[str, float]] | None = None


def torch_scorable(model, tokenizer, config: EvaluationConfig, count_flops: bool = True) -> Scorable:
    return Scorable(
        torch_logits(model),
        lambda prompts: generate_torch(model, tokenizer, prompts, config),
        (lambda ids: flops_per_token(model, ids)) if count_flops else None,
    )


def _graph_flops(path: Path) -> Callable[[torch.Tensor], dict[str, float]]:
    return lambda ids: onnx_flops_per_token(path, ids.shape[1], ids.shape[0])


def logits_scorable(logits: LogitsFn, tokenizer, config: EvaluationConfig, path: Path | None = None) -> Scorable:
    return Scorable(
        logits,
        lambda prompts: generate_logits(logits, tokenizer, prompts, config),
        _graph_flops(path) if path else None,
    )


def onnx_kv_scorable(session, tokenizer, config: EvaluationConfig, path: Path | None = None) -> Scorable:
    """An ONNX decoder with past key values: greedy generation one token per step."""
    import numpy as np

    def generate(prompts: list[str]) -> Generation:
        answers, new_tokens, started = [], 0, time.perf_counter()
        for start in range(0, len(prompts), config.generation_batch_size):
            ids, mask = left_pad(tokenizer, prompts[start : start + config.generation_batch_size], config.max_length)
            fresh = onnx_greedy_generate(
                session,
                ids.numpy(),
                mask.numpy(),
                config.max_new_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
            )
            new_tokens += count_new_tokens(
                torch.from_numpy(np.asarray(fresh)), tokenizer.eos_token_id, tokenizer.pad_token_id
            )
            answers.extend(a.strip() for a in tokenizer.batch_decode(fresh, skip_special_tokens=True))
        return Generation(answers, new_tokens, time.perf_counter() - started)

    return Scorable(onnx_kv_logits(session), generate, _graph_flops(path) if path else None)


def compressed_loaders(
    compressed_dir: Path, tokenizer, config: EvaluationConfig, compression: CompressionConfig
) -> dict[str, tuple[str, Callable[[], Scorable], Path]]:
    """name -> (description, loader, file(s) whose size is the artifact size), for the
    artifacts compression.json lists (the default layout when it is missing)."""
    summary = compressed_dir / "compression.json"
    paths = (
        json.loads(summary.read_text()).get("paths", {})
        if summary.exists()
        else {n: p for n, (p, _) in ARTIFACTS.items()}
    )
    loaders: dict[str, Callable[[], Scorable]] = {
        "pruned": lambda: torch_scorable(load_model(compressed_dir / paths["pruned"]).eval(), tokenizer, config),
        "torch_int8": lambda: torch_scorable(
            load_int8_torch(compressed_dir / paths["pruned"], compressed_dir / paths["torch_int8"], compression),
            tokenizer,
            config,
        ),
        "onnx_fp32": lambda: logits_scorable(
            onnx_logits(onnx_session(compressed_dir / paths["onnx_fp32"])),
            tokenizer,
            config,
            compressed_dir / paths["onnx_fp32"],
        ),
        "onnx_int8": lambda: logits_scorable(
            onnx_logits(onnx_session(compressed_dir / paths["onnx_int8"])),
            tokenizer,
            config,
            compressed_dir / paths["onnx_int8"],
        ),
        "onnx_kv_fp32": lambda: onnx_kv_scorable(
            onnx_session(compressed_dir / paths["onnx_kv_fp32"]),
            tokenizer,
            config,
            compressed_dir / paths["onnx_kv_fp32"],
        ),
        "onnx_kv_int8": lambda: onnx_kv_scorable(
            onnx_session(compressed_dir / paths["onnx_kv_int8"]),
            tokenizer,
            config,
            compressed_dir / paths["onnx_kv_int8"],
        ),
    }
    return {
        name: (DESCRIPTIONS[name], load, compressed_dir / paths[name])
        for name, load in loaders.items()
        if name in paths
    }


def _flops_context(tokenizer, records: list[dict[str, Any]], max_length: int):
    prompt = next((r["prompt"] for r in records if r.get("prompt")), "Hello")
    return torch.tensor([prompt_ids(tokenizer, prompt)[-max_length:]])


def score_candidate(
    name: str,
    description: str,
    load: Callable[[], Scorable],
    size_path: Path | None,
    tokenizer,
    records: list[dict[str, Any]],
    prompts_for: list[dict[str, Any]],
    config: EvaluationConfig,
    toxicity: ToxicityScorer,
    watch: Stopwatch,
    generate: bool = True,
) -> tuple[CandidateResult, list[dict[str, Any]]]:
    """One candidate, all dimensions; the first failure is recorded and the rest skipped."""
    result = CandidateResult(name, description)
    samples: list[dict[str, Any]] = []
    # HF models hold reference cycles: collect the previous candidate before measuring
    # this one's memory from a clean baseline.
    gc.collect()
    started = time.perf_counter()
    try:
        with PeakMemory() as memory:
            with watch.stage(f"{name}: load"):
                scorable = load()
            with watch.stage(f"{name}: perplexity"):
                nll, tokens = record_nll(scorable.logits, tokenizer, records, config)
                result.metrics |= perplexity_from_records(nll, tokens)
                result.per_record |= {"nll": nll, "tokens": tokens}
            if result.metrics.get("perplexity_skipped"):
                result.exclusions[NO_ANSWER_TOKENS] = int(result.metrics["perplexity_skipped"])
            if generate and prompts_for:
                with watch.stage(f"{name}: generate {len(prompts_for)}"):
                    generation = by_length(tokenizer, [r["prompt"] for r in prompts_for], scorable.generate)
                with watch.stage(f"{name}: score answers"):
                    scores = score_answers(prompts_for, generation, config, toxicity)
                result.metrics |= scores.metrics
                result.exclusions |= scores.exclusions
                samples = scores.samples
                result.per_record |= {"answers": list(generation.answers), "toxic": [bool(s["toxic"]) for s in samples]}
            if scorable.flops is None:
                result.notes["FLOPs/token"] = "no counter for this kind of artifact"
            else:
                with watch.stage(f"{name}: flops"):
                    try:
                        result.metrics |= scorable.flops(_flops_context(tokenizer, records, config.max_length))
                    except Exception as exc:  # a FLOPs count must not cost the candidate its other metrics
                        result.notes["FLOPs/token"] = f"not counted: {type(exc).__name__}: {exc}"
        result.metrics["peak_memory_mb"] = memory.peak_mb
    except Exception as exc:  # a broken artifact is reported in the table, not fatal to the report
        result.error = f"{type(exc).__name__}: {exc}"
    if size_path is not None and size_path.exists():
        result.metrics["size_mb"] = weights_size_mb(size_path)
    result.seconds = time.perf_counter() - started
    return result, samples


def reused_candidate(name: str, description: str, cached: dict[str, Any], log=print) -> CandidateResult:
    """A candidate rebuilt from score_cache.find_scores' entry (not loaded, not asked again)."""
    saved = cached["result"]
    result = CandidateResult(
        name,
        f"{description}, scores reused",
        metrics=saved["metrics"],
        seconds=0.0,
        exclusions=saved.get("exclusions", {}),
        per_record=saved.get("per_record", {}),
    )
    when = cached.get("meta", {}).get("evaluated_at", "an earlier run")
    result.notes["re-scoring"] = (
        f"skipped: same model, evaluation set and settings as the evaluation of {when}; "
        "its scores (speed and memory measured then) are reused"
    )
    log(f"{name}: scores reused ({result.notes['re-scoring']})")
    return result


def _reference_candidate(
    name: str,
    description: str,
    checkpoint: Path,
    cached: dict[str, Any] | None,
    records,
    prompts_for,
    prompt_exclusions,
    config,
    toxicity,
    watch,
    log,
    count_flops: bool,
) -> CandidateResult:
    """The champion or the base model: reused from the score cache, else loaded and scored
    with its own tokenizer. A failure is recorded on the candidate, never raised."""
    if cached is not None:
        return reused_candidate(name, description, cached, log)
    try:
        tokenizer = load_tokenizer(checkpoint)
        result, _ = score_candidate(
            name,
            f"{description}, scored",
            lambda: torch_scorable(load_model(checkpoint).eval(), tokenizer, config, count_flops),
            checkpoint,
            tokenizer,
            records,
            prompts_for,
            config,
            toxicity,
            watch,
        )
        if not count_flops:
            result.notes["FLOPs/token"] = "not counted: same architecture as the challenger"
    except Exception as exc:
        result = CandidateResult(name, description, error=f"{type(exc).__name__}: {exc}")
    result.exclusions = {**prompt_exclusions, **result.exclusions}
    return result


def paired_comparisons(
    candidates: list[CandidateResult],
    answered: list[dict[str, Any]],
    config: EvaluationConfig,
) -> dict[str, dict[str, PairedChange]]:
    """challenger vs base, challenger vs champion, champion vs base and every artifact vs
    the challenger it was made from: whatever both sides have per-record scores for."""
    by_name = {c.name: c for c in candidates if c.error is None and c.per_record}
    pairs = [(CHALLENGER, BASE), (CHALLENGER, CHAMPION), (CHAMPION, BASE)]
    pairs += [(c.name, CHALLENGER) for c in candidates if c.name not in (CHALLENGER, CHAMPION, BASE)]
    out = {}
    for candidate, reference in pairs:
        if candidate in by_name and reference in by_name:
            changes = compare(
                by_name[reference].per_record,
                by_name[candidate].per_record,
                answered,
                config.bootstrap_samples,
                config.seed,
            )
            if changes:
                out[f"{candidate} vs {reference}"] = changes
    return out


@dataclass
class EvaluationRequest:
    """One evaluation: the challenger (and its compressed artifacts) scored on `records`
    against the champion and the base model, and how the promotion gate is asked.

    `champion_scores` / `base_scores`: what score_cache.find_scores returned for that model
    on these records and settings; it is then not loaded nor asked again. `base_error`:
    why there is no base checkpoint to score (reported; it fails a first-champion gate)."""

    checkpoint: Path  # the challenger's fp32 checkpoint
    records: list[dict[str, Any]]
    config: EvaluationConfig
    compressed_dir: Path | None = None
    champion_checkpoint: Path | None = None
    compression: CompressionConfig | None = None
    log: Callable[[str], None] = print
    toxicity: ToxicityScorer | None = None
    generate_compressed: bool = True
    generate_logits_only: bool = False  # also generate with graphs that have no KV cache (slow)
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS
    compression_passed: bool | None = None
    compression_detail: str = ""
    champion_scores: dict[str, Any] | None = None
    base_checkpoint: Path | None = None
    base_scores: dict[str, Any] | None = None
    base_error: str = ""
    compression_required: bool = True


def run_evaluation(request: EvaluationRequest) -> EvaluationOutcome:
    """Score the challenger, its artifacts, the champion and the base model on the
    request's records, compare them pairwise and gate the challenger."""
    records, config, log = request.records, request.config, request.log
    if not records:
        raise ValueError("the held-out evaluation set is empty")
    toxicity = request.toxicity or ToxicityScorer(threshold=config.toxicity_threshold)
    watch = Stopwatch(log)
    with watch.stage("warm-up (toxicity model, jieba dictionary)"):
        # One-time loads would otherwise be charged to the first candidate's memory and time.
        toxicity.score(["warm up"], ["en"])
        answer_tokens("预热", "zh")
    prompts_for, prompt_exclusions = generation_records(records, config.max_generation_records)
    candidates: list[CandidateResult] = []
    samples: list[dict[str, Any]] = []

    try:
        tokenizer = load_tokenizer(request.checkpoint)
    except Exception as exc:
        tokenizer = None
        candidates.append(
            CandidateResult(
                CHALLENGER,
                "fine-tuned fp32",
                error=f"cannot load the tokenizer of {request.checkpoint}: {type(exc).__name__}: {exc}",
            )
        )
    if tokenizer is not None:
        result, samples = score_candidate(
            CHALLENGER,
            "fine-tuned fp32",
            lambda: torch_scorable(load_model(request.checkpoint).eval(), tokenizer, config, True),
            request.checkpoint,
            tokenizer,
            records,
            prompts_for,
            config,
            toxicity,
            watch,
        )
        candidates.append(result)
        if request.compressed_dir is not None:
            available = compressed_loaders(
                request.compressed_dir, tokenizer, config, request.compression or CompressionConfig()
            )
            for name in request.artifacts:
                if name not in available:
                    candidates.append(
                        CandidateResult(
                            name,
                            DESCRIPTIONS.get(name, ""),
                            error=f"not built: {name} is missing from {request.compressed_dir / 'compression.json'}",
                        )
                    )
                    continue
                description, load, size_path = available[name]
                generate = request.generate_compressed and (request.generate_logits_only or name not in LOGITS_ONLY)
                result, _ = score_candidate(
                    name,
                    description,
                    load,
                    size_path,
                    tokenizer,
                    records,
                    prompts_for,
                    config,
                    toxicity,
                    watch,
                    generate=generate,
                )
                candidates.append(result)
    for c in candidates:
        c.exclusions = {**prompt_exclusions, **c.exclusions}

    # Shown left of the challenger: where it started from, then what serves today.
    shared = (records, prompts_for, prompt_exclusions, config, toxicity, watch, log)
    references = []
    if request.base_checkpoint is not None or request.base_scores is not None:
        references.append(
            _reference_candidate(
                BASE,
                "base model (before fine-tuning)",
                request.base_checkpoint or Path("-"),
                request.base_scores,
                *shared,
                count_flops=False,
            )
        )
    else:
        references.append(
            CandidateResult(
                BASE, "base model (before fine-tuning)", error=request.base_error or "no base checkpoint given"
            )
        )
    if request.champion_checkpoint is not None:
        references.append(
            _reference_candidate(
                CHAMPION,
                "current champion",
                request.champion_checkpoint,
                request.champion_scores,
                *shared,
                count_flops=True,
            )
        )
    candidates[:0] = references

    outcome = EvaluationOutcome(candidates, GateResult(False), samples, len(records), len(prompts_for))
    with watch.stage("paired bootstrap comparisons"):
        outcome.comparisons = paired_comparisons(candidates, prompts_for, config)
    outcome.timings, outcome.cpu_seconds = dict(watch.stages), dict(watch.cpu)

    outcome.gate = gate_challenger(outcome, request)
    return outcome


def gate_challenger(outcome: EvaluationOutcome, request: EvaluationRequest) -> GateResult:
    """The promotion gate on the scored candidates; fails closed when the challenger, the
    champion or (with no champion) the base model could not be scored."""
    challenger = outcome.by_name(CHALLENGER)
    champion, base = outcome.by_name(CHAMPION), outcome.by_name(BASE)
    if challenger.error:
        return GateResult(False, [GateCondition(CHALLENGER, False, f"could not be evaluated: {challenger.error}")])
    if champion is not None and champion.error:
        # Fail closed: an unreadable champion must not let any challenger through unchecked.
        return GateResult(False, [GateCondition(CHAMPION, False, f"could not be re-scored: {champion.error}")])
    if champion is None and base.error:
        why = f"no champion, and the base model could not be scored ({base.error}): the first champion must beat it"
        return GateResult(False, [GateCondition(BASE, False, why)], BASE)
    return promotion_gate(
        challenger.metrics,
        champion.metrics if champion else None,
        request.config.max_relative_drop,
        request.compression_passed,
        request.compression_detail,
        champion_changes=outcome.comparison(CHALLENGER, CHAMPION),
        base=None if base.error else base.metrics,
        base_changes=outcome.comparison(CHALLENGER, BASE),
        compression_required=request.compression_required,
    )
