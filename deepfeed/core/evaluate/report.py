"""The evaluation report as people read it: Markdown for the Dagster UI, a standalone
HTML file (plots embedded, so it can be mailed or opened from MLflow), and the plots."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deepfeed.core.evaluate.gate import KEY_METRICS, PRIMARY_METRIC, SAFETY_METRIC, interval_fails  # noqa: E402
from deepfeed.core.evaluate.paired import PairedChange, format_change  # noqa: E402
from deepfeed.core.evaluate.scoring import BASE, CHALLENGER, CHAMPION, EvaluationOutcome  # noqa: E402

# (metric, label, direction (+1 higher is better), format); gated metrics get colours.
HEADLINE = [
    ("token_f1", "Token F1 (SQuAD)", +1, "{:.3f}"),
    ("token_precision", "Token precision", +1, "{:.3f}"),
    ("token_recall", "Token recall", +1, "{:.3f}"),
    ("label_f1_macro", "Label F1 (macro)", +1, "{:.3f}"),
    ("bleu4", "BLEU-4", +1, "{:.2f}"),
    ("chrf", "chrF", +1, "{:.2f}"),
    ("perplexity", "Perplexity", -1, "{:.3f}"),
    (SAFETY_METRIC, "Toxicity pass rate", +1, "{:.1%}"),
    ("prefill_flops_per_token", "Prefill FLOPs/token", -1, "{:.3g}"),
    ("decode_flops_per_token", "Decode FLOPs/token", -1, "{:.3g}"),
    ("latency_ms_per_answer", "Latency ms/answer (batched)", -1, "{:.1f}"),
    ("tokens_per_second", "Tokens/s", +1, "{:.1f}"),
    ("peak_memory_mb", "Peak memory MB", -1, "{:.1f}"),
    ("size_mb", "Artifact size MB", -1, "{:.1f}"),
]
GATED = set(KEY_METRICS) | {SAFETY_METRIC}
PASS, FAIL, NEUTRAL = "#1a7f37", "#cf222e", "#57606a"
GATE_RULE = (
    "Rule: a key metric fails when the whole paired 95% interval of its relative change lies below the limit; "
    "before the first champion, token F1 must also be significantly above the base model's (interval of the "
    "difference above zero); the toxicity pass rate must not fall; a metric or verdict that is missing fails. "
    "Why: docs/evaluation-gates.md."
)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    if not _finite(value):
        return "–"
    text = fmt.format(value)
    if _finite(metrics.get(f"{key}_ci_low")):
        text += f" [{fmt.format(metrics[f'{key}_ci_low'])}, {fmt.format(metrics[f'{key}_ci_high'])}]"
    return text


def delta(
    metrics: dict,
    baseline: dict | None,
    key: str,
    limit: float,
    change: PairedChange | None = None,
) -> tuple[str, str] | None:
    """('+1.2%', colour) of `metrics` against `baseline`. Gated metrics are coloured by the
    gate's rule on the paired interval (`change`); without one they get no colour."""
    if not baseline or not (_finite(metrics.get(key)) and _finite(baseline.get(key))):
        return None
    new, old = metrics[key], baseline[key]
    shown = (new - old) / abs(old) if old else 0.0
    if key == SAFETY_METRIC:
        colour = FAIL if new < old else PASS
    elif key in GATED and change is not None:
        colour = FAIL if interval_fails(change, limit) else PASS
    else:
        colour = NEUTRAL
    return (f"{shown:+.1%}", colour)


def baseline_for(outcome: EvaluationOutcome, name: str) -> tuple[dict | None, str]:
    """The challenger is compared with the champion (with the base model while there is no
    champion), the champion with the base model, compressed artifacts with the challenger
    they were made from (their precision loss is what matters)."""
    champion, challenger, base = outcome.by_name(CHAMPION), outcome.by_name(CHALLENGER), outcome.by_name(BASE)
    usable = lambda c: c is not None and not c.error  # noqa: E731
    if name == BASE:
        return None, ""
    if name == CHAMPION:
        return (base.metrics, BASE) if usable(base) else (None, "")
    if name == CHALLENGER:
        if champion is not None:
            return (champion.metrics, CHAMPION) if usable(champion) else (None, "")
        return (base.metrics, BASE) if usable(base) else (None, "")
    return (challenger.metrics, CHALLENGER) if usable(challenger) else (None, "")


def headline_rows(outcome: EvaluationOutcome, limit: float) -> list[list[tuple[str, str | None]]]:
    """Rows of (text, colour) cells: metric, then each candidate."""
    rows = []
    for key, label, _direction, fmt in HEADLINE:
        if not any(_finite(c.metrics.get(key)) for c in outcome.candidates):
            continue
        row: list[tuple[str, str | None]] = [(label + (" ⚑" if key in GATED else ""), None)]
        for c in outcome.candidates:
            baseline, against = baseline_for(outcome, c.name)
            change = (outcome.comparison(c.name, against) or {}).get(key) if against else None
            d = delta(c.metrics, baseline, key, limit, change)
            text = _value(c.metrics, key, fmt)
            row.append((f"{text} ({d[0]})" if d else text, d[1] if d else None))
        rows.append(row)
    return rows


def _mark(colour: str | None) -> str:
    return {PASS: " ✅", FAIL: " ❌"}.get(colour or "", "")


def _exclusion_rows(outcome: EvaluationOutcome) -> list[tuple[str, str, int]]:
    return [(c.name, reason, n) for c in outcome.candidates for reason, n in c.exclusions.items() if n]


LABELS = {key: (label, fmt) for key, label, _, fmt in HEADLINE}


def feeding_headline(outcome: EvaluationOutcome) -> str:
    """ "Did feeding help?" in one line: the challenger against the base model on token F1
    (the primary metric), with the paired 95% interval of the difference."""
    base, challenger = outcome.by_name(BASE), outcome.by_name(CHALLENGER)
    if base is None or base.error:
        why = base.error if base else "not a candidate"
        return f"Did feeding help? Not measured: the base model was not scored ({why})."
    if challenger is None or challenger.error:
        return "Did feeding help? Not measured: the challenger could not be evaluated."
    change = (outcome.comparison(CHALLENGER, BASE) or {}).get(PRIMARY_METRIC)
    if change is None:
        return (
            "Did feeding help? Not measured: token F1 needs answers from both models to held-out records "
            "with a reference."
        )
    text = f"token F1 {format_change(change, '{:.3f}')}"
    if change.significant_gain:
        return f"Feeding helped: {text}."
    if change.significant_loss:
        return f"Feeding hurt: {text}."
    return f"Not shown that feeding helped (the interval includes zero): {text}."


def comparison_rows(outcome: EvaluationOutcome, limit: float) -> list[tuple[str, str, str, str | None]]:
    """(comparison, metric, paired change text, colour) for every paired comparison."""
    rows = []
    for pair, changes in outcome.comparisons.items():
        for key, change in changes.items():
            label, fmt = LABELS.get(key, (key, "{:.3g}"))
            if key == SAFETY_METRIC:
                colour = FAIL if change.candidate < change.reference else PASS
            elif key in KEY_METRICS:
                colour = FAIL if interval_fails(change, limit) else PASS
            else:
                colour = NEUTRAL
            if key == PRIMARY_METRIC and pair.endswith(f"vs {BASE}"):
                colour = PASS if change.significant_gain else FAIL if change.significant_loss else NEUTRAL
            rows.append((pair, label, format_change(change, fmt), colour))
    return rows


def comparison_metrics(outcome: EvaluationOutcome) -> dict[str, float]:
    """MLflow metrics of every paired comparison: eval_<candidate>_vs_<reference>_<metric>_diff
    with _diff_ci_low/_diff_ci_high (and the relative change, signed negative = worse)."""
    out = {}
    for pair, changes in outcome.comparisons.items():
        prefix = "eval_" + pair.replace(" vs ", "_vs_")
        for key, c in changes.items():
            values = {
                "diff": c.difference,
                "diff_ci_low": c.difference_low,
                "diff_ci_high": c.difference_high,
                "rel": c.relative,
                "rel_ci_low": c.relative_low,
                "rel_ci_high": c.relative_high,
            }
            out |= {f"{prefix}_{key}_{name}": float(v) for name, v in values.items() if _finite(v)}
    return out


def render_markdown(outcome: EvaluationOutcome, lineage: dict[str, str], plots: dict[str, str], limit: float) -> str:
    """`plots` maps a title to a Markdown image reference (inline data or a file name)."""
    verdict = "PROMOTE the challenger" if outcome.gate.passed else "KEEP the champion (challenger stays challenger)"
    names = [c.name for c in outcome.candidates]
    lines = [
        f"# Evaluation report: {verdict}",
        "",
        f"**{feeding_headline(outcome)}**",
        "",
        f"Held-out records: {outcome.eval_records}; answered by generation: {outcome.generation_records}.",
        "",
    ]
    lines += ["## Promotion gate", "", f"Gated against the {outcome.gate.reference}. " + GATE_RULE, ""]
    lines += [f"- {'✅' if c.passed else '❌'} **{c.name}**: {c.detail}" for c in outcome.gate.conditions]
    lines += [
        "",
        "## Headline",
        "",
        "Δ: challenger vs champion (vs base before the first champion), champion vs base; "
        "compressed artifacts vs challenger. ⚑ gated metric; ✅/❌ within/over the gate (paired interval rule).",
        "",
    ]
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row in headline_rows(outcome, limit):
        lines.append("| " + " | ".join(text + _mark(colour) for text, colour in row) + " |")
    paired = comparison_rows(outcome, limit)
    if paired:
        lines += [
            "",
            "## Paired differences (95% bootstrap intervals, same records for both sides)",
            "",
            "| comparison | metric | reference → candidate, difference (CI; relative) |",
            "|---|---|---|",
        ]
        lines += [f"| {pair} | {label} | {text}{_mark(colour)} |" for pair, label, text, colour in paired]
    errors = [(c.name, c.error) for c in outcome.candidates if c.error]
    errors += [
        (f"{c.name} ({metric})", why) for c in outcome.candidates if not c.error for metric, why in c.notes.items()
    ]
    if errors:
        lines += ["", "## Not measured, or reused", ""] + [f"- **{n}**: {e}" for n, e in errors]
    exclusions = _exclusion_rows(outcome)
    if exclusions:
        lines += ["", "## Records left out of a metric", "", "| candidate | reason | records |", "|---|---|---:|"]
        lines += [f"| {n} | {r} | {k} |" for n, r, k in exclusions]
    for title, image in plots.items():
        lines += ["", f"### {title}", "", image]
    lines += ["", "## Time per stage", "", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {outcome.cpu_seconds.get(k, math.nan):.1f} |" for k, v in outcome.timings.items()]
    lines += ["", "## Data version and lineage", ""] + [f"- **{k}**: `{v}`" for k, v in lineage.items()]
    lines += [
        "",
        "## Sample answers (challenger)",
        "",
        "| prompt | reference | answer | token F1 |",
        "|---|---|---|---:|",
    ]
    for s in outcome.samples[:8]:
        cells = [
            str(s.get(k) or "").replace("|", "\\|").replace("\n", " ")[:160] for k in ("prompt", "reference", "answer")
        ]
        f1 = s.get("token_f1")
        lines.append("| " + " | ".join(cells) + f" | {'–' if f1 is None else f'{f1:.2f}'} |")
    return "\n".join(lines) + "\n"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render_html(outcome: EvaluationOutcome, lineage: dict[str, str], plot_files: dict[str, Path], limit: float) -> str:
    passed = outcome.gate.passed
    e = html.escape
    head = "".join(f"<th>{e(c.name)}<br><small>{e(c.description)}</small></th>" for c in outcome.candidates)
    body = ""
    for row in headline_rows(outcome, limit):
        cells = [f"<th>{e(row[0][0])}</th>"] + [
            f'<td style="color:{colour or "inherit"}">{e(text)}</td>' for text, colour in row[1:]
        ]
        body += "<tr>" + "".join(cells) + "</tr>"
    gate = "".join(
        f'<li class="{"ok" if c.passed else "bad"}">{"✔" if c.passed else "✘"} <b>{e(c.name)}</b>: {e(c.detail)}</li>'
        for c in outcome.gate.conditions
    )
    errors = "".join(f"<li><b>{e(c.name)}</b>: {e(c.error)}</li>" for c in outcome.candidates if c.error)
    errors += "".join(
        f"<li><b>{e(c.name)} ({e(m)})</b>: {e(why)}</li>"
        for c in outcome.candidates
        if not c.error
        for m, why in c.notes.items()
    )
    exclusions = "".join(f"<tr><td>{e(n)}</td><td>{e(r)}</td><td>{k}</td></tr>" for n, r, k in _exclusion_rows(outcome))
    plots = "".join(
        f'<figure><img src="{_data_uri(p)}" alt="{e(t)}"><figcaption>{e(t)}</figcaption></figure>'
        for t, p in plot_files.items()
    )
    timings = "".join(
        f"<tr><td>{e(k)}</td><td>{v:.1f}</td><td>{outcome.cpu_seconds.get(k, math.nan):.1f}</td></tr>"
        for k, v in outcome.timings.items()
    )
    lineage_html = "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in lineage.items())
    samples = "".join(
        "<tr>"
        + "".join(f"<td>{e(str(s.get(k) or ''))}</td>" for k in ("prompt", "reference", "answer"))
        + f"<td>{'–' if s.get('token_f1') is None else format(s['token_f1'], '.2f')}</td></tr>"
        for s in outcome.samples[:20]
    )
    verdict = "Promote the challenger" if passed else "Keep the champion"
    paired = "".join(
        f'<tr><td>{e(p)}</td><td>{e(label)}</td><td style="color:{colour or "inherit"}">{e(text)}</td></tr>'
        for p, label, text, colour in comparison_rows(outcome, limit)
    )
    paired_section = (
        "<h2>Paired differences</h2><p><small>95% paired bootstrap intervals: both sides resampled with the same "
        'records.</small></p><table class="text"><tr><th>comparison</th><th>metric</th>'
        f"<th>reference → candidate, difference (CI; relative)</th></tr>{paired}</table>"
        if paired
        else ""
    )
    gate_rule = f"<p><small>Gated against the {e(outcome.gate.reference)}. {e(GATE_RULE)}</small></p>"
    errors_section = f"<h2>Not measured, or reused</h2><ul>{errors}</ul>" if errors else ""
    exclusions_section = (
        "<h2>Records left out of a metric</h2><table "
        'class="text"><tr><th>candidate</th><th>reason</th><th>records</th></tr>'
        f"{exclusions}</table>"
        if exclusions
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>deepfeed evaluation: {e(verdict)}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #d0d7de;padding:4px 10px;text-align:right}}
th:first-child,td:first-child{{text-align:left}} tr:nth-child(even){{background:#f6f8fa}}
.banner{{padding:.6em 1em;border-radius:6px;color:#fff;background:{PASS if passed else FAIL}}}
li.ok{{color:{PASS}}} li.bad{{color:{FAIL};font-weight:600}} figure{{display:inline-block;margin:0 1em 1em 0}}
small{{color:{NEUTRAL};font-weight:normal}} table.text td,table.text th{{text-align:left}}
figure img{{max-width:34em}}
</style></head><body>
<h1 class="banner">{e(verdict)}</h1>
<p><b>{e(feeding_headline(outcome))}</b></p>
<p>Held-out records: {outcome.eval_records}; answered by generation: {outcome.generation_records}.</p>
<h2>Promotion gate</h2>{gate_rule}<ul>{gate}</ul>
<h2>Headline</h2>
<p><small>Δ: challenger vs champion (vs the base model before the first champion), champion vs base;
compressed artifacts vs the challenger they were made from. ⚑ gated metric: red when the whole paired 95%
interval of the change lies below -{limit:.0%} (toxicity pass rate: when it falls), green otherwise.
Intervals: 95% bootstrap.</small></p>
<table><tr><th>metric</th>{head}</tr>{body}</table>
{paired_section}
{errors_section}
{exclusions_section}
<h2>Plots</h2>{plots}
<h2>Time per stage</h2><table><tr><th>stage</th><th>wall s</th><th>CPU s</th></tr>{timings}</table>
<h2>Data version and lineage</h2><table class="text">{lineage_html}</table>
<h2>Sample answers (challenger)</h2><table class="text">
<tr><th>prompt</th><th>reference</th><th>answer</th><th>token F1</th></tr>{samples}</table>
</body></html>
"""


def metric_bars(path: Path, outcome: EvaluationOutcome) -> Path | None:
    """BLEU-4, chrF and token F1 (×100) per candidate with their 95% intervals."""
    metrics = [("token_f1", "token F1 ×100", 100.0), ("bleu4", "BLEU-4", 1.0), ("chrf", "chrF", 1.0)]
    scored = [c for c in outcome.candidates if any(_finite(c.metrics.get(m)) for m, _, _ in metrics)]
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    width = 0.8 / len(scored)
    for i, c in enumerate(scored):
        xs, ys, err = [], [], [[], []]
        for j, (m, _, scale) in enumerate(metrics):
            value = c.metrics.get(m)
            if not _finite(value):
                continue
            low, high = c.metrics.get(f"{m}_ci_low", value), c.metrics.get(f"{m}_ci_high", value)
            xs.append(j + (i - (len(scored) - 1) / 2) * width)
            ys.append(value * scale)
            err[0].append(max(0.0, (value - low) * scale))
            err[1].append(max(0.0, (high - value) * scale))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=c.name)
    ax.set_xticks(range(len(metrics)), [label for _, label, _ in metrics])
    ax.set(title="Answer quality (95% bootstrap intervals; higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_vs_size(path: Path, outcome: EvaluationOutcome) -> Path | None:
    points = [
        (c.name, c.metrics["size_mb"], c.metrics["latency_ms_per_answer"])
        for c in outcome.candidates
        if _finite(c.metrics.get("size_mb")) and _finite(c.metrics.get("latency_ms_per_answer"))
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    for name, size, latency in points:
        ax.scatter(size, latency, s=40)
        ax.annotate(name, (size, latency), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(
        title="Latency vs artifact size (lower-left is better)",
        xlabel="artifact size (MB)",
        ylabel="ms per answer (batched)",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def perplexity_bars(path: Path, outcome: EvaluationOutcome) -> Path | None:
    values = {c.name: c.metrics["perplexity"] for c in outcome.candidates if _finite(c.metrics.get("perplexity"))}
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    ax.bar(list(values), list(values.values()), color="#4a7fb5")
    ax.set(title="Held-out perplexity (lower is better)", ylabel="perplexity")
    ax.tick_params(axis="x", labelrotation=15)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_curve(path: Path, losses: list[float]) -> Path | None:
    if not losses:
        return None
    from deepfeed.core.platform.plots import line_plot

    return line_plot(path, {"train loss": losses}, "Training loss of the challenger", "step", "loss")


def write_report(
    folder: Path,
    outcome: EvaluationOutcome,
    lineage: dict[str, str],
    limit: float,
    training_losses: list[float] | None = None,
) -> dict[str, Path]:
    """report.html, report.md, metrics.json, samples.json and the PNG plots in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_files = {
        title: p
        for title, p in [
            ("Answer quality with confidence intervals", metric_bars(folder / "quality.png", outcome)),
            ("Held-out perplexity", perplexity_bars(folder / "perplexity.png", outcome)),
            ("Latency vs size", latency_vs_size(folder / "latency_vs_size.png", outcome)),
            ("Training loss", loss_curve(folder / "loss_curve.png", training_losses or [])),
        ]
        if p is not None
    }
    (folder / "report.html").write_text(render_html(outcome, lineage, plot_files, limit), encoding="utf-8")
    (folder / "report.md").write_text(
        render_markdown(outcome, lineage, {t: f"![{t}]({p.name})" for t, p in plot_files.items()}, limit),
        encoding="utf-8",
    )
    summary = {
        "candidates": [asdict(c) for c in outcome.candidates],
        "gate": {
            "passed": outcome.gate.passed,
            "reference": outcome.gate.reference,
            "conditions": [asdict(c) for c in outcome.gate.conditions],
        },
        "did_feeding_help": feeding_headline(outcome),
        "comparisons": {pair: {k: asdict(c) for k, c in ch.items()} for pair, ch in outcome.comparisons.items()},
        "eval_records": outcome.eval_records,
        "generation_records": outcome.generation_records,
        "timings": outcome.timings,
        "cpu_seconds": outcome.cpu_seconds,
        "lineage": lineage,
    }
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    (folder / "samples.json").write_text(json.dumps(outcome.samples, ensure_ascii=False, indent=2, default=str))
    files = {
        "html": folder / "report.html",
        "markdown": folder / "report.md",
        "metrics": folder / "metrics.json",
        "samples": folder / "samples.json",
    }
    return files | {f"plot:{t}": p for t, p in plot_files.items()}
