"""The evaluation report: every candidate scored on the same held-out set, and the gate."""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepfeed.core.compression import CompressionConfig, load_int8_torch, onnx_session
from deepfeed.core.evaluation import (
    EvaluationConfig,
    GateResult,
    evaluate_generation,
    onnx_logits,
    perplexity,
    promotion_gate,
    torch_logits,
)
from deepfeed.core.modeling import load_model, load_tokenizer
from deepfeed.core.plots import bar_plot


@dataclass
class CandidateResult:
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class EvaluationOutcome:
    candidates: list[CandidateResult]
    gate: GateResult
    samples: list[dict[str, str]]
    eval_records: int

    def by_name(self, name: str) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == name), None)


def _score_torch(name: str, model, tokenizer, records, config: EvaluationConfig, generate: bool):
    started = time.perf_counter()
    metrics = perplexity(torch_logits(model), tokenizer, records, config)
    samples: list = []
    if generate:
        generation, samples = evaluate_generation(model, tokenizer, records, config)
        metrics.update(generation)
    return CandidateResult(name, metrics, seconds=time.perf_counter() - started), samples


def evaluate_candidates(
    checkpoint: Path,
    compressed_dir: Path | None,
    champion_checkpoint: Path | None,
    records: list[dict[str, Any]],
    config: EvaluationConfig,
    compression: CompressionConfig | None = None,
    log=print,
) -> EvaluationOutcome:
    """Challenger (fp32) with generation, its compressed artifacts by perplexity, and the
    champion re-scored on the same records so the comparison is like for like."""
    if not records:
        raise ValueError("the held-out evaluation set is empty")
    tokenizer = load_tokenizer(checkpoint)
    candidates: list[CandidateResult] = []
    challenger_model = load_model(checkpoint).eval()
    result, samples = _score_torch("challenger", challenger_model, tokenizer, records, config, generate=True)
    candidates.append(result)
    log(f"challenger: {result.metrics}")

    if compressed_dir is not None:
        compression = compression or CompressionConfig()
        loaders = {
            "torch_int8": lambda: torch_logits(load_int8_torch(compressed_dir / "pruned", compressed_dir / "torch_int8", compression)),
            "onnx_int8": lambda: onnx_logits(onnx_session(compressed_dir / "onnx" / "model_int8.onnx")),
            "onnx_fp32": lambda: onnx_logits(onnx_session(compressed_dir / "onnx" / "model.onnx")),
        }
        for name, load in loaders.items():
            started = time.perf_counter()
            try:
                metrics = perplexity(load(), tokenizer, records, config)
                candidates.append(CandidateResult(name, metrics, seconds=time.perf_counter() - started))
            except Exception as exc:  # a missing or broken artifact is reported, not fatal
                candidates.append(CandidateResult(name, error=f"{type(exc).__name__}: {exc}"))
            log(f"{name}: {candidates[-1].metrics or candidates[-1].error}")

    champion_metrics = None
    if champion_checkpoint is not None:
        try:
            champion_model = load_model(champion_checkpoint).eval()
            champion_tokenizer = load_tokenizer(champion_checkpoint)
            result, _ = _score_torch("champion", champion_model, champion_tokenizer, records, config, generate=True)
            champion_metrics = result.metrics
        except Exception as exc:
            result = CandidateResult("champion", error=f"{type(exc).__name__}: {exc}")
        candidates.append(result)
        log(f"champion: {result.metrics or result.error}")
    gate = promotion_gate(candidates[0].metrics, champion_metrics, config.max_relative_drop)
    return EvaluationOutcome(candidates, gate, samples, len(records))


COLUMNS = ("perplexity", "bleu4", "scored_tokens", "generated", "seconds")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _row(candidate: CandidateResult) -> dict[str, Any]:
    return {**candidate.metrics, "seconds": candidate.seconds}


def render_markdown(outcome: EvaluationOutcome, lineage: dict[str, str], plot_markdown: str = "") -> str:
    verdict = "PROMOTE" if outcome.gate.passed else "KEEP CHAMPION"
    lines = [
        f"# Evaluation report — {verdict}",
        "",
        f"Held-out records: {outcome.eval_records}",
        "",
        "| candidate | " + " | ".join(COLUMNS) + " | error |",
        "|---|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for c in outcome.candidates:
        row = _row(c)
        lines.append(f"| {c.name} | " + " | ".join(_fmt(row.get(k)) for k in COLUMNS) + f" | {c.error or ''} |")
    lines += ["", "## Promotion gate", ""]
    lines += [f"- {'✅' if outcome.gate.passed else '❌'} {reason}" for reason in outcome.gate.reasons]
    if plot_markdown:
        lines += ["", plot_markdown]
    lines += ["", "## Lineage", ""] + [f"- **{k}**: `{v}`" for k, v in lineage.items()]
    lines += ["", "## Sample answers", "", "| prompt | reference | answer |", "|---|---|---|"]
    for s in outcome.samples[:8]:
        cells = [s[k].replace("|", "\\|").replace("\n", " ")[:160] for k in ("prompt", "reference", "answer")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_html(outcome: EvaluationOutcome, lineage: dict[str, str], plot_file: str | None) -> str:
    colour = "#1a7f37" if outcome.gate.passed else "#cf222e"
    rows = "".join(
        "<tr><td>" + html.escape(c.name) + "</td>" + "".join(f"<td>{_fmt(_row(c).get(k))}</td>" for k in COLUMNS) + f"<td>{html.escape(c.error or '')}</td></tr>"
        for c in outcome.candidates
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in outcome.gate.reasons)
    lineage_html = "".join(f"<li><b>{html.escape(k)}</b>: <code>{html.escape(v)}</code></li>" for k, v in lineage.items())
    samples = "".join(
        "<tr>" + "".join(f"<td>{html.escape(s[k])}</td>" for k in ("prompt", "reference", "answer")) + "</tr>" for s in outcome.samples[:20]
    )
    image = f'<img src="{html.escape(plot_file)}" alt="metrics">' if plot_file else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>deepfeed evaluation</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}.verdict{{color:{colour}}}</style></head>
<body><h1 class="verdict">{'Promote challenger' if outcome.gate.passed else 'Keep champion'}</h1>
<p>Held-out records: {outcome.eval_records}</p>
<table><tr><th>candidate</th>{''.join(f'<th>{c}</th>' for c in COLUMNS)}<th>error</th></tr>{rows}</table>
<h2>Promotion gate</h2><ul>{reasons}</ul>{image}<h2>Lineage</h2><ul>{lineage_html}</ul>
<h2>Sample answers</h2><table><tr><th>prompt</th><th>reference</th><th>answer</th></tr>{samples}</table></body></html>
"""


def write_report(folder: Path, outcome: EvaluationOutcome, lineage: dict[str, str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ppl = {c.name: c.metrics["perplexity"] for c in outcome.candidates if "perplexity" in c.metrics}
    plot = bar_plot(folder / "perplexity.png", ppl, "Held-out perplexity (lower is better)", "perplexity") if ppl else None
    (folder / "report.html").write_text(render_html(outcome, lineage, plot.name if plot else None), encoding="utf-8")
    (folder / "metrics.json").write_text(
        json.dumps({"candidates": [asdict(c) for c in outcome.candidates], "gate": asdict(outcome.gate), "eval_records": outcome.eval_records}, indent=2, default=str)
    )
    (folder / "samples.json").write_text(json.dumps(outcome.samples, ensure_ascii=False, indent=2))
    files = {"html": folder / "report.html", "metrics": folder / "metrics.json", "samples": folder / "samples.json"}
    if plot:
        files["plot"] = plot
    return files
