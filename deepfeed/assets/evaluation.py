"""evaluation_report and champion_model: score every candidate, gate, promote."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import fail, handle_metadata
from deepfeed.core.artifacts import ArtifactHandle
from deepfeed.core.compression import CompressionConfig
from deepfeed.core.evaluation import EvaluationConfig
from deepfeed.core.plots import markdown_image
from deepfeed.core.report import evaluate_candidates, render_markdown, write_report
from deepfeed.core.tables import read_table
from deepfeed.resources import ArtifactStoreResource, MlflowResource
from deepfeed.resources.mlflow_tracking import CHAMPION

GROUP = "evaluation"


class EvaluationReportConfig(dg.Config):
    max_eval_records: int = Field(default=96, description="Held-out records scored for perplexity (0 = all).")
    max_generation_records: int = Field(default=48, description="Held-out prompts answered by greedy generation for BLEU-4.")
    max_new_tokens: int = Field(default=32, description="Tokens generated per answer.")
    max_length: int = Field(default=128, description="Tokens per scored sequence.")
    batch_size: int = Field(default=16, description="Sequences per forward pass.")
    max_relative_drop: float = Field(default=0.03, description="Largest relative drop of a key metric vs the champion that still promotes (SPEC: 3%).")
    compare_with_champion: bool = Field(default=True, description="Re-score the current champion on the same records for the gate.")


@dg.asset(group_name=GROUP, kinds={"mlflow"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    clean_corpus: ArtifactHandle,
    finetuned_model: ArtifactHandle,
    compressed_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Perplexity and BLEU-4 on the held-out split for the challenger, its compressed artifacts and the champion."""
    store = artifact_store.store()
    records = [r for r in read_table(store.local_path(clean_corpus) / "records.parquet") if r["split"] == "eval"]
    if config.max_eval_records:
        records = records[: config.max_eval_records]
    if not records:
        raise fail("clean_corpus.config.eval_fraction", "the held-out split is empty; raise eval_fraction or add data")

    champion = mlflow.version_by_alias(CHAMPION) if config.compare_with_champion else None
    champion_checkpoint = None
    if champion is not None and str(champion.version) != str(finetuned_model.counts.get("mlflow_version")):
        champion_checkpoint = Path(champion.source) if Path(champion.source).exists() else None
        if champion_checkpoint is None:
            context.log.warning("champion v%s source %s is not reachable; gating without it", champion.version, champion.source)

    eval_config = EvaluationConfig(
        max_length=config.max_length,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        max_generation_records=config.max_generation_records,
        max_relative_drop=config.max_relative_drop,
    )
    outcome = evaluate_candidates(
        store.local_path(finetuned_model) / "checkpoint",
        store.local_path(compressed_model),
        champion_checkpoint,
        records,
        eval_config,
        CompressionConfig(),
        log=context.log.info,
    )
    lineage = {
        "data_hash (clean corpus)": clean_corpus.content_hash,
        "fine-tuned version": finetuned_model.version,
        "mlflow challenger version": str(finetuned_model.counts.get("mlflow_version")),
        "champion version": str(champion.version) if champion_checkpoint else "none",
        "compressed version": compressed_model.version,
        "dagster run": context.run.run_id,
    }
    with store.new_version("evaluation_report", {"eval_records": len(records), "gate_passed": outcome.gate.passed}, run_id=context.run.run_id) as version:
        files = write_report(version.path, outcome, lineage)
        plot_md = markdown_image(files["plot"], "perplexity per candidate") if "plot" in files else ""
        markdown = render_markdown(outcome, lineage, plot_md)
        (version.path / "report.md").write_text(render_markdown(outcome, lineage, "![perplexity](perplexity.png)"), encoding="utf-8")
    handle = version.handle
    folder = store.local_path(handle)
    challenger = outcome.candidates[0].metrics
    metrics = {f"eval_{c.name}_{k}": v for c in outcome.candidates for k, v in c.metrics.items() if isinstance(v, (int, float))}
    mlflow.log(context, metrics=metrics, artifacts=[folder / f for f in ("report.html", "report.md", "metrics.json", "samples.json", "perplexity.png") if (folder / f).exists()], artifact_dir="evaluation_report")
    handle = replace(handle, counts={**handle.counts, "gate_reasons": " | ".join(outcome.gate.reasons), "challenger_version": str(finetuned_model.counts.get("mlflow_version"))})
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "report": dg.MetadataValue.md(markdown),
            "report_html": dg.MetadataValue.path(str(folder / "report.html")),
            "perplexity": challenger.get("perplexity"),
            "bleu4": challenger.get("bleu4"),
            "gate_passed": outcome.gate.passed,
        },
    )


@dg.asset_check(asset=evaluation_report, description="The challenger loses no key metric by more than 3% against the champion.")
def promotion_gate(evaluation_report: ArtifactHandle) -> dg.AssetCheckResult:
    passed = bool(evaluation_report.counts["gate_passed"])
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reasons": evaluation_report.counts.get("gate_reasons", "")},
    )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, output_required=False)
def champion_model(context: dg.AssetExecutionContext, evaluation_report: ArtifactHandle, mlflow: MlflowResource):
    """The registry's `champion` alias; materialized only when the challenger passed the gate."""
    version = evaluation_report.counts["challenger_version"]
    if not evaluation_report.counts["gate_passed"]:
        context.log.info("challenger v%s not promoted: %s", version, evaluation_report.counts.get("gate_reasons"))
        return
    previous = mlflow.promote(version)
    context.log.info("promoted v%s to champion (previous: %s)", version, previous)
    yield dg.Output(
        {"version": version, "previous": previous},
        metadata={"champion_version": version, "previous_version": previous or "none", "registered_model": mlflow.registered_model_name, **handle_metadata(evaluation_report)},
    )
