"""The compression quality gate: every artifact against the fp32 checkpoint it came from.

The reference is the unpruned fp32 checkpoint, not the pruned one, so what pruning costs
counts against the budget too. Two measurements per artifact, each with the code
evaluation_report uses:

- perplexity on the held-out records (evaluation.perplexity);
- the task metric: SQuAD token F1 of greedy answers to the held-out QA records
  (evaluation.generation_records / score_answers' token_prf), answered by the fp32
  checkpoint and by the artifact on the same records.

Why the task metric is gated on a paired comparison by default: on the demo's 24 answers
one answer changing from right to wrong moves mean F1 by several percent, so a point
estimate against a 3% budget fails on noise. Both sides answer the same prompts, so the
per-record F1 differences are paired; the gate bootstraps records (the same draw for both
sides) into a 95% interval of the relative F1 change and fails an artifact when the whole
interval lies below -budget, i.e. when the drop past the budget is beyond resampling
noise. Greedy answers of a faithful artifact are mostly identical to fp32's, which makes
the interval narrow; a broken one fails clearly. The price: on few answers a true drop of
a few percent can go undetected, so raise the number of answers for a stricter gate, or
set task_gate="point" to gate on the point estimate.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfeed.core.compress.compression import TASK_GATES, CompressionConfig
from deepfeed.core.compress.onnx_graph import onnx_session
from deepfeed.core.compress.onnx_kv import onnx_greedy_generate
from deepfeed.core.evaluate.evaluation import (
    EvaluationConfig,
    by_length,
    generate_logits_from_draft,
    generate_torch,
    generation_records,
    left_pad_ids,
    perplexity,
    torch_logits,
    trim_answer,
)
from deepfeed.core.evaluate.paired import paired_relative_change
from deepfeed.core.evaluate.scoring import LOGITS_ONLY, compressed_loaders
from deepfeed.core.evaluate.textmetrics import token_prf, token_prf_corpus
from deepfeed.core.train.modeling import load_model, load_tokenizer

# Artifacts with a KV cache decode their greedy answers token by token. A logits-only
# graph has no cache, so its answers are found by checking draft answers in one forward
# pass and decoding on (re-running the whole sequence per token) only the rows where it
# chooses otherwise (evaluation.generate_logits_from_draft): the answers are the graph's
# own either way, the draft only decides how much decoding is left. "twin" (default)
# drafts from the answers of its KV-cache twin, the graph exported from the same weights
# (fp32 answers when the twin is missing); "reference" drafts from the fp32 checkpoint's
# answers, which a pruned model rarely repeats (0 of 6 on SmolLM2 at keep 85%), leaving
# nearly every row to the slow path: see docs/training-tiers.md for the measured gate.
# "redraft" (default) also drafts from the twin, and where the graph chooses otherwise it
# asks the twin (which decodes with its cache) for the rest of the answer from the graph's
# own prefix and checks that again in one pass, instead of decoding the row without a
# cache: same answers, a few passes per row instead of one per token.
ANSWER_MODES = ("redraft", "twin", "reference")
TWINS = {"onnx_fp32": "onnx_kv_fp32", "onnx_int8": "onnx_kv_int8"}


@dataclass
class ArtifactQuality:
    name: str
    size_mb: float | None = None
    size_ratio: float | None = None  # fp32 checkpoint size / artifact size
    perplexity: float | None = None
    relative_change: float | None = None  # (artifact - fp32) / fp32; positive = worse
    perplexity_passed: bool = False
    token_f1: float | None = None
    token_f1_ci_low: float | None = None
    token_f1_ci_high: float | None = None
    f1_relative_change: float | None = None  # (artifact - fp32) / fp32 mean F1; negative = worse
    f1_change_ci_low: float | None = None  # paired bootstrap, 95%
    f1_change_ci_high: float | None = None
    identical_answers: int | None = None
    task_passed: bool | None = None  # None: task metric not gated
    task_note: str = ""
    passed: bool = False
    error: str | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # load, perplexity, answers


@dataclass
class GateReport:
    reference_perplexity: float
    max_relative_increase: float
    scored_tokens: int
    artifacts: list[ArtifactQuality] = field(default_factory=list)
    not_built: dict[str, str] = field(default_factory=dict)
    task_gate: str = "paired"
    max_f1_drop: float = 0.03
    answered: int = 0
    reference_token_f1: float | None = None
    reference_token_f1_ci: tuple[float, float] | None = None
    reference_seconds: float = 0.0
    keep_fraction: float | None = None  # pruning of the artifacts, from compression.json

    @property
    def passed(self) -> bool:
        return bool(self.artifacts) and all(a.passed for a in self.artifacts)

    def failures(self) -> list[str]:
        lines = []
        for a in self.artifacts:
            if a.error:
                lines.append(f"{a.name}: not scored ({a.error})")
            elif not a.passed:
                reasons = []
                if not a.perplexity_passed:
                    reasons.append(
                        f"perplexity {a.perplexity:.4g} vs fp32 {self.reference_perplexity:.4g} "
                        f"({a.relative_change:+.2%}, limit +{self.max_relative_increase:.0%})"
                    )
                if a.task_passed is False:
                    reasons.append(self._f1_failure(a))
                lines.append(f"{a.name}: " + "; ".join(reasons))
        if not self.artifacts:
            lines.append("no artifact was built, nothing passed the gate")
        return lines

    def _f1_failure(self, a: ArtifactQuality) -> str:
        if a.f1_relative_change is None:
            return f"token F1 not measured ({a.task_note})"
        text = (
            f"token F1 {a.token_f1:.4g} vs fp32 {self.reference_token_f1:.4g} on {self.answered} answers "
            f"({a.f1_relative_change:+.2%}, paired 95% CI {a.f1_change_ci_low:+.2%} to {a.f1_change_ci_high:+.2%}, "
            f"limit -{self.max_f1_drop:.0%}"
        )
        return text + (", whole interval below the limit)" if self.task_gate == "paired" else ")")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def markdown(self) -> str:
        fmt = lambda v, f: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)  # noqa: E731
        if self.task_gate == "off":
            task = "task metric not gated (task_gate=off)."
        elif self.reference_token_f1 is None:
            task = "task metric: no held-out QA record to answer."
        else:
            low, high = self.reference_token_f1_ci or (None, None)
            rule = (
                "fails when the whole paired 95% interval of the F1 change lies below the limit"
                if self.task_gate == "paired"
                else "fails when the F1 change is below the limit"
            )
            task = (
                f"token F1 of greedy answers {self.reference_token_f1:.4f} "
                f"(95% CI {fmt(low, '.3f')}–{fmt(high, '.3f')}) on {self.answered} held-out QA records; "
                f"budget -{self.max_f1_drop:.0%}, {rule}."
            )
        lines = [
            f"Reference: fp32 checkpoint, perplexity {self.reference_perplexity:.4f} "
            f"on {self.scored_tokens} held-out tokens (budget +{self.max_relative_increase:.0%}); {task}",
            "",
            "| artifact | size MB | fp32 / size | perplexity | vs fp32 | token F1 (95% CI) "
            "| F1 vs fp32 (paired 95% CI) | same answers | passed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for a in self.artifacts:
            verdict = "✅" if a.passed else f"❌ {a.error or ''}"
            f1 = (
                "–"
                if a.token_f1 is None
                else f"{a.token_f1:.3f} ({fmt(a.token_f1_ci_low, '.3f')}–{fmt(a.token_f1_ci_high, '.3f')})"
            )
            change = (
                "–"
                if a.f1_relative_change is None
                else (
                    f"{a.f1_relative_change:+.2%} "
                    f"({fmt(a.f1_change_ci_low, '+.1%')} to {fmt(a.f1_change_ci_high, '+.1%')})"
                )
            )
            if a.task_note:
                change += f" {a.task_note}"
            same = "–" if a.identical_answers is None else f"{a.identical_answers}/{self.answered}"
            lines.append(
                f"| {a.name} | {fmt(a.size_mb, '.2f')} | {fmt(a.size_ratio, '.2f')}× | {fmt(a.perplexity, '.4f')} | "
                f"{fmt(a.relative_change, '+.2%')} | {f1} | {change} | {same} | {verdict} |"
            )
        for name, reason in self.not_built.items():
            lines.append(f"| {name} | – | – | – | – | – | – | – | not built: {reason} |")
        pruning = (
            f"Pruning: the artifacts keep {self.keep_fraction:.0%} of the decoder's Linear weights "
            "(global L1); the `pruned` row is what pruning alone costs."
            if self.keep_fraction is not None
            else "Pruning: keep fraction not recorded in compression.json."
        )
        lines += ["", pruning]
        return "\n".join(lines)


def _per_record_f1(answers: list[str], records: list[dict[str, Any]]) -> np.ndarray:
    return np.array([token_prf(a, r["response"], r.get("lang"))[2] for a, r in zip(answers, records)])


def _judge_task(
    result: ArtifactQuality,
    reference_f1: np.ndarray,
    answers: list[str],
    reference_answers: list[str],
    records: list[dict[str, Any]],
    task_gate: str,
    max_f1_drop: float,
    config: EvaluationConfig,
) -> None:
    f1 = _per_record_f1(answers, records)
    corpus = token_prf_corpus(
        answers,
        [r["response"] for r in records],
        [r.get("lang") for r in records],
        config.bootstrap_samples,
        config.seed,
    )
    result.token_f1, result.token_f1_ci_low, result.token_f1_ci_high = (
        corpus["token_f1"],
        corpus.get("token_f1_ci_low"),
        corpus.get("token_f1_ci_high"),
    )
    result.identical_answers = sum(a == b for a, b in zip(answers, reference_answers))
    change, low, high = paired_relative_change(reference_f1, f1, config.bootstrap_samples, config.seed)
    result.f1_relative_change, result.f1_change_ci_low, result.f1_change_ci_high = change, low, high
    if change is None:
        result.task_passed, result.task_note = True, "(fp32 scores F1 0: no drop to measure)"
    elif task_gate == "point":
        result.task_passed = change >= -max_f1_drop
    else:
        result.task_passed = high >= -max_f1_drop


def gate_compressed_artifacts(
    checkpoint: Path,
    compressed_dir: Path,
    records: list[dict[str, Any]],
    max_relative_increase: float = 0.03,
    eval_config: EvaluationConfig | None = None,
    log=None,
    max_f1_drop: float = 0.03,
    task_gate: str = "paired",
    max_answers: int = 24,
    answers_by: str = "redraft",
) -> GateReport:
    """Score the fp32 checkpoint and every built artifact listed in compression.json:
    perplexity on `records`, and token F1 of greedy answers to the first `max_answers`
    QA records among them (0 = all)."""
    if task_gate not in TASK_GATES:
        raise ValueError(f"task_gate must be one of {TASK_GATES}, not {task_gate!r}")
    if answers_by not in ANSWER_MODES:
        raise ValueError(f"answers_by must be one of {ANSWER_MODES}, not {answers_by!r}")
    if not records:
        raise ValueError("the held-out set for the compression gate is empty")
    summary = json.loads((compressed_dir / "compression.json").read_text())
    eval_config = eval_config or EvaluationConfig()
    tokenizer = load_tokenizer(checkpoint)
    started = time.perf_counter()
    fp32 = load_model(checkpoint).eval()
    reference = perplexity(torch_logits(fp32), tokenizer, records, eval_config)
    report = GateReport(
        reference["perplexity"],
        max_relative_increase,
        reference["scored_tokens"],
        task_gate=task_gate,
        max_f1_drop=max_f1_drop,
    )
    report.not_built = {k: v for k, v in summary.get("errors", {}).items() if k != "triton"}
    report.keep_fraction = summary.get("config", {}).get("keep_fraction")

    # Only records with a reference answer can score F1; the same list for every side.
    qa, _ = generation_records([r for r in records if (r.get("response") or "").strip()], max_answers)
    prompts = [r["prompt"] for r in qa]
    reference_answers: list[str] = []
    reference_tokens: list[list[int]] = []
    reference_f1 = np.zeros(0)
    if task_gate != "off" and qa:
        generation = by_length(
            tokenizer, prompts, lambda p, model=fp32: generate_torch(model, tokenizer, p, eval_config)
        )
        reference_answers, reference_tokens = generation.answers, generation.token_ids
        reference_f1 = _per_record_f1(reference_answers, qa)
        corpus = token_prf_corpus(
            reference_answers,
            [r["response"] for r in qa],
            [r.get("lang") for r in qa],
            eval_config.bootstrap_samples,
            eval_config.seed,
        )
        report.answered = len(qa)
        report.reference_token_f1 = corpus["token_f1"]
        report.reference_token_f1_ci = (corpus.get("token_f1_ci_low"), corpus.get("token_f1_ci_high"))
    report.reference_seconds = round(time.perf_counter() - started, 2)
    del fp32

    fp32_mb = summary.get("sizes_mb", {}).get("fp32_checkpoint")
    loaders = compressed_loaders(compressed_dir, tokenizer, eval_config, CompressionConfig())
    # KV-cache twins first, so their answers exist when the logits-only graphs need drafts.
    order = sorted(loaders, key=lambda n: n in LOGITS_ONLY)
    decoded: dict[str, list[list[int]]] = {}
    for name in order:
        _, load, path = loaders[name]
        size = summary.get("sizes_mb", {}).get(name if name != "pruned" else "pruned_fp32")
        result = ArtifactQuality(name, size_mb=size, size_ratio=round(fp32_mb / size, 3) if fp32_mb and size else None)
        started = time.perf_counter()
        stage = _Stages(result.stage_seconds)
        try:
            with stage("load"):
                scorable = load()
            with stage("perplexity"):
                value = perplexity(scorable.logits, tokenizer, records, eval_config)["perplexity"]
            result.perplexity = value
            result.relative_change = (value - report.reference_perplexity) / report.reference_perplexity
            result.perplexity_passed = result.relative_change <= max_relative_increase
            if report.answered:
                with stage("answers"):
                    if name in LOGITS_ONLY:
                        twin = decoded.get(TWINS[name]) if answers_by != "reference" else None
                        redraft = None
                        if twin and answers_by == "redraft" and TWINS[name] in loaders:
                            redraft = kv_redraft(onnx_session(loaders[TWINS[name]][2]), tokenizer, eval_config)
                        answers = generate_logits_from_draft(
                            scorable.logits, tokenizer, prompts, twin or reference_tokens, eval_config, redraft
                        ).answers
                    else:
                        generation = by_length(tokenizer, prompts, scorable.generate)
                        answers = generation.answers
                        decoded[name] = generation.token_ids or [_draft_ids(tokenizer, a) for a in answers]
                _judge_task(result, reference_f1, answers, reference_answers, qa, task_gate, max_f1_drop, eval_config)
            elif task_gate != "off":
                # Fails closed: an unmeasured task metric is not a passed one (task_gate="off" waives it on purpose).
                result.task_passed = False
                result.task_note = "(no held-out QA record to answer; set task_gate='off' to waive)"
            result.passed = result.perplexity_passed and result.task_passed is not False
        except Exception as exc:  # a broken artifact fails the gate with its reason
            result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = round(time.perf_counter() - started, 2)
        report.artifacts.append(result)
        if log is not None:
            log(
                f"{name}: {'pass' if result.passed else 'FAIL'}; perplexity {_num(result.perplexity, '.3f')} "
                f"({_num(result.relative_change, '+.2%')}), token F1 {_num(result.token_f1, '.3f')} "
                f"({_num(result.f1_relative_change, '+.1%')}, paired 95% CI {_num(result.f1_change_ci_low, '+.1%')}.."
                f"{_num(result.f1_change_ci_high, '+.1%')}) in {result.seconds}s {result.error or ''}".rstrip()
            )
    report.artifacts.sort(key=lambda a: list(loaders).index(a.name))  # report in build order
    return report


class _Stages:
    """`with stage("name"):` adds the block's wall time to seconds["name"]."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)


def kv_redraft(session, tokenizer, config: EvaluationConfig):
    """evaluation.Redraft over an ONNX graph with a KV cache: greedy continuations of
    token rows (left-padded together), each up to and including its eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def redraft(rows: list[list[int]], budget: int) -> list[list[int]]:
        drafts: list[list[int]] = []
        for start in range(0, len(rows), config.generation_batch_size):
            ids, mask = left_pad_ids(rows[start : start + config.generation_batch_size], pad)
            fresh = onnx_greedy_generate(session, ids.numpy(), mask.numpy(), budget, eos, pad)
            drafts += [trim_answer(row, eos, pad) for row in fresh.tolist()]
        return drafts

    return redraft


def _draft_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of a decoded answer, ended by eos, for a generator that returns text only;
    a draft that tokenizes differently only leaves more rows to decode."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
