"""evaluation_report and champion_model: score every candidate, gate, promote."""

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import COMPUTE_RETRY, IO_RETRY, counts_table, fail, handle_metadata
from deepfeed.assets.compression import compression_quality_gate
from deepfeed.assets.training import checkpoint_source
from deepfeed.core.compress.settings import CompressionConfig
from deepfeed.core.evaluate.candidates import BASE, CHALLENGER, DEFAULT_ARTIFACTS, DESCRIPTIONS
from deepfeed.core.evaluate.candidates import CHAMPION as CHAMPION_CANDIDATE
from deepfeed.core.evaluate.evalset import (
    EvalSetError,
    load_reference_set,
    strata_counts,
    stratified_sample,
    training_overlap,
)
from deepfeed.core.evaluate.safety import SafetyError, ToxicityScorer
from deepfeed.core.evaluate.score_cache import (
    checkpoint_fingerprint,
    eval_set_hash,
    find_scores,
    save_scores,
    score_cache_key,
)
from deepfeed.core.evaluate.settings import EvaluationConfig
from deepfeed.core.loop.lifecycle import apply_failed_gate, grant_challenger, promote_gated
from deepfeed.core.loop.registry import CHALLENGER as CHALLENGER_ALIAS
from deepfeed.core.loop.registry import CHAMPION
from deepfeed.core.platform.artifacts import MANIFEST, ArtifactHandle
from deepfeed.core.platform.plots import markdown_image
from deepfeed.core.platform.tables import read_table, write_table
from deepfeed.pipelines.config import dagster_config, to_core
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource

GROUP = "evaluation"
EVAL_SET_FIELDS = ("record_id", "source", "kind", "prompt", "response", "text", "lang", "tags", "meta")


# The scoring settings come from EvaluationConfig; what to score (the evaluation set, which
# artifacts, which scores to reuse) is this asset's. eval_sample_seed also seeds the bootstrap.
EvaluationReportConfig = dagster_config(
    EvaluationConfig,
    name="EvaluationReportConfig",
    doc="Settings of evaluation_report: the evaluation set, the candidates scored and the promotion gate.",
    exclude=("seed",),
    max_eval_records=(
        int,
        Field(
            default=64,
            description="Held-out records in the evaluation set, sampled stratified by language and domain tag "
            "(0 = all).",
        ),
    ),
    eval_sample_seed=(
        int,
        Field(
            default=17,
            description="Seed of the stratified sample and of the bootstrap resamples; the same seed and data give "
            "the same evaluation set.",
        ),
    ),
    reference_set_path=(
        str,
        Field(
            default="",
            description="Your own domain reference set (JSONL: prompt, reference, optional lang/tags/label) instead "
            "of the held-out split.",
        ),
    ),
    use_perspective=(
        bool,
        Field(
            default=False,
            description="Score toxicity with Google's Perspective API (needs internet and $PERSPECTIVE_API_KEY) "
            "instead of the offline classifier.",
        ),
    ),
    artifacts=(
        list[str],
        Field(
            default_factory=lambda: list(DEFAULT_ARTIFACTS),
            description="Compressed artifacts scored next to the fp32 challenger, any of: "
            + ", ".join(DESCRIPTIONS)
            + ".",
        ),
    ),
    generate_compressed=(
        bool,
        Field(
            default=True,
            description="Also answer the prompts with each compressed artifact (accuracy, BLEU, toxicity and speed "
            "per artifact).",
        ),
    ),
    generate_logits_only=(
        bool,
        Field(
            default=False,
            description="Also decode through the logits-only ONNX graphs (no KV cache: every step re-reads the "
            "prefix; their KV twins give the same answers faster).",
        ),
    ),
    compare_with_champion=(
        bool,
        Field(default=True, description="Re-score the current champion on the same records for the gate."),
    ),
    reuse_champion_scores=(
        bool,
        Field(
            default=True,
            description="Reuse the champion's and the base model's scores from an earlier evaluation (kept in the "
            "artifact store) when the model, the evaluation set and these settings are unchanged, instead of "
            "generating its answers again. Off: always re-score.",
        ),
    ),
    compression_gate_required=(
        bool,
        Field(
            default=True,
            description="Fail the promotion gate when no verdict of the compression gate is found for this "
            "compressed_model version. Set false only on purpose (e.g. compressed artifacts built without their "
            "check); the report then says it was waived.",
        ),
    ),
)


def _eval_set(config: EvaluationReportConfig, store, clean_corpus: ArtifactHandle) -> tuple[list[dict], str]:
    if config.reference_set_path:
        try:
            records = load_reference_set(config.reference_set_path)
        except EvalSetError as exc:
            raise fail("evaluation_report.config.reference_set_path", str(exc)) from exc
        source = f"reference set {config.reference_set_path}"
    else:
        records = [r for r in read_table(store.local_path(clean_corpus) / "records.parquet") if r["split"] == "eval"]
        if not records:
            raise fail(
                "clean_corpus.config.eval_fraction", "the held-out split is empty; raise eval_fraction or add data"
            )
        source = f"held-out split of clean_corpus {clean_corpus.version}"
    return stratified_sample(records, config.max_eval_records, config.eval_sample_seed), source


def compression_gate_status(
    context: dg.AssetExecutionContext, compressed_model: ArtifactHandle, store
) -> tuple[bool | None, str]:
    """The compression engineer's verdict on this compressed_model version: a flag on the
    handle if they set one, else the asset checks of compressed_model in the run that
    built it. None when neither exists."""
    for key in ("compression_gate_passed", "gate_passed"):
        if key in compressed_model.counts:
            return bool(
                compressed_model.counts[key]
            ), f"compressed_model {compressed_model.version}: {key}={compressed_model.counts[key]}"
    manifest = json.loads((store.local_path(compressed_model) / MANIFEST).read_text())
    # A run that selects only evaluation_report has a job without compressed_model's checks:
    # the check defined next to compressed_model is always asked for too.
    check_keys = set(compression_quality_gate.check_keys)
    graph = context.job_def.asset_layer.asset_graph
    check_keys |= set(graph.get_check_keys_for_assets({dg.AssetKey("compressed_model")}))
    verdicts = {}
    for key in check_keys:
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        if (
            record is not None
            and record.run_id == manifest.get("run_id")
            and record.status.value in ("SUCCEEDED", "FAILED")
        ):
            verdicts[key.name] = record.status.value == "SUCCEEDED"
    if not verdicts:
        return None, f"no check of compressed_model ran in run {str(manifest.get('run_id'))[:8]}"
    return all(verdicts.values()), ", ".join(f"{k} {'passed' if v else 'failed'}" for k, v in sorted(verdicts.items()))


def _champion_checkpoint(source: str, store) -> Path:
    """The champion's checkpoint folder; a remote artifact store's copy is downloaded."""
    if Path(source).exists() or "://" not in source:
        return Path(source)
    try:
        return store.local_path(source.removesuffix("/checkpoint")) / "checkpoint"
    except Exception:  # reported when the champion fails to load
        return Path(source)


def _base_checkpoint(finetuned_model: ArtifactHandle) -> tuple[Path | None, str]:
    """The checkpoint this challenger was fine-tuned from (recorded by finetuned_model), or
    why there is none to score."""
    recorded = finetuned_model.counts.get("base_model")
    if not recorded:
        return None, f"finetuned_model {finetuned_model.version} does not record the base model it started from"
    path = Path(str(recorded))
    if not (path / "config.json").exists():
        return None, f"base model checkpoint {path} is not there any more"
    return path, ""


def _training_losses(store, finetuned_model: ArtifactHandle) -> list[float]:
    training = store.local_path(finetuned_model) / "training.json"
    return json.loads(training.read_text()).get("losses", []) if training.exists() else []


# The challenger checkpoint is candidate_model's (docs/model-lifecycle.md).
@dg.asset(
    group_name=GROUP,
    kinds={"mlflow"},
    ins={"finetuned_model": dg.AssetIn("candidate_model")},
    retry_policy=COMPUTE_RETRY,
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    clean_corpus: ArtifactHandle,
    finetuned_model: ArtifactHandle,
    compressed_model: ArtifactHandle,
    augmented_corpus: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Accuracy, answer quality, efficiency and safety of the challenger, its compressed artifacts and the
    champion on one evaluation set."""
    # Imported here: they pull in torch and matplotlib, and every `dagster` command loads this module.
    from deepfeed.core.evaluate.report import comparison_metrics, feeding_headline, render_markdown, write_report
    from deepfeed.core.evaluate.scoring import EvaluationRequest, run_evaluation

    store = artifact_store.store()
    unknown = sorted(set(config.artifacts) - set(DESCRIPTIONS))
    if unknown:
        raise fail("evaluation_report.config.artifacts", f"unknown artifact(s) {unknown}; known: {list(DESCRIPTIONS)}")
    records, source = _eval_set(config, store, clean_corpus)
    overlap = training_overlap(records, read_table(store.local_path(augmented_corpus) / "records.parquet")).summary()
    if overlap["overlapping_eval_records"]:
        context.log.warning("%d evaluation records overlap training: %s", overlap["overlapping_eval_records"], overlap)
    try:
        toxicity = ToxicityScorer.from_settings(config.toxicity_threshold, config.use_perspective)
    except SafetyError as exc:
        raise fail("evaluation_report.config.use_perspective", str(exc)) from exc

    champion = mlflow.version_by_alias(CHAMPION) if config.compare_with_champion else None
    champion_checkpoint = None
    if champion is not None and str(champion.version) != str(finetuned_model.counts.get("mlflow_version")):
        # An unreachable champion is scored as an error, which fails the gate (closed).
        champion_checkpoint = _champion_checkpoint(champion.source, store)

    compression_passed, compression_detail = compression_gate_status(context, compressed_model, store)
    base_checkpoint, base_error = _base_checkpoint(finetuned_model)
    eval_config = to_core(config, EvaluationConfig, seed=config.eval_sample_seed)
    eval_hash = eval_set_hash(records)
    key_extra = {"use_perspective": config.use_perspective}
    champion_scores = base_scores = base_key = None
    if champion_checkpoint is not None and config.reuse_champion_scores:
        champion_scores = find_scores(
            store, score_cache_key(str(champion.version), champion.source, eval_hash, eval_config, key_extra)
        )
    if base_checkpoint is not None:
        fingerprint = f"base:{checkpoint_fingerprint(base_checkpoint)}"
        base_key = score_cache_key(fingerprint, str(base_checkpoint), eval_hash, eval_config, key_extra)
        base_scores = find_scores(store, base_key) if config.reuse_champion_scores else None
    outcome = run_evaluation(
        EvaluationRequest(
            store.local_path(finetuned_model) / "checkpoint",
            records,
            eval_config,
            compressed_dir=store.local_path(compressed_model),
            champion_checkpoint=champion_checkpoint,
            compression=CompressionConfig(),
            log=context.log.info,
            toxicity=toxicity,
            generate_compressed=config.generate_compressed,
            generate_logits_only=config.generate_logits_only,
            artifacts=tuple(config.artifacts),
            compression_passed=compression_passed,
            compression_detail=compression_detail,
            champion_scores=champion_scores,
            base_checkpoint=base_checkpoint,
            base_scores=base_scores,
            base_error=base_error,
            compression_required=config.compression_gate_required,
        )
    )
    stamp = {
        "eval_hash": eval_hash,
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dagster_run": context.run.run_id,
    }
    champion_result = outcome.by_name(CHAMPION_CANDIDATE)
    if champion_checkpoint is not None and champion_scores is None and champion_result is not None:
        # A champion scored here for the first time (registered before scores were kept).
        save_scores(
            store,
            score_cache_key(str(champion.version), champion.source, eval_hash, eval_config, key_extra),
            champion_result,
            [],
            {"model_version": champion.version, **stamp},
            run_id=context.run.run_id,
        )
    base_result = outcome.by_name(BASE)
    if base_key is not None and base_scores is None and base_result is not None:
        meta = {"model_version": "base", "checkpoint": str(base_checkpoint), **stamp}
        save_scores(store, base_key, base_result, [], meta, run_id=context.run.run_id)
    challenger_version = finetuned_model.counts.get("mlflow_version")
    if challenger_version is not None:
        # Saved under the registry version: if this challenger becomes champion, the next
        # evaluation on the same records reuses these scores instead of regenerating.
        save_scores(
            store,
            score_cache_key(
                str(challenger_version), checkpoint_source(store, finetuned_model), eval_hash, eval_config, key_extra
            ),
            outcome.by_name(CHALLENGER),
            outcome.samples,
            {"model_version": challenger_version, **stamp},
            run_id=context.run.run_id,
        )
    lineage = {
        "evaluation set": source,
        "data hash (clean corpus)": clean_corpus.content_hash,
        "fine-tuned version": finetuned_model.version,
        "training data hash (augmented corpus)": str(finetuned_model.counts.get("data_hash")),
        "base model": str(finetuned_model.counts.get("base_model")) + (" (scores reused)" if base_scores else ""),
        "mlflow challenger version": str(finetuned_model.counts.get("mlflow_version")),
        "champion version": (str(champion.version) + (" (scores reused)" if champion_scores else ""))
        if champion_checkpoint
        else "none",
        "evaluation set hash": eval_hash[:16],
        "compressed version": compressed_model.version,
        "training overlap (id / exact / near-duplicate)": f"{overlap['overlap_by_parent_id']} / "
        f"{overlap['overlap_by_exact_hash']} / "
        f"{overlap['overlap_by_near_duplicate']} of {len(records)} "
        f"evaluation records",
        "dagster run": context.run.run_id,
    }
    counts = {
        "eval_records": len(records),
        "overlapping_eval_records": overlap["overlapping_eval_records"],
        "gate_passed": outcome.gate.passed,
        "challenger_version": str(finetuned_model.counts.get("mlflow_version")),
    }
    with store.new_version("evaluation_report", counts, run_id=context.run.run_id) as version:
        write_table(version.path / "eval_set.parquet", records, EVAL_SET_FIELDS)
        files = write_report(
            version.path, outcome, lineage, config.max_relative_drop, _training_losses(store, finetuned_model)
        )
    folder = store.local_path(version.handle)
    handle = replace(version.handle, counts={**version.handle.counts, "gate_reasons": " | ".join(outcome.gate.reasons)})

    metrics = {
        f"eval_{c.name}_{k}": v
        for c in outcome.candidates
        for k, v in c.metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    metrics |= comparison_metrics(outcome)  # eval_challenger_vs_base_token_f1_diff, _diff_ci_low, ...
    mlflow.log(
        context,
        metrics=metrics | {"eval_gate_passed": float(outcome.gate.passed)},
        artifacts=[folder / p.name for p in files.values()] + [folder / "eval_set.parquet"],
        artifact_dir="evaluation_report",
    )
    plots = {
        t.removeprefix("plot:"): markdown_image(folder / p.name, t.removeprefix("plot:"))
        for t, p in files.items()
        if t.startswith("plot:")
    }
    challenger = outcome.by_name(CHALLENGER).metrics
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "did_feeding_help": feeding_headline(outcome),
            "report": dg.MetadataValue.md(render_markdown(outcome, lineage, plots, config.max_relative_drop)),
            "report_html": dg.MetadataValue.path(str(folder / "report.html")),
            "eval_set_strata": counts_table(strata_counts(records), key="language/domain"),
            "exclusions": counts_table(outcome.by_name(CHALLENGER).exclusions),
            "stage_seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in outcome.timings.items()}),
            **{
                k: float(challenger[k])
                for k in ("perplexity", "token_f1", "bleu4", "chrf", "toxicity_pass_rate")
                if isinstance(challenger.get(k), (int, float))
            },
        },
    )


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    additional_ins={"augmented_corpus": dg.AssetIn("augmented_corpus")},
    description="No evaluation record reached training: zero overlap by record/parent id and exact content (blocks), "
    "and by near-duplicate MinHash (warns: near-duplicates across the split come from the data, and make "
    "scores optimistic).",
)
def eval_set_disjoint_from_training(
    evaluation_report: ArtifactHandle, augmented_corpus: ArtifactHandle, artifact_store: ArtifactStoreResource
) -> dg.AssetCheckResult:
    store = artifact_store.store()
    eval_records = read_table(store.local_path(evaluation_report) / "eval_set.parquet")
    train_records = read_table(store.local_path(augmented_corpus) / "records.parquet")
    report = training_overlap(eval_records, train_records)
    leaked = report.by_parent_id + report.by_exact_hash
    pairs = leaked + report.by_near_duplicate
    return dg.AssetCheckResult(
        passed=not pairs,
        severity=dg.AssetCheckSeverity.ERROR if leaked else dg.AssetCheckSeverity.WARN,
        metadata={
            **report.summary(),
            "examples (eval id, training id)": dg.MetadataValue.json([list(p) for p in pairs[:20]]),
        },
        description=None
        if not pairs
        else (
            f"{report.overlapping} of {report.eval_records} evaluation records overlap training "
            f"({len(report.by_parent_id)} by id/parent id, {len(report.by_exact_hash)} exact, "
            f"{len(report.by_near_duplicate)} near-duplicate)"
        ),
    )


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="Promote only if no key metric's paired 95% interval of change vs the champion (the base model "
    "before the first champion) lies wholly below -3%, a first champion beats the base model on token F1 (interval "
    "above zero), the toxicity pass rate does not fall and the compression gate passed; anything not measured fails "
    "(docs/evaluation-gates.md).",
)
def promotion_gate(evaluation_report: ArtifactHandle, artifact_store: ArtifactStoreResource) -> dg.AssetCheckResult:
    summary = json.loads((artifact_store.store().local_path(evaluation_report) / "metrics.json").read_text())
    conditions = summary["gate"]["conditions"]
    failed = [c for c in conditions if not c["passed"]]
    return dg.AssetCheckResult(
        passed=bool(summary["gate"]["passed"]),
        metadata={
            "conditions": dg.MetadataValue.md(
                "\n".join(f"- {'✅' if c['passed'] else '❌'} **{c['name']}**: {c['detail']}" for c in conditions)
            ),
            "failed": ", ".join(c["name"] for c in failed) or "none",
        },
        description="; ".join(f"{c['name']}: {c['detail']}" for c in failed) or None,
    )


class ChampionModelConfig(dg.Config):
    ab_test: bool = Field(
        default=True,
        description="With a champion in place, a candidate that passed the gate takes the `challenger` alias and "
        "serves "
        "its A/B share; ab_test_report's decision then feeds the promotion gate. False: it becomes champion directly "
        "(a deployment without live traffic to test on). The first champion is always promoted by the gate.",
    )


@dg.asset_check(
    asset=evaluation_report,
    blocking=False,
    description="A candidate whose evaluation gate failed holds no `challenger` alias: the verdict is recorded on the "
    "version and an alias it held (a re-evaluated challenger) is removed, so the server stops its A/B share. "
    "Not blocking, so it runs exactly when the blocking promotion_gate stops champion_model.",
)
def failed_gate_revokes_challenger(
    context: dg.AssetCheckExecutionContext,
    evaluation_report: ArtifactHandle,
    mlflow: MlflowResource,
    locations: LocationsResource,
) -> dg.AssetCheckResult:
    version = str(evaluation_report.counts["challenger_version"])
    if evaluation_report.counts["gate_passed"]:
        return dg.AssetCheckResult(
            passed=True,
            metadata={"challenger_version": version, "gate": "passed"},
            description="gate passed: champion_model grants the alias or promotes",
        )
    reason = str(evaluation_report.counts.get("gate_reasons", "")) or "promotion gate failed"
    removed = apply_failed_gate(
        mlflow.client(),
        mlflow.registered_model_name,
        version,
        evaluation_report.version,
        reason,
        context.run.run_id,
        locations.audit_ledger(),
    )
    holder = mlflow.version_by_alias(CHALLENGER_ALIAS)
    still_serving = holder is not None and str(holder.version) == version
    return dg.AssetCheckResult(
        passed=not still_serving,
        metadata={"challenger_version": version, "gate": "failed", "alias_removed": removed},
        description=f"v{version} failed its gate ({reason[:300]})" + ("; challenger alias removed" if removed else ""),
    )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, output_required=False, retry_policy=IO_RETRY)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionModelConfig,
    evaluation_report: ArtifactHandle,
    mlflow: MlflowResource,
    locations: LocationsResource,
):
    """Acts on a passed gate (the blocking promotion_gate stops this asset otherwise): the first champion is promoted;
    with a champion in place the candidate becomes `challenger` for the A/B test (docs/model-lifecycle.md)."""
    version = str(evaluation_report.counts["challenger_version"])
    ledger = locations.audit_ledger()
    client, name = mlflow.client(), mlflow.registered_model_name
    if not evaluation_report.counts["gate_passed"]:
        reason = str(evaluation_report.counts.get("gate_reasons", ""))
        apply_failed_gate(client, name, version, evaluation_report.version, reason, context.run.run_id, ledger)
        context.log.info("challenger v%s not promoted: %s", version, reason)
        return
    champion = mlflow.version_by_alias(CHAMPION)
    if champion is not None and str(champion.version) == version:
        context.log.info("v%s is already the champion", version)
        return
    if champion is not None and config.ab_test:
        # evaluation_report re-scored this champion in the same run: the gate compared against it.
        move = grant_challenger(
            client,
            name,
            version,
            evaluation_report.version,
            str(champion.version),
            f"passed the promotion gate of evaluation_report {evaluation_report.version}",
            context.run.run_id,
            ledger,
        )
        context.log.info("v%s is the challenger of champion v%s (A/B test)", version, champion.version)
        yield dg.Output(
            {"version": version, "stage": "challenger", "champion": str(champion.version)},
            metadata={
                "challenger_version": version,
                "champion_version": str(champion.version),
                "replaced_challenger": move.from_version,
                "registered_model": name,
                "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
                **handle_metadata(evaluation_report),
            },
        )
        return
    previous = promote_gated(
        client,
        name,
        version,
        evaluation_report.version,
        f"passed the promotion gate of evaluation_report {evaluation_report.version}"
        + ("" if champion is None else " (ab_test: false)"),
        context.run.run_id,
        ledger,
        {"gate": evaluation_report.counts.get("gate_reasons", ""), "report_hash": evaluation_report.content_hash},
    )
    context.log.info("promoted v%s to champion (previous: %s)", version, previous)
    yield dg.Output(
        {"version": version, "stage": "champion", "previous": previous},
        metadata={
            "champion_version": version,
            "previous_version": previous or "none",
            "registered_model": name,
            "audit_ledger": dg.MetadataValue.path(str(ledger.path)),
            **handle_metadata(evaluation_report),
        },
    )
