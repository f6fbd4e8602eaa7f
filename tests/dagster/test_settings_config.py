"""The asset Configs are generated from the core settings: same fields, defaults and
descriptions in the Launchpad; unknown names rejected; presets valid for their jobs."""

import dataclasses

import dagster as dg
import pytest
from pydantic import Field

from deepfeed.assets.augment import AugmentedCorpusConfig
from deepfeed.assets.compression import CompressedModelConfig
from deepfeed.assets.corpus import CleanCorpusConfig
from deepfeed.assets.evaluation import EvaluationReportConfig
from deepfeed.assets.incremental import IncrementalModelConfig
from deepfeed.assets.monitoring import ABTestReportConfig, DriftReportConfig
from deepfeed.assets.training import FinetunedModelConfig
from deepfeed.core.augment.setup import AugmentSettings
from deepfeed.core.compress.settings import CompressionConfig
from deepfeed.core.data.cleaning import CleaningConfig
from deepfeed.core.evaluate.settings import EvaluationConfig
from deepfeed.core.loop.abtest import ABTestSettings
from deepfeed.core.loop.monitoring import DriftSettings
from deepfeed.core.platform import settings
from deepfeed.core.platform.settings import SettingsError
from deepfeed.core.train.settings import TrainingConfig
from deepfeed.definitions import defs
from deepfeed.pipelines import presets
from deepfeed.pipelines.config import dagster_config, derivation, extra_fields, to_core

DERIVED = [
    (FinetunedModelConfig, TrainingConfig),
    (IncrementalModelConfig, TrainingConfig),
    (EvaluationReportConfig, EvaluationConfig),
    (CompressedModelConfig, CompressionConfig),
    (CleanCorpusConfig, CleaningConfig),
    (AugmentedCorpusConfig, AugmentSettings),
    (DriftReportConfig, DriftSettings),
    (ABTestReportConfig, ABTestSettings),
]


def schema_fields(config_cls) -> dict:
    """The fields as Dagster (and so the Launchpad) sees them."""
    return config_cls.to_config_schema().as_field().config_type.fields


@pytest.mark.parametrize("config_cls, core", DERIVED, ids=lambda c: c.__name__)
def test_the_dagster_config_has_every_core_setting_with_its_default_and_description(config_cls, core):
    fields = schema_fields(config_cls)
    found = derivation(config_cls)
    assert found.core is core
    stream_defaults = presets.INCREMENTAL_STREAM if config_cls is IncrementalModelConfig else {}
    for config_name, core_name in found.fields.items():
        field = fields[config_name]
        assert field.description, config_name
        expected = stream_defaults.get(core_name, settings.default(core, core_name))
        if isinstance(expected, tuple):
            assert getattr(config_cls(), config_name) == list(expected)
        else:
            assert field.default_provided and field.default_value == expected, config_name
    # Every other field is declared as the asset's own, with a description too.
    assert set(fields) == set(found.fields) | set(extra_fields(config_cls))
    assert all(fields[name].description for name in extra_fields(config_cls))


def test_every_core_setting_is_reachable_and_the_asset_defaults_are_the_core_defaults():
    derived = derivation(FinetunedModelConfig).fields
    assert set(derived.values()) == set(settings.settings_fields(TrainingConfig))
    assert to_core(FinetunedModelConfig(), TrainingConfig) == TrainingConfig()
    assert to_core(CompressedModelConfig(), CompressionConfig) == CompressionConfig()
    assert to_core(AugmentedCorpusConfig(), AugmentSettings) == AugmentSettings()
    assert to_core(DriftReportConfig(), DriftSettings) == DriftSettings()
    assert to_core(ABTestReportConfig(), ABTestSettings) == ABTestSettings()
    incremental = to_core(IncrementalModelConfig(), TrainingConfig)
    assert incremental == dataclasses.replace(TrainingConfig(), **presets.INCREMENTAL_STREAM)


def test_descriptions_reach_the_launchpad_schema():
    properties = FinetunedModelConfig.model_json_schema()["properties"]
    assert properties["max_grad_norm"]["description"] == settings.description(TrainingConfig, "max_grad_norm")
    assert properties["max_grad_norm"]["default"] == 1.0
    assert all(p.get("description") for p in properties.values())
    # A stream may say what a setting means there; the default stays the preset's.
    incremental = IncrementalModelConfig.model_json_schema()["properties"]
    assert "feedback batch" in incremental["max_steps"]["description"]
    assert incremental["learning_rate"]["default"] == 3e-5


def test_to_core_round_trip_and_overrides():
    config = FinetunedModelConfig(
        max_steps=7, max_grad_norm=0.5, eval_every=2, elastic=True, start_from="champion", nproc=2
    )
    training = to_core(config, TrainingConfig)
    assert (training.max_steps, training.max_grad_norm, training.eval_every, training.elastic) == (7, 0.5, 2, True)
    assert to_core(config, TrainingConfig, seed=3).seed == 3
    compression = to_core(CompressedModelConfig(fp32_layers=["lm_head"], onnx_block_size=64), CompressionConfig)
    assert compression.fp32_layers == ("lm_head",) and compression.onnx_block_size == 64
    # The renamed-and-excluded seed of evaluation_report is the asset's to pass.
    evaluation = to_core(EvaluationReportConfig(max_new_tokens=3, eval_sample_seed=5), EvaluationConfig, seed=5)
    assert (evaluation.max_new_tokens, evaluation.seed) == (3, 5)


def test_to_core_names_an_unknown_override_and_a_wrong_core_class():
    with pytest.raises(SettingsError, match="unknown setting.*eval_sample"):
        to_core(FinetunedModelConfig(), TrainingConfig, eval_sample=3)
    with pytest.raises(TypeError, match="holds TrainingConfig settings, not CompressionConfig"):
        to_core(FinetunedModelConfig(), CompressionConfig)


def test_dagster_config_refuses_shadowed_or_unknown_settings():
    with pytest.raises(SettingsError, match="already come from DriftSettings"):
        dagster_config(DriftSettings, name="Bad", alpha=(float, Field(default=0.1, description="Shadow.")))
    with pytest.raises(SettingsError, match="defaults=.*no setting.*window"):
        dagster_config(DriftSettings, name="Bad", defaults={"window": 3})
    with pytest.raises(SettingsError, match="exclude=.*no setting.*alpa"):
        dagster_config(DriftSettings, name="Bad", exclude=("alpa",))


@pytest.mark.parametrize(
    "job, op, field",
    [
        ("full_chain_job", "finetuned_model", "max_stepz"),
        ("full_chain_job", "compressed_model", "keep_fractoin"),
        ("incremental_job", "incremental_model", "replay"),
    ],
)
def test_an_unknown_field_in_a_run_config_is_rejected_by_dagster(job, op, field):
    run_config = {"ops": {op: {"config": {field: 1}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=f'unexpected config entry "{field}"'):
        dg.validate_run_config(defs.resolve_job_def(job), run_config)


@pytest.mark.parametrize("name", sorted(presets.RUN_CONFIGS))
def test_every_preset_is_valid_for_its_job(name):
    job, ops = presets.RUN_CONFIGS[name]
    resolved = dg.validate_run_config(defs.resolve_job_def(job), {"ops": ops})
    for op, op_config in ops.items():
        for key, value in op_config["config"].items():
            assert resolved["ops"][op]["config"][key] == value


def test_the_knowledge_review_job_carries_its_preset():
    resolved = dg.validate_run_config(defs.resolve_job_def("knowledge_review_job"), {})
    config = resolved["ops"]["finetuned_model"]["config"]
    assert {k: config[k] for k in presets.KNOWLEDGE_REVIEW} == presets.KNOWLEDGE_REVIEW


def test_the_incremental_stream_preset_names_training_settings_only():
    assert set(presets.INCREMENTAL_STREAM) <= set(settings.settings_fields(TrainingConfig))


# The fields each asset Config had before it was generated: run configs written for them stay valid.
EARLIER_FIELDS = {
    FinetunedModelConfig: "batch_size checkpoint_every distill_alpha distill_temperature eval_samples ewc_lambda "
    "feedback_root fgsm_epsilon fgsm_weight final_learning_rate fisher_samples gradient_checkpointing "
    "include_feedback_history learning_rate log_every lora_alpha lora_rank max_length max_steps method nproc packing "
    "precision seed sharding start_from teacher_cache teacher_cache_budget_gb teacher_cache_top_k teacher_path "
    "warmup_steps weight_decay",
    IncrementalModelConfig: "checkpoint_every elastic_factor elastic_min_scale elastic_tolerance eval_every "
    "eval_samples ewc_lambda feedback_root learning_rate max_steps method nproc replay_ratio teacher_path warmup_steps",
    EvaluationReportConfig: "artifacts batch_size bootstrap_samples compare_with_champion compression_gate_required "
    "eval_sample_seed generate_compressed generate_logits_only generation_batch_size max_eval_records "
    "max_generation_records max_length max_new_tokens max_relative_drop reference_set_path reuse_champion_scores "
    "toxicity_threshold use_perspective",
    CleanCorpusConfig: "batch_size coverage_embeddings dp_epsilon dp_epsilon_total eval_fraction glossary_path "
    "glossary_tags k log_every_batches max_chars max_suppression min_chars near_duplicate_threshold "
    "quasi_identifiers scrub_pii split_seed use_glossary workers",
    DriftReportConfig: "alpha confidence_std correction embedding_features fail_on_alert min_samples serving_home "
    "window_end window_hours",
    ABTestReportConfig: "act_on_decision alpha min_hours min_users_per_arm mixture_sd serving_home split",
}


@pytest.mark.parametrize("config_cls", list(EARLIER_FIELDS), ids=lambda c: c.__name__)
def test_every_field_of_the_earlier_asset_configs_is_still_there(config_cls):
    assert set(EARLIER_FIELDS[config_cls].split()) <= set(schema_fields(config_cls))


def test_the_drift_sensors_policy_defaults_are_the_drift_reports():
    from deepfeed.resources.monitoring_policy import MonitoringPolicyResource

    policy, report = MonitoringPolicyResource(), DriftSettings()
    assert (
        policy.drift_window_hours,
        policy.drift_alpha,
        policy.drift_min_samples,
        policy.confidence_std,
        policy.drift_embedding_features,
    ) == (report.window_hours, report.alpha, report.min_samples, report.confidence_std, report.embedding_features)
