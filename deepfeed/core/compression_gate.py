"""The compression quality gate: every artifact against the fp32 checkpoint it came from.

The reference is the unpruned fp32 checkpoint, not the pruned one, so what pruning costs
counts against the budget too. Perplexity is scored on the same held-out records with the
same code (evaluation.perplexity) for every artifact.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from deepfeed.core.evaluation import EvaluationConfig, LogitsFn, onnx_logits, perplexity, torch_logits

# Artifacts that produce logits, and how to load each one as a LogitsFn. The Triton model
# is a byte copy of onnx_int8 and is covered by it.
def _loaders(checkpoint: Path, folder: Path, paths: dict[str, str]) -> dict[str, Callable[[], LogitsFn]]:
    from deepfeed.core.compression import load_int8_torch, onnx_session
    from deepfeed.core.modeling import load_model
    from deepfeed.core.onnx_kv import onnx_kv_logits

    loaders = {
        "pruned": lambda: torch_logits(load_model(folder / paths["pruned"]).eval()),
        "torch_int8": lambda: torch_logits(load_int8_torch(folder / paths["pruned"], folder / paths["torch_int8"])),
        "onnx_fp32": lambda: onnx_logits(onnx_session(folder / paths["onnx_fp32"])),
        "onnx_int8": lambda: onnx_logits(onnx_session(folder / paths["onnx_int8"])),
        "onnx_kv_fp32": lambda: onnx_kv_logits(onnx_session(folder / paths["onnx_kv_fp32"])),
        "onnx_kv_int8": lambda: onnx_kv_logits(onnx_session(folder / paths["onnx_kv_int8"])),
    }
    return {name: load for name, load in loaders.items() if name in paths}


@dataclass
class ArtifactQuality:
    name: str
    size_mb: float | None = None
    size_ratio: float | None = None  # fp32 checkpoint size / artifact size
    perplexity: float | None = None
    relative_change: float | None = None  # (artifact - fp32) / fp32; positive = worse
    passed: bool = False
    error: str | None = None
    seconds: float = 0.0


@dataclass
class GateReport:
    reference_perplexity: float
    max_relative_increase: float
    scored_tokens: int
    artifacts: list[ArtifactQuality] = field(default_factory=list)
    not_built: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.artifacts) and all(a.passed for a in self.artifacts)

    def failures(self) -> list[str]:
        lines = []
        for a in self.artifacts:
            if a.error:
                lines.append(f"{a.name}: not scored ({a.error})")
            elif not a.passed:
                lines.append(
                    f"{a.name}: perplexity {a.perplexity:.4g} vs fp32 {self.reference_perplexity:.4g} "
                    f"({a.relative_change:+.2%}, limit +{self.max_relative_increase:.0%})"
                )
        if not self.artifacts:
            lines.append("no artifact was built, nothing passed the gate")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def markdown(self) -> str:
        lines = [
            f"Reference: fp32 checkpoint, perplexity {self.reference_perplexity:.4f} on {self.scored_tokens} held-out tokens; "
            f"budget +{self.max_relative_increase:.0%}.",
            "",
            "| artifact | size MB | fp32 / size | perplexity | vs fp32 | passed |",
            "|---|---:|---:|---:|---:|---|",
        ]
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        for a in self.artifacts:
            verdict = "✅" if a.passed else f"❌ {a.error or ''}"
            lines.append(
                f"| {a.name} | {fmt(a.size_mb, '.2f')} | {fmt(a.size_ratio, '.2f')}× | {fmt(a.perplexity, '.4f')} | "
                f"{fmt(a.relative_change, '+.2%')} | {verdict} |"
            )
        for name, reason in self.not_built.items():
            lines.append(f"| {name} | – | – | – | – | not built: {reason} |")
        return "\n".join(lines)


def gate_compressed_artifacts(
    checkpoint: Path,
    compressed_dir: Path,
    records: list[dict[str, Any]],
    max_relative_increase: float = 0.03,
    eval_config: EvaluationConfig | None = None,
    log=None,
) -> GateReport:
    """Score the fp32 checkpoint and every built artifact listed in compression.json."""
    from deepfeed.core.modeling import load_model, load_tokenizer

    if not records:
        raise ValueError("the held-out set for the compression gate is empty")
    summary = json.loads((compressed_dir / "compression.json").read_text())
    eval_config = eval_config or EvaluationConfig()
    tokenizer = load_tokenizer(checkpoint)
    reference = perplexity(torch_logits(load_model(checkpoint).eval()), tokenizer, records, eval_config)
    report = GateReport(reference["perplexity"], max_relative_increase, reference["scored_tokens"])
    report.not_built = {k: v for k, v in summary.get("errors", {}).items() if k != "triton"}
    fp32_mb = summary.get("sizes_mb", {}).get("fp32_checkpoint")
    for name, load in _loaders(checkpoint, compressed_dir, summary["paths"]).items():
        size = summary["sizes_mb"].get(name if name != "pruned" else "pruned_fp32")
        result = ArtifactQuality(name, size_mb=size, size_ratio=round(fp32_mb / size, 3) if fp32_mb and size else None)
        started = time.perf_counter()
        try:
            value = perplexity(load(), tokenizer, records, eval_config)["perplexity"]
            result.perplexity = value
            result.relative_change = (value - report.reference_perplexity) / report.reference_perplexity
            result.passed = result.relative_change <= max_relative_increase
        except Exception as exc:  # a broken artifact fails the gate with its reason
            result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = round(time.perf_counter() - started, 2)
        report.artifacts.append(result)
        if log is not None:
            log(f"{name}: perplexity {result.perplexity} ({result.relative_change}) {result.error or ''}")
    return report
