"""compressed_model: pruned, int8 torch, ONNX (fp32 + int8, with and without KV cache) and a
Triton model repository; compression_quality_gate: each artifact within 3% of fp32."""

from pathlib import Path

import dagster as dg

from deepfeed.assets.common import COMPUTE_RETRY, fail, handle_metadata
from deepfeed.core.compress.settings import CompressionConfig
from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.core.platform.tables import read_table
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.resources import ArtifactStoreResource, MlflowResource

GROUP = "compression"


# Every CompressionConfig setting, with its default and description.
CompressedModelConfig = dagster_config(
    CompressionConfig,
    name="CompressedModelConfig",
    doc="Settings of compressed_model: pruning, int8 (torch and ONNX), the Triton repository and the quality gate.",
)


def _artifacts_table(summary: dict) -> str:
    sizes = summary["sizes_mb"]
    fp32 = sizes.get("fp32_checkpoint")
    lines = ["| artifact | path | size MB | fp32 / size |", "|---|---|---:|---:|"]
    for name, path in summary["paths"].items():
        size = sizes.get("pruned_fp32" if name == "pruned" else name)
        ratio = f"{fp32 / size:.2f}×" if fp32 and size else "–"
        lines.append(f"| {name} | `{path}` | {size if size is not None else '–'} | {ratio} |")
    for name, error in summary["errors"].items():
        lines.append(f"| {name} | not built | – | {error[:300]} |")
    return "\n".join(lines)


# The checkpoint comes from candidate_model (a full retrain or an incremental round); the
# parameter keeps its name so the body reads as before.
@dg.asset(
    group_name=GROUP,
    kinds={"onnx", "pytorch"},
    ins={"finetuned_model": dg.AssetIn("candidate_model")},
    retry_policy=COMPUTE_RETRY,
)
def compressed_model(
    context: dg.AssetExecutionContext,
    config: CompressedModelConfig,
    finetuned_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Serving artifacts of the fine-tuned checkpoint; an export failure is reported, not fatal to the rest."""
    # Imported here, not at module level: they pull in torch, and every `dagster` command loads this module.
    from deepfeed.core.compress.compression import (
        CompressionInputError,
        compress_checkpoint,
        write_json,
    )

    store = artifact_store.store()
    checkpoint = store.local_path(finetuned_model) / "checkpoint"
    settings = to_core(config, CompressionConfig)
    try:
        with store.new_version("compressed_model", run_id=context.run.run_id) as version:
            summary = compress_checkpoint(checkpoint, version.path, settings, log=context.log.info)
            write_json(version.path / "compression.json", summary)
            version.counts.update({f"size_mb_{k}": v for k, v in summary["sizes_mb"].items()})
            version.counts["mean_sparsity"] = round(summary["mean_sparsity"], 4)
            version.counts["source_version"] = finetuned_model.version
            version.counts["artifacts_not_built"] = ", ".join(summary["errors"]) or "none"
    except CompressionInputError as exc:
        raise fail("finetuned_model", str(exc)) from exc
    except ValueError as exc:  # a bad setting (prune_method, quantization, instance kind...)
        raise fail("compressed_model.config", str(exc)) from exc
    handle = version.handle
    for artifact, error in summary["errors"].items():
        context.log.warning("%s artifact not built: %s", artifact, error)
    mlflow.log(
        context,
        params=config.model_dump(),
        metrics={f"size_mb_{k}": v for k, v in summary["sizes_mb"].items()}
        | {"mean_sparsity": summary["mean_sparsity"]},
        artifacts=[store.local_path(handle) / "compression.json"],
    )
    layers = sorted(summary["sparsity_per_layer"].items())
    sparsity_md = "| layer | sparsity |\n|---|---:|\n" + "\n".join(f"| {n} | {v:.3f} |" for n, v in layers[:40])
    if len(layers) > 40:
        sparsity_md += f"\n\n_{len(layers) - 40} more layers in compression.json_"
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "artifacts": dg.MetadataValue.md(_artifacts_table(summary)),
            "errors": dg.MetadataValue.json(summary["errors"]),
            "triton_repository": dg.MetadataValue.path(str(Path(store.local_path(handle)) / "triton")),
            "triton_config": dg.MetadataValue.json(summary["details"].get("triton", {})),
            "sparsity_per_layer": dg.MetadataValue.md(sparsity_md),
            # The share actually kept (a run config may override the 85% default).
            "keep_fraction": dg.MetadataValue.float(float(config.keep_fraction)),
        },
    )


@dg.asset_check(
    asset=compressed_model,
    blocking=True,
    additional_ins={"clean_corpus": dg.AssetIn("clean_corpus"), "finetuned_model": dg.AssetIn("candidate_model")},
    description="Each compressed artifact's perplexity and task metric (token F1 of greedy answers) on the held-out "
    "split stay within 3% of the fp32 (unpruned) checkpoint.",
)
def compression_quality_gate(
    context: dg.AssetCheckExecutionContext,
    compressed_model: ArtifactHandle,
    clean_corpus: ArtifactHandle,
    finetuned_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
) -> dg.AssetCheckResult:
    import json

    from deepfeed.core.compress.gate import gate_compressed_artifacts  # torch: see compressed_model
    from deepfeed.core.evaluate.settings import EvaluationConfig

    store = artifact_store.store()
    folder = store.local_path(compressed_model)
    settings = json.loads((folder / "compression.json").read_text())["config"]
    records = [r for r in read_table(store.local_path(clean_corpus) / "records.parquet") if r.get("split") == "eval"]
    if settings["gate_max_records"]:
        records = records[: settings["gate_max_records"]]
    if not records:
        return dg.AssetCheckResult(
            passed=False,
            description="clean_corpus has no held-out (split == 'eval') records to score; raise "
            "clean_corpus.config.eval_fraction",
        )
    report = gate_compressed_artifacts(
        store.local_path(finetuned_model) / "checkpoint",
        folder,
        records,
        settings["gate_max_relative_increase"],
        EvaluationConfig(
            max_length=settings["gate_max_length"], max_new_tokens=settings.get("gate_max_new_tokens", 32)
        ),
        log=context.log.info,
        # compression.json written before the task metric existed: gate it with the defaults
        max_f1_drop=settings.get("gate_max_f1_drop", 0.03),
        task_gate=settings.get("gate_task_metric", "paired"),
        max_answers=settings.get("gate_max_answers", 24),
    )
    metadata = {
        "gate": dg.MetadataValue.md(report.markdown()),
        "fp32_perplexity": report.reference_perplexity,
        "eval_records": len(records),
        "scored_tokens": report.scored_tokens,
        "task_gate": report.task_gate,
        "answered_records": report.answered,
        "fp32_token_f1": report.reference_token_f1 if report.reference_token_f1 is not None else float("nan"),
        "fp32_seconds": report.reference_seconds,
    }
    for artifact in report.artifacts:
        metadata[f"{artifact.name}_perplexity"] = (
            artifact.perplexity if artifact.perplexity is not None else float("nan")
        )
        metadata[f"{artifact.name}_delta"] = (
            artifact.relative_change if artifact.relative_change is not None else float("nan")
        )
        metadata[f"{artifact.name}_size_mb"] = artifact.size_mb if artifact.size_mb is not None else float("nan")
        metadata[f"{artifact.name}_size_ratio"] = (
            artifact.size_ratio if artifact.size_ratio is not None else float("nan")
        )
        metadata[f"{artifact.name}_token_f1"] = artifact.token_f1 if artifact.token_f1 is not None else float("nan")
        metadata[f"{artifact.name}_f1_delta"] = (
            artifact.f1_relative_change if artifact.f1_relative_change is not None else float("nan")
        )
        metadata[f"{artifact.name}_f1_delta_ci"] = dg.MetadataValue.json(
            [artifact.f1_change_ci_low, artifact.f1_change_ci_high]
        )
        metadata[f"{artifact.name}_seconds"] = artifact.seconds
    if report.not_built:
        metadata["not_built"] = dg.MetadataValue.json(report.not_built)
    return dg.AssetCheckResult(
        passed=report.passed,
        metadata=metadata,
        description=None if report.passed else "; ".join(report.failures()),
    )
