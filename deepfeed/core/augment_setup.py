"""Building the augmenters from plain settings (shared by the asset, benchmark and ablation)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from deepfeed.core.augment_corpus import AugmentPlan, Augmenters
from deepfeed.core.augmentation import WordNetSynonyms, protected_mask


class AugmentSettingsError(ValueError):
    """A setting is unusable; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class AugmentSettings:
    synonym_ratio: float = 0.5
    structural_ratio: float = 0.5
    fgsm_ratio: float = 0.1
    fgsm_max_records: int = 16
    synonym_rate: float = 0.15
    similarity_threshold: float = 0.85
    synonym_variants: int = 2
    masked_lm_path: str = ""
    glossary_path: str = ""
    fgsm_epsilon: float = 0.1
    fgsm_max_modification_rate: float = 0.15
    max_chars: int = 2000
    near_duplicate_threshold: float = 0.9
    seed: int = 0

    def plan(self) -> AugmentPlan:
        try:
            return AugmentPlan(
                synonym_ratio=self.synonym_ratio,
                structural_ratio=self.structural_ratio,
                fgsm_ratio=self.fgsm_ratio,
                fgsm_max_records=self.fgsm_max_records,
                max_chars=self.max_chars,
                near_duplicate_threshold=self.near_duplicate_threshold,
                seed=self.seed,
                technique_params={
                    "synonym": {"rate": self.synonym_rate, "threshold": self.similarity_threshold, "masked_lm": bool(self.masked_lm_path)},
                    "fgsm": {"epsilon": self.fgsm_epsilon, "max_modification_rate": self.fgsm_max_modification_rate},
                },
            )
        except ValueError as exc:
            raise AugmentSettingsError(str(exc).split()[0], str(exc)) from exc


def build_augmenters(settings: AugmentSettings, fgsm_model_path: Path | None = None) -> Augmenters:
    """Load only what the configured ratios use; bad settings raise AugmentSettingsError."""
    from deepfeed.core.encoders import SentenceEncoder
    from deepfeed.core.glossary import load_glossary

    try:
        glossary = load_glossary(settings.glossary_path or None)
    except (OSError, ValueError) as exc:
        raise AugmentSettingsError("glossary_path", str(exc)) from exc
    protected = partial(protected_mask, glossary=glossary)
    encoder = SentenceEncoder()
    augmenters = Augmenters(encoder=encoder)
    if settings.synonym_ratio > 0:
        augmenters.synonyms = _synonyms(settings, encoder, protected)
    if settings.fgsm_ratio > 0:
        if fgsm_model_path is None:
            raise AugmentSettingsError("fgsm_ratio", "FGSM needs a model; set fgsm_ratio: 0 or provide one")
        from deepfeed.core.fgsm import FgsmTextAttack
        from deepfeed.core.modeling import load_model, load_tokenizer

        try:
            augmenters.fgsm = FgsmTextAttack(
                load_model(fgsm_model_path), load_tokenizer(fgsm_model_path), settings.fgsm_epsilon, settings.fgsm_max_modification_rate, protected
            )
        except ValueError as exc:
            field = "fgsm_epsilon" if "epsilon" in str(exc) else "fgsm_max_modification_rate"
            raise AugmentSettingsError(field, str(exc)) from exc
    return augmenters


def _synonyms(settings: AugmentSettings, encoder, protected):
    from deepfeed.core.contextual_synonyms import ContextualSynonymReplacer, MaskedLMReplacer

    if settings.masked_lm_path:
        try:
            return MaskedLMReplacer(Path(settings.masked_lm_path).expanduser(), encoder, protected, settings.similarity_threshold, settings.synonym_rate)
        except (OSError, ValueError) as exc:
            raise AugmentSettingsError("masked_lm_path", str(exc)) from exc
    from deepfeed.core.offline import activate_nltk_data
    from deepfeed.core.zh_synonyms import CilinSynonyms

    activate_nltk_data()
    try:
        return ContextualSynonymReplacer(
            encoder, WordNetSynonyms(base_forms_only=True), CilinSynonyms(), protected, settings.similarity_threshold, settings.synonym_rate, settings.synonym_variants
        )
    except ValueError as exc:
        field = "synonym_rate" if "rate" in str(exc) else "similarity_threshold"
        raise AugmentSettingsError(field, str(exc)) from exc
