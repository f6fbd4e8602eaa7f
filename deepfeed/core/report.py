"""Scoring every candidate on the same held-out records: the challenger (fp32), each of
its compressed artifacts, and the champion re-scored for a like-for-like gate.

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

from deepfeed.core.compression import ARTIFACTS, CompressionConfig, load_int8_torch, onnx_session
from deepfeed.core.evaluation import (
    NO_ANSWER_TOKENS,
    EvaluationConfig,
    Generation,
    LogitsFn,
    by_length,
    left_pad,
    count_new_tokens,
    generate_logits,
    generate_torch,
    generation_records,
    onnx_logits,
    perplexity,
    score_answers,
    torch_logits,
)
from deepfeed.core.flops import PeakMemory, Stopwatch, flops_per_token, folder_size_mb, onnx_flops_per_token
from deepfeed.core.gate import GateCondition, GateResult, promotion_gate
from deepfeed.core.modeling import load_model, load_tokenizer, prompt_ids
from deepfeed.core.safety import ToxicityScorer
from deepfeed.core.textmetrics import answer_tokens

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class CandidateResult:
    name: str
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    exclusions: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it is absent


@dataclass
class EvaluationOutcome:
    candidates: list[CandidateResult]
    gate: GateResult
    samples: list[dict[str, Any]]
    eval_records: int
    generation_records: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

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
        torch_logits(model), lambda prompts: generate_torch(model, tokenizer, prompts, config),
        (lambda ids: flops_per_token(model, ids)) if count_flops else None,
    )


def _graph_flops(path: Path) -> Callable[[torch.Tensor], dict[str, float]]:
    return lambda ids: onnx_flops_per_token(path, ids.shape[1], ids.shape[0])


def logits_scorable(logits: LogitsFn, tokenizer, config: EvaluationConfig, path: Path | None = None) -> Scorable:
    return Scorable(logits, lambda prompts: generate_logits(logits, tokenizer, prompts, config), _graph_flops(path) if path else None)


def onnx_kv_scorable(session, tokenizer, config: EvaluationConfig, path: Path | None = None) -> Scorable:
    """An ONNX decoder with past key values: greedy generation one token per step."""
    import numpy as np

    from deepfeed.core.onnx_kv import onnx_greedy_generate, onnx_kv_logits

    def generate(prompts: list[str]) -> Generation:
        answers, new_tokens, started = [], 0, time.perf_counter()
        for start in range(0, len(prompts), config.generation_batch_size):
            ids, mask = left_pad(tokenizer, prompts[start:start + config.generation_batch_size], config.max_length)
            fresh = onnx_greedy_generate(session, ids.numpy(), mask.numpy(), config.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
            new_tokens += count_new_tokens(torch.from_numpy(np.asarray(fresh)), tokenizer.eos_token_id, tokenizer.pad_token_id)
            answers.extend(a.strip() for a in tokenizer.batch_decode(fresh, skip_special_tokens=True))
        return Generation(answers, new_tokens, time.perf_counter() - started)

    return Scorable(onnx_kv_logits(session), generate, _graph_flops(path) if path else None)


# The logits-only ONNX graphs compute what their KV-cache twins compute; decoding through
# them recomputes the prefix every step, so by default they are scored without generation.
LOGITS_ONLY = ("onnx_fp32", "onnx_int8")
# Scored by default: the torch int8 model and the int8 ONNX decoder with KV cache (what
# generates on CPU). The logits-only ONNX graphs hold the same int8 weights as their KV
# twins, and the fp32 intermediates are numerically the pruned checkpoint; the
# compression gate already scores all of them for perplexity, and on 2 cores each extra
# candidate costs about a minute.
DEFAULT_ARTIFACTS = ("torch_int8", "onnx_kv_int8")
DESCRIPTIONS = {
    "pruned": "pruned fp32 (torch)", "torch_int8": "pruned + int8 (torch)", "onnx_fp32": "ONNX fp32, logits only",
    "onnx_int8": "ONNX int8, logits only (Triton)", "onnx_kv_fp32": "ONNX fp32 with KV cache", "onnx_kv_int8": "ONNX int8 with KV cache",
}


def compressed_loaders(compressed_dir: Path, tokenizer, config: EvaluationConfig, compression: CompressionConfig) -> dict[str, tuple[str, Callable[[], Scorable], Path]]:
    """name -> (description, loader, file(s) whose size is the artifact size), for the
    artifacts compression.json lists (the default layout when it is missing)."""
    summary = compressed_dir / "compression.json"
    paths = json.loads(summary.read_text()).get("paths", {}) if summary.exists() else {n: p for n, (p, _) in ARTIFACTS.items()}
    loaders: dict[str, Callable[[], Scorable]] = {
        "pruned": lambda: torch_scorable(load_model(compressed_dir / paths["pruned"]).eval(), tokenizer, config),
        "torch_int8": lambda: torch_scorable(load_int8_torch(compressed_dir / paths["pruned"], compressed_dir / paths["torch_int8"], compression), tokenizer, config),
        "onnx_fp32": lambda: logits_scorable(onnx_logits(onnx_session(compressed_dir / paths["onnx_fp32"])), tokenizer, config, compressed_dir / paths["onnx_fp32"]),
        "onnx_int8": lambda: logits_scorable(onnx_logits(onnx_session(compressed_dir / paths["onnx_int8"])), tokenizer, config, compressed_dir / paths["onnx_int8"]),
        "onnx_kv_fp32": lambda: onnx_kv_scorable(onnx_session(compressed_dir / paths["onnx_kv_fp32"]), tokenizer, config, compressed_dir / paths["onnx_kv_fp32"]),
        "onnx_kv_int8": lambda: onnx_kv_scorable(onnx_session(compressed_dir / paths["onnx_kv_int8"]), tokenizer, config, compressed_dir / paths["onnx_kv_int8"]),
    }
    return {name: (DESCRIPTIONS[name], load, compressed_dir / paths[name]) for name, load in loaders.items() if name in paths}


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
                result.metrics |= perplexity(scorable.logits, tokenizer, records, config)
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
        result.metrics["size_mb"] = folder_size_mb(size_path, "*.safetensors") if size_path.is_dir() else folder_size_mb(size_path)
    result.seconds = time.perf_counter() - started
    return result, samples


def evaluate_candidates(
    checkpoint: Path,
    compressed_dir: Path | None,
    champion_checkpoint: Path | None,
    records: list[dict[str, Any]],
    config: EvaluationConfig,
    compression: CompressionConfig | None = None,
    log=print,
    toxicity: ToxicityScorer | None = None,
    generate_compressed: bool = True,
    generate_logits_only: bool = False,
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS,
    compression_passed: bool | None = None,
    compression_detail: str = "",
    champion_scores: dict[str, Any] | None = None,
) -> EvaluationOutcome:
    """Score the challenger, its artifacts and the champion on `records`.

    `champion_scores`: what score_cache.find_scores returned for the champion's version on
    these records and settings; the champion is then not loaded nor asked again."""
    if not records:
        raise ValueError("the held-out evaluation set is empty")
    toxicity = toxicity or ToxicityScorer(threshold=config.toxicity_threshold)
    watch = Stopwatch(log)
    with watch.stage("warm-up (toxicity model, jieba dictionary)"):
        # One-time loads would otherwise be charged to the first candidate's memory and time.
        toxicity.score(["warm up"], ["en"])
        answer_tokens("预热", "zh")
    prompts_for, prompt_exclusions = generation_records(records, config.max_generation_records)
    candidates: list[CandidateResult] = []
    samples: list[dict[str, Any]] = []

    try:
        tokenizer = load_tokenizer(checkpoint)
    except Exception as exc:
        tokenizer = None
        candidates.append(CandidateResult(CHALLENGER, "fine-tuned fp32", error=f"cannot load the tokenizer of {checkpoint}: {type(exc).__name__}: {exc}"))
    if tokenizer is not None:
        result, samples = score_candidate(
            CHALLENGER, "fine-tuned fp32", lambda: torch_scorable(load_model(checkpoint).eval(), tokenizer, config, True),
            checkpoint, tokenizer, records, prompts_for, config, toxicity, watch,
        )
        candidates.append(result)
        if compressed_dir is not None:
            available = compressed_loaders(compressed_dir, tokenizer, config, compression or CompressionConfig())
            for name in artifacts:
                if name not in available:
                    candidates.append(CandidateResult(name, DESCRIPTIONS.get(name, ""), error=f"not built: {name} is missing from {compressed_dir / 'compression.json'}"))
                    continue
                description, load, size_path = available[name]
                generate = generate_compressed and (generate_logits_only or name not in LOGITS_ONLY)
                result, _ = score_candidate(name, description, load, size_path, tokenizer, records, prompts_for, config, toxicity, watch, generate=generate)
                candidates.append(result)
    for c in candidates:
        c.exclusions = {**prompt_exclusions, **c.exclusions}

    champion_metrics = None
    if champion_checkpoint is not None and champion_scores is not None:
        saved = champion_scores["result"]
        result = CandidateResult(CHAMPION, "current champion, scores reused", metrics=saved["metrics"], seconds=0.0, exclusions=saved.get("exclusions", {}))
        result.notes["re-scoring"] = (
            f"skipped: same version, evaluation set and settings as the evaluation of {champion_scores.get('meta', {}).get('evaluated_at', 'an earlier run')}; "
            "its scores (speed and memory measured then) are reused"
        )
        log(f"champion: scores reused ({result.notes['re-scoring']})")
        champion_metrics = result.metrics
        candidates.insert(0, result)
    elif champion_checkpoint is not None:
        try:
            champion_tokenizer = load_tokenizer(champion_checkpoint)
            result, _ = score_candidate(
                CHAMPION, "current champion, re-scored", lambda: torch_scorable(load_model(champion_checkpoint).eval(), champion_tokenizer, config, True),
                champion_checkpoint, champion_tokenizer, records, prompts_for, config, toxicity, watch,
            )
        except Exception as exc:
            result = CandidateResult(CHAMPION, "current champion", error=f"{type(exc).__name__}: {exc}")
        result.exclusions = {**prompt_exclusions, **result.exclusions}
        champion_metrics = result.metrics if result.error is None else None
        candidates.insert(0, result)

    challenger = next(c for c in candidates if c.name == CHALLENGER)
    champion = next((c for c in candidates if c.name == CHAMPION), None)
    if challenger.error:
        gate = GateResult(False, [GateCondition(CHALLENGER, False, f"could not be evaluated: {challenger.error}")])
    elif champion is not None and champion.error:
        # Fail closed: an unreadable champion must not let any challenger through unchecked.
        gate = GateResult(False, [GateCondition(CHAMPION, False, f"could not be re-scored: {champion.error}")])
    else:
        gate = promotion_gate(challenger.metrics, champion_metrics, config.max_relative_drop, compression_passed, compression_detail)
    return EvaluationOutcome(candidates, gate, samples, len(records), len(prompts_for), dict(watch.stages), dict(watch.cpu))
