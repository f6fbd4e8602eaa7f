"""base_model and finetuned_model: the checkpoint we start from and the base stream.

finetuned_model is the monthly full retrain of docs/requirements.md §4; with `start_from: champion`,
EWC and the feedback history it is the quarterly knowledge review. The incremental
stream is in incremental.py.
"""

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, IO_RETRY, fail, handle_metadata
from deepfeed.core.loop.feedback import FeedbackStore
from deepfeed.core.loop.registry import CHAMPION
from deepfeed.core.platform.artifacts import ArtifactHandle, hash_folder
from deepfeed.core.platform.mlflow_model import write_pyfunc_model
from deepfeed.core.platform.plots import line_plot, markdown_image
from deepfeed.core.platform.progress import REPORT_SECONDS, Every
from deepfeed.core.platform.tables import read_table
from deepfeed.core.train.incremental import records_hash
from deepfeed.core.train.settings import TrainingConfig
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource

# deepfeed.core.train imports torch, so it is imported inside the functions that use it: every
# `dagster` command, the webserver and the daemon load this module (docs/operations.md, startup).
if TYPE_CHECKING:
    from deepfeed.core.train.training import TrainingResult

GROUP = "training"


@dg.asset(group_name=GROUP, kinds={"pytorch"}, retry_policy=IO_RETRY)
def base_model(context: dg.AssetExecutionContext, model_source: ModelSourceResource) -> dg.Output[ArtifactHandle]:
    """The local Hugging Face checkpoint that fine-tuning starts from (validated, not copied)."""
    from deepfeed.core.train.modeling import ModelSourceError, describe_checkpoint

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


# Asset-only: how the step runs, not what it computes (TrainingConfig holds that).
NPROC_FIELD = (
    int,
    Field(
        default=1,
        description="Training processes: > 1 runs the step as `torchrun` (DDP; gloo on CPU, nccl on GPUs) launched "
        "through Dagster Pipes.",
    ),
)
# A path on this machine, handed to fine_tune beside the settings (the champion when empty).
TEACHER_PATH_FIELD = (
    str,
    Field(default="", description="Teacher checkpoint folder for distillation; empty = the current MLflow champion."),
)
FEEDBACK_ROOT_FIELD = (str, Field(default="", description="Feedback store folder; empty = $DEEPFEED_HOME/feedback."))

# Every TrainingConfig setting, with its default and description, plus where the run starts.
FinetunedModelConfig = dagster_config(
    TrainingConfig,
    name="FinetunedModelConfig",
    doc="Settings of finetuned_model: the monthly full retrain, or the knowledge review with start_from: champion.",
    descriptions={"eval_samples": "Held-out records of the clean corpus scored for the eval loss."},
    nproc=NPROC_FIELD,
    teacher_path=TEACHER_PATH_FIELD,
    start_from=(
        str,
        Field(
            default="base",
            description="'base' (the base model: monthly full retrain) or 'champion' (the current MLflow champion; "
            "the knowledge review).",
        ),
    ),
    include_feedback_history=(
        bool,
        Field(
            default=False,
            description="Also train on every sealed feedback batch so far (the quarterly knowledge review).",
        ),
    ),
    feedback_root=FEEDBACK_ROOT_FIELD,
)


def feedback_store(root: str, locations: LocationsResource) -> FeedbackStore:
    """The store named by a config's `feedback_root`, else the home's (where the server writes)."""
    return FeedbackStore(Path(root).expanduser()) if root else locations.feedback_store()


def current_champion(mlflow: MlflowResource):
    version = mlflow.version_by_alias(CHAMPION)
    if version is None:
        return None, None
    from deepfeed.core.train.modeling import ModelSourceError, describe_checkpoint

    source = Path(version.source)
    try:
        describe_checkpoint(source)
    except ModelSourceError as exc:
        raise fail("mlflow champion", f"version {version.version}: {exc}") from exc
    return source, str(version.version)


def progress(context: dg.AssetExecutionContext, config: TrainingConfig):
    report = Every(config.log_every, seconds=REPORT_SECONDS)  # a line at least every 10 s (docs/operations.md)

    def log(step: int, loss: float, lr: float) -> None:
        if step == 0 or report.due() or step == config.max_steps - 1:
            context.log.info("step %d/%d loss %.4f lr %.2e", step + 1, config.max_steps, loss, lr)

    return log


def write_reports(folder: Path, result: "TrainingResult", training: TrainingConfig, extra: dict[str, Any]) -> Path:
    from deepfeed.core.train.training import config_dict

    series = {"train loss": result.losses}
    if result.eval_losses:
        # Eval points are sparse: hold the last value so both curves share the step axis.
        evals, held, last = dict(result.eval_losses), [], float("nan")
        for step in range(1, len(result.losses) + 1):
            last = evals.get(step, last)
            held.append(last)
        series["eval loss"] = held
    plot = line_plot(folder / "loss_curve.png", series, "Training loss", "step", "loss")
    (folder / "training.json").write_text(
        json.dumps(
            {
                **result.summary(),
                **extra,
                "losses": result.losses,
                "learning_rates": result.learning_rates,
                "eval_losses": result.eval_losses,
                "tokens_per_second": result.tokens_per_second_series,
                "peak_memory_mb": result.peak_memory_mb_series,
                "config": config_dict(training),
            },
            indent=2,
            default=str,
        )
    )
    return plot


def training_metadata(result: "TrainingResult") -> dict[str, Any]:
    """What the optional techniques did, for the asset's metadata."""
    cache = "none"
    if result.teacher_cache:
        cache = (
            dg.MetadataValue.path(result.teacher_cache)
            if result.teacher_cache_built
            else f"reused {result.teacher_cache}"
        )
    return {"teacher_cache": cache}


def log_to_mlflow(
    context, mlflow: MlflowResource, prefix: str, params: dict[str, Any], result: "TrainingResult", files: list[Path]
) -> None:
    mlflow.log(
        context,
        params=params,
        metrics={
            f"{prefix}_final_loss": result.losses[-1],
            f"{prefix}_tokens_per_second": result.tokens_per_second,
            f"{prefix}_peak_memory_mb": result.peak_memory_mb,
            f"{prefix}_final_eval_loss": result.eval_losses[-1][1] if result.eval_losses else None,
            f"{prefix}_initial_eval_loss": result.initial_eval_loss,
            **{f"{prefix}_{k}": v for k, v in result.loss_windows().items()},
            f"{prefix}_final_adversarial_loss": result.adversarial_losses[-1] if result.adversarial_losses else None,
        },
        series={
            f"{prefix}_loss": result.losses,
            "learning_rate" if prefix == "train" else f"{prefix}_learning_rate": result.learning_rates,
            f"{prefix}_step_tokens_per_second": result.tokens_per_second_series,
            f"{prefix}_peak_memory_mb_by_step": result.peak_memory_mb_series,
            # MLflow step = the number of evaluations so far (every eval_every steps).
            f"{prefix}_eval_loss": [loss for _, loss in result.eval_losses],
            # The FGSM term per labelled token, already included in the loss above.
            f"{prefix}_adversarial_loss": result.adversarial_losses,
        },
        artifacts=files,
    )


def checkpoint_source(store, handle: ArtifactHandle) -> str:
    return str(store.local_path(handle) / "checkpoint") if store.is_local else f"{handle.uri}/checkpoint"


def train_logged(
    config: dg.Config, training: TrainingConfig, start: Path, records, checkpoint: Path, context, **kwargs
) -> "TrainingResult":
    """In this process, or as a torchrun job through Dagster Pipes when nproc > 1."""
    from deepfeed.core.train.training import TrainingError, fine_tune

    try:
        if config.nproc > 1:
            result = train_with_torchrun(config.nproc, training, start, records, checkpoint, context, **kwargs)
        else:
            result = fine_tune(start, records, checkpoint, training, on_step=progress(context, training), **kwargs)
        write_pyfunc_model(checkpoint)  # the registered version loads as models:/<name>@<alias>
        return result
    except (TrainingError, ValueError, OSError) as exc:
        raise fail(context.asset_key.to_user_string(), str(exc)) from exc


def train_with_torchrun(
    nproc: int, training: TrainingConfig, start: Path, records, checkpoint: Path, context, **kwargs
) -> "TrainingResult":
    from deepfeed.core.train.distributed import launch_command, read_result, write_spec
    from deepfeed.core.train.training import TrainingError

    # The subprocess client runs torchrun on this machine; on Kubernetes the same spec and
    # command go to a PipesK8sClient instead.
    with tempfile.TemporaryDirectory(prefix="deepfeed-torchrun-") as folder:
        spec = write_spec(Path(folder), start, records, checkpoint, training, **kwargs)
        try:
            completed = dg.PipesSubprocessClient().run(command=launch_command(spec, nproc), context=context)
        except Exception as exc:  # Pipes raises a plain Exception subclass on a non-zero exit
            raise TrainingError(f"the torchrun job of {nproc} processes failed: {exc}") from exc
        for message in completed.get_custom_messages():
            context.log.info("torchrun finished: %s", message)
        try:
            return read_result(spec)
        except FileNotFoundError as exc:
            raise TrainingError(f"the torchrun job of {nproc} processes ended without a result") from exc


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, retry_policy=COMPUTE_RETRY)
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: FinetunedModelConfig,
    augmented_corpus: ArtifactHandle,
    base_model: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
    locations: LocationsResource,
) -> dg.Output[ArtifactHandle]:
    """The base model fine-tuned on the augmented corpus; registered in MLflow without an alias (it serves no
    traffic until evaluation_report's gate passes: docs/model-lifecycle.md)."""
    store = artifact_store.store()
    try:
        mlflow.check_registrable(source_is_local=store.is_local)
    except ValueError as exc:
        raise fail("finetuned_model.mlflow", str(exc)) from exc
    corpus = read_table(store.local_path(augmented_corpus) / "records.parquet")
    records = list(corpus)
    if config.include_feedback_history:
        feedback = feedback_store(config.feedback_root, locations)
        records += [r for batch in feedback.batches() for r in feedback.read_batch(batch)]
    if config.start_from not in {"base", "champion"}:
        raise fail("finetuned_model.config.start_from", f"{config.start_from!r}: expected 'base' or 'champion'")
    champion, champion_version = current_champion(mlflow)
    start, parent = Path(base_model.uri), ""
    if config.start_from == "champion" and champion is not None:
        start, parent = champion, champion_version
    teacher = Path(config.teacher_path) if config.teacher_path else champion
    if config.distill_alpha < 1.0 and teacher is None:
        raise fail(
            "finetuned_model.config.teacher_path",
            "distillation needs a teacher: set teacher_path or promote a champion first",
        )
    clean = store.latest("clean_corpus")
    held_out = (
        [r for r in read_table(store.local_path(clean) / "records.parquet") if r.get("split") == "eval"]
        if clean
        else []
    )
    training = to_core(config, TrainingConfig)
    data_hash = records_hash(records) if config.include_feedback_history else augmented_corpus.content_hash

    state = locations.training_state("finetuned_model", f"{data_hash[:16]}-{parent or 'base'}")
    with store.new_version("finetuned_model", run_id=context.run.run_id) as version:
        result = train_logged(
            config,
            training,
            start,
            records,
            version.path / "checkpoint",
            context,
            teacher_path=teacher if config.distill_alpha < 1.0 else None,
            ewc_records=corpus if config.ewc_lambda > 0 else None,
            eval_records=held_out,
            checkpoint_dir=state if config.checkpoint_every else None,
            teacher_cache_dir=locations.teacher_cache(store) if config.teacher_cache else None,
        )
        write_reports(version.path, result, training, {"start": str(start), "parent_version": parent})
        version.counts.update(result.summary())
        version.counts.update(data_hash=data_hash, base_model=base_model.uri, start_from=str(start))
    shutil.rmtree(state, ignore_errors=True)
    handle = version.handle
    folder = store.local_path(handle)
    log_to_mlflow(
        context,
        mlflow,
        "train",
        {**config.model_dump(), "base_model": base_model.uri, "data_hash": data_hash},
        result,
        [folder / "loss_curve.png", folder / "training.json"],
    )
    tags = {
        "data_hash": data_hash,
        "base_model": base_model.uri,
        "base_model_hash": base_model.content_hash,
        "artifact_version": handle.version,
        "stream": "review" if config.start_from == "champion" else "full",
    }
    if parent:
        tags["parent_version"] = parent
    model_version = mlflow.register_version(context, source=checkpoint_source(store, handle), tags=tags)
    context.log.info(
        "registered %s version %s (no alias until its evaluation gate passes)",
        mlflow.registered_model_name,
        model_version,
    )
    handle = replace(handle, counts={**handle.counts, "mlflow_version": model_version})
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "mlflow_model_version": model_version,
            "teacher_cache": training_metadata(result)["teacher_cache"],
            "loss_curve": dg.MetadataValue.md(markdown_image(folder / "loss_curve.png", "training loss")),
        },
    )
