"""Stage settings are defined once: typed dataclass fields with a default and a description,
built from mappings that name every unknown key instead of dropping it."""

import dataclasses
import inspect

import pytest

from deepfeed.core.augment.setup import AugmentSettings
from deepfeed.core.compress.settings import CompressionConfig
from deepfeed.core.data.cleaning import CleaningConfig
from deepfeed.core.data.coverage import CoverageConfig
from deepfeed.core.evaluate.settings import EvaluationConfig
from deepfeed.core.loop.abtest import ABTestSettings, analyze_ab
from deepfeed.core.loop.monitoring import DriftSettings, drift_evidence
from deepfeed.core.platform import settings
from deepfeed.core.platform.settings import SettingsError, build, setting
from deepfeed.core.train.distill import DistillationConfig
from deepfeed.core.train.settings import TrainingConfig

SETTINGS = [
    TrainingConfig,
    DistillationConfig,
    EvaluationConfig,
    CleaningConfig,
    CoverageConfig,
    CompressionConfig,
    AugmentSettings,
    DriftSettings,
    ABTestSettings,
]


@dataclasses.dataclass(frozen=True)
class Example:
    steps: int = setting(3, "Steps.", ge=1)
    layers: tuple[str, ...] = setting(["a"], "Layers kept.")


def test_an_unknown_setting_is_named_with_the_known_ones():
    with pytest.raises(SettingsError) as raised:
        build(TrainingConfig, {"max_steps": 4, "max_stepz": 5, "lerning_rate": 1.0})
    message = str(raised.value)
    assert "unknown setting(s) lerning_rate, max_stepz" in message
    assert "max_steps" in message.split("known:")[1] and "max_grad_norm" in message


def test_build_takes_lists_for_tuple_settings_and_checks_bounds():
    built = build(Example, {"layers": ["x", "y"]}, steps=2)
    assert built == Example(steps=2, layers=("x", "y"))
    assert Example().layers == ("a",)  # a list default is stored as a tuple (frozen, shared)
    with pytest.raises(SettingsError, match=r"Example.steps=0: must be >= 1"):
        build(Example, steps=0)


def test_setting_needs_a_description_and_known_constraints():
    with pytest.raises(TypeError, match="description"):
        setting(1, " ")
    with pytest.raises(TypeError, match="unknown constraint"):
        setting(1, "One.", minimum=0)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_has_a_type_a_default_and_a_description(cls):
    types = settings.field_types(cls)
    for name in settings.settings_fields(cls):
        assert types[name] is not None
        assert len(settings.description(cls, name)) > 10, f"{cls.__name__}.{name}"
        settings.default(cls, name)  # raises when there is none
    assert build(cls) == cls()  # the declared defaults construct a valid instance


def test_defaults_are_single_sourced():
    # The incremental stream's and distillation's values are stated once and reused.
    assert settings.default(TrainingConfig, "distill_temperature") == settings.default(
        DistillationConfig, "temperature"
    )
    assert (settings.default(TrainingConfig, "max_steps"), settings.default(TrainingConfig, "warmup_steps")) == (30, 3)
    # The functions that take the drift and A/B settings one by one default to the same values.
    drift = inspect.signature(drift_evidence).parameters
    for name, value in settings.defaults(DriftSettings).items():
        if name in drift:
            assert drift[name].default == value, name
    ab = inspect.signature(analyze_ab).parameters
    for name in ("min_hours", "alpha", "min_users_per_arm", "mixture_sd"):
        assert ab[name].default == settings.default(ABTestSettings, name), name
