"""base_model and finetuned_model: the checkpoint we start from and the one we train."""

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import fail, handle_metadata
from deepfeed.core.artifacts import ArtifactHandle, hash_folder
from deepfeed.core.modeling import ModelSourceError, describe_checkpoint
from deepfeed.core.plots import line_plot, markdown_image
from deepfeed.core.tables import read_table
from deepfeed.core.training import TrainingConfig, TrainingError, config_dict, fine_tune
from deepfeed.resources import ArtifactStoreResource, MlflowResource, ModelSourceResource

GROUP = "training"


@dg.asset(group_name=GROUP, kinds={"pytorch"})
def base_model(context: dg.AssetExecutionContext, model_source: ModelSourceResource) -> dg.Output[ArtifactHandle]:
    """The local Hugging Face checkpoint that fine-tuning starts from (validated, not copied)."""
    path = model_source.resolve()
    try:
        info = describe_checkpoint(path)
    except ModelSourceError as exc:
        raise fail("model_source.base_model_path", str(exc)) from exc
    handle = ArtifactHandle(
        name="base_model",
        version=path.name,
        uri=str(path),
        content_hash=hash_folder(path),
        counts={k: v for k, v in info.items() if k != "weight_files"},
    )
    return dg.Output(handle, metadata={**handle_metadata(handle), "weight_files": ", ".join(info["weight_files"])})


class FinetunedModelConfig(dg.Config):
    method: str = Field(default="lora", description="'lora' (peft adapters, merged before saving) or 'full' fine-tuning.")
    max_steps: int = Field(default=30, description="Optimizer steps.")
    batch_size: int = Field(default=8, description="Sequences per step.")
    max_length: int = Field(default=128, description="Tokens per sequence (longer ones are cut).")
    learning_rate: float = Field(default=2e-4, description="Peak learning rate of AdamW after warm-up.")
    final_learning_rate: float = Field(default=1e-6, description="Learning rate at the end of the cosine decay (SPEC: 1e-6).")
    warmup_steps: int = Field(default=3, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay.")
    lora_rank: int = Field(default=8, description="LoRA rank (method=lora).")
    lora_alpha: int = Field(default=16, description="LoRA scaling alpha (method=lora).")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in backward to save memory.")
    seed: int = Field(default=0, description="Seed of initialization and data order.")
    log_every: int = Field(default=5, description="Write a progress line to the Dagster log every N steps.")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: FinetunedModelConfig,
    augmented_corpus: ArtifactHandle,
    base_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """The base model fine-tuned on the augmented corpus; registered in MLflow as `challenger`."""
    store = artifact_store.store()
    records = read_table(store.local_path(augmented_corpus) / "records.parquet")
    training = TrainingConfig(**config.model_dump())

    def progress(step: int, loss: float, lr: float) -> None:
        if step % config.log_every == 0 or step == config.max_steps - 1:
            context.log.info("step %d/%d loss %.4f lr %.2e", step + 1, config.max_steps, loss, lr)

    with store.new_version("finetuned_model", run_id=context.run.run_id) as version:
        checkpoint = version.path / "checkpoint"
        try:
            result = fine_tune(Path(base_model.uri), records, checkpoint, training, on_step=progress)
        except TrainingError as exc:
            raise fail("finetuned_model", str(exc)) from exc
        plot = line_plot(version.path / "loss_curve.png", {"train loss": result.losses}, "Training loss", "step", "loss")
        (version.path / "training.json").write_text(json.dumps({**result.summary(), "losses": result.losses, "learning_rates": result.learning_rates, "config": config_dict(training)}, indent=2))
        version.counts.update(result.summary())
        version.counts.update(data_hash=augmented_corpus.content_hash, base_model=base_model.uri)
    handle = version.handle
    mlflow.log(
        context,
        params={**config.model_dump(), "base_model": base_model.uri, "data_hash": augmented_corpus.content_hash},
        metrics={"train_final_loss": result.losses[-1], "train_tokens_per_second": result.tokens_per_second},
        series={"train_loss": result.losses, "learning_rate": result.learning_rates},
        artifacts=[store.local_path(handle) / "loss_curve.png", store.local_path(handle) / "training.json"],
    )
    model_version = mlflow.register_version(
        context,
        source=str(store.local_path(handle) / "checkpoint") if store.is_local else f"{handle.uri}/checkpoint",
        tags={
            "data_hash": augmented_corpus.content_hash,
            "base_model": base_model.uri,
            "base_model_hash": base_model.content_hash,
            "artifact_version": handle.version,
            "stream": "full",
        },
    )
    context.log.info("registered %s version %s as challenger", mlflow.registered_model_name, model_version)
    handle = replace(handle, counts={**handle.counts, "mlflow_version": model_version})
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "mlflow_model_version": model_version,
            "loss_curve": dg.MetadataValue.md(markdown_image(store.local_path(handle) / "loss_curve.png", "training loss")),
        },
    )

