"""compressed_model: pruned, int8 torch, ONNX (fp32 + int8) and a Triton model repository."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import handle_metadata
from deepfeed.core.artifacts import ArtifactHandle
from deepfeed.core.compression import CompressionConfig, compress_checkpoint, write_json
from deepfeed.resources import ArtifactStoreResource, MlflowResource

GROUP = "compression"


class CompressedModelConfig(dg.Config):
    keep_fraction: float = Field(default=0.85, description="Share of weights kept by pruning (SPEC: 85%).")
    prune_method: str = Field(default="l1_unstructured", description="'l1_unstructured' or 'ln_structured' (whole rows).")
    quantize_per_channel: bool = Field(default=True, description="Per-channel int8 scales (per-tensor doubles small models' perplexity).")
    keep_lm_head_fp32: bool = Field(default=True, description="Leave the output projection unquantized (the most sensitive layer).")
    onnx_opset: int = Field(default=17, description="ONNX opset of the export.")
    triton_model_name: str = Field(default="deepfeed", description="Model name in the Triton repository.")
    triton_max_batch_size: int = Field(default=32, description="max_batch_size in config.pbtxt (SPEC: 32).")


@dg.asset(group_name=GROUP, kinds={"onnx", "pytorch"})
def compressed_model(
    context: dg.AssetExecutionContext,
    config: CompressedModelConfig,
    finetuned_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Serving artifacts of the fine-tuned checkpoint; an export failure is reported, not fatal to the rest."""
    store = artifact_store.store()
    checkpoint = store.local_path(finetuned_model) / "checkpoint"
    with store.new_version("compressed_model", run_id=context.run.run_id) as version:
        summary = compress_checkpoint(checkpoint, version.path, CompressionConfig(**config.model_dump()))
        write_json(version.path / "compression.json", summary)
        version.counts.update({f"size_mb_{k}": v for k, v in summary["sizes_mb"].items()})
        version.counts["mean_sparsity"] = round(summary["mean_sparsity"], 4)
        version.counts["source_version"] = finetuned_model.version
    handle = version.handle
    for artifact, error in summary["errors"].items():
        context.log.warning("%s artifact not built: %s", artifact, error)
    mlflow.log(context, params=config.model_dump(), metrics={f"size_mb_{k}": v for k, v in summary["sizes_mb"].items()} | {"mean_sparsity": summary["mean_sparsity"]}, artifacts=[store.local_path(handle) / "compression.json"])
    layers = sorted(summary["sparsity_per_layer"].items())
    sparsity_md = "| layer | sparsity |\n|---|---:|\n" + "\n".join(f"| {n} | {v:.3f} |" for n, v in layers[:40])
    if len(layers) > 40:
        sparsity_md += f"\n\n_{len(layers) - 40} more layers in compression.json_"
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "artifacts": dg.MetadataValue.json(summary["paths"]),
            "errors": dg.MetadataValue.json(summary["errors"]),
            "triton_repository": dg.MetadataValue.path(str(Path(store.local_path(handle)) / "triton")),
            "sparsity_per_layer": dg.MetadataValue.md(sparsity_md),
        },
    )
