"""incremental_model: the incremental stream of docs/requirements.md §4, one run per sealed feedback batch.

Each dynamic partition is a feedback batch. Training starts from the MLflow champion
(the base model before there is one), mixes in a replay of the augmented corpus, keeps
close to the champion with EWC, and lowers its learning rate when the loss on a held-out
replay sample rises. Kept out of the chain's modules because it is partitioned: it runs
from the feedback sensor (`incremental_job`), not with `--select '*'` of the chain.
"""

import shutil
from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, fail, handle_metadata
from deepfeed.assets.training import (
    FEEDBACK_ROOT_FIELD,
    GROUP,
    NPROC_FIELD,
    TEACHER_PATH_FIELD,
    checkpoint_source,
    current_champion,
    feedback_store,
    log_to_mlflow,
    train_logged,
    training_metadata,
    write_reports,
)
from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.core.platform.plots import markdown_image
from deepfeed.core.platform.tables import read_table
from deepfeed.core.train.incremental import plan_replay, records_hash
from deepfeed.core.train.settings import TrainingConfig
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.pipelines.partitions import feedback_batches
from deepfeed.pipelines.presets import INCREMENTAL_STREAM
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource

# The same TrainingConfig settings as finetuned_model, with the incremental stream's defaults
# (deepfeed/pipelines/presets.py) and descriptions that say what they mean on a feedback batch.
IncrementalModelConfig = dagster_config(
    TrainingConfig,
    name="IncrementalModelConfig",
    doc="Settings of incremental_model: one feedback batch plus a replay, EWC towards the champion, elastic rate.",
    defaults=INCREMENTAL_STREAM,
    descriptions={
        "method": "'lora' (default: a 16-bit base and fp32 adapters fit the tier `deepfeed plan` picks; EWC then "
        "penalises the adapters' delta of the adapted weights), 'qlora' (4-bit base, CUDA, no EWC) or 'full'.",
        "max_steps": "Optimizer steps on this feedback batch (+ replay).",
        "learning_rate": "Initial learning rate of the incremental stream (required: 3e-5; docs/requirements.md).",
        "ewc_lambda": "EWC penalty strength towards the champion (0 = off).",
        "eval_samples": "Earlier records held out of training to measure forgetting (the replay sample).",
        "eval_every": "Score the replay sample every N steps; a rise lowers the learning rate.",
        "elastic": "Lower the learning rate each time the replay loss rises (on by default in this stream).",
        "elastic_factor": "Multiplier of the learning rate each time the replay loss rises.",
        "elastic_tolerance": "Relative rise of the replay loss tolerated before lowering the learning rate.",
    },
    nproc=NPROC_FIELD,
    teacher_path=TEACHER_PATH_FIELD,
    replay_ratio=(
        float,
        Field(default=0.5, description="Earlier (augmented corpus) records replayed per feedback record."),
    ),
    feedback_root=FEEDBACK_ROOT_FIELD,
)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
    partitions_def=feedback_batches,
    retry_policy=COMPUTE_RETRY,
    deps=["augmented_corpus", "base_model"],
)
def incremental_model(
    context: dg.AssetExecutionContext,
    config: IncrementalModelConfig,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    model_source: ModelSourceResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """The champion trained on one sealed feedback batch (plus a replay of earlier data),
    with EWC towards the champion and an elastic learning rate; registered without an alias: incremental_job
    compresses and evaluates it before the gate may let it serve (docs/model-lifecycle.md)."""
    batch_id = context.partition_key
    store = artifact_store.store()
    try:
        mlflow.check_registrable(source_is_local=store.is_local)
    except ValueError as exc:
        raise fail("incremental_model.mlflow", str(exc)) from exc
    try:
        feedback = feedback_store(config.feedback_root, locations).read_batch(batch_id)
    except KeyError as exc:
        raise fail("incremental_model.config.feedback_root", str(exc)) from exc
    if not feedback:
        raise fail(
            "incremental_model",
            f"feedback batch {batch_id} holds no trainable record (only bad ratings without a correction)",
        )
    champion, parent = current_champion(mlflow)
    if champion is None:
        champion = model_source.resolve()
        context.log.info("no champion in the registry yet: starting from the base model %s", champion)
    corpus = store.latest("augmented_corpus")
    earlier = read_table(store.local_path(corpus) / "records.parquet") if corpus else []
    if config.ewc_lambda > 0 and not earlier:
        raise fail(
            "incremental_model.config.ewc_lambda",
            "EWC needs the champion's training data: materialize augmented_corpus first or set ewc_lambda: 0",
        )
    try:
        plan = plan_replay(feedback, earlier, config.replay_ratio, config.eval_samples, config.seed)
    except ValueError as exc:
        raise fail("incremental_model.config.replay_ratio", str(exc)) from exc
    teacher = Path(config.teacher_path) if config.teacher_path else champion
    training = to_core(config, TrainingConfig)
    data_hash = records_hash(plan.train)
    state = locations.training_state("incremental_model", f"{batch_id}-{parent or 'base'}")

    with store.new_version("incremental_model", run_id=context.run.run_id) as version:
        result = train_logged(
            config,
            training,
            champion,
            plan.train,
            version.path / "checkpoint",
            context,
            teacher_path=teacher if config.distill_alpha < 1.0 else None,
            ewc_records=earlier if config.ewc_lambda > 0 else None,
            eval_records=plan.replay_eval,
            checkpoint_dir=state if config.checkpoint_every else None,
            teacher_cache_dir=locations.teacher_cache(store) if config.teacher_cache else None,
        )
        extra = {
            "feedback_batch": batch_id,
            "parent_version": parent,
            "start": str(champion),
            "feedback_records": plan.feedback,
            "replayed_records": plan.replayed,
        }
        write_reports(version.path, result, training, extra)
        version.counts.update(result.summary())
        version.counts.update(
            data_hash=data_hash,
            feedback_batch=batch_id,
            feedback_records=plan.feedback,
            replayed_records=plan.replayed,
            parent_version=parent or "base",
            # What "did feeding help?" is measured against in evaluation_report.
            base_model=str(model_source.resolve()),
        )
    shutil.rmtree(state, ignore_errors=True)
    handle = version.handle
    folder = store.local_path(handle)
    log_to_mlflow(
        context,
        mlflow,
        "incremental",
        {**config.model_dump(), "feedback_batch": batch_id, "data_hash": data_hash},
        result,
        [folder / "loss_curve.png", folder / "training.json"],
    )
    tags = {
        "stream": "incremental",
        "data_hash": data_hash,
        "feedback_batch": batch_id,
        "parent_version": parent or "none",
        "start_checkpoint": str(champion),
        "artifact_version": handle.version,
    }
    model_version = mlflow.register_version(context, source=checkpoint_source(store, handle), tags=tags)
    context.log.info(
        "registered %s version %s (parent %s), no alias until its evaluation gate passes",
        mlflow.registered_model_name,
        model_version,
        parent or "base model",
    )
    handle = replace(handle, counts={**handle.counts, "mlflow_version": model_version})
    eval_rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in result.eval_losses)
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "mlflow_model_version": model_version,
            "fisher_file": dg.MetadataValue.path(result.fisher_file) if result.fisher_file else "none",
            **training_metadata(result),
            "replay_loss": dg.MetadataValue.md(
                "| step | replay loss |\n|---:|---:|\n" + eval_rows if eval_rows else "_no replay sample_"
            ),
            "loss_curve": dg.MetadataValue.md(markdown_image(folder / "loss_curve.png", "incremental loss")),
        },
    )
