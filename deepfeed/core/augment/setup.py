"""Building the augmenters from plain settings (shared by the asset, benchmark and ablation)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from deepfeed.core.augment.corpus import Augmenters, AugmentPlan
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask


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
    synonym_lm_rank: bool = False
    meaning_lm: bool = True
    lm_threshold: float = -12.0
    max_unk_share: float = 0.1
    masked_lm_path: str = ""
    glossary_path: str = ""
    fgsm_epsilon: float = 0.1
    fgsm_max_modification_rate: float = 0.15
    fgsm_side: str = "prompt"
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
                fgsm_side=self.fgsm_side,
                max_chars=self.max_chars,
                near_duplicate_threshold=self.near_duplicate_threshold,
                seed=self.seed,
                technique_params={
                    "synonym": {
                        "rate": self.synonym_rate,
                        "threshold": self.similarity_threshold,
                        "masked_lm": bool(self.masked_lm_path),
                        "ranked_by": "causal_lm" if self.synonym_lm_rank else "similarity",
                        "meaning_lm": self.meaning_lm,
                        "lm_threshold": self.lm_threshold,
                    },
                    "fgsm": {"epsilon": self.fgsm_epsilon, "max_modification_rate": self.fgsm_max_modification_rate},
                },
            )
        except ValueError as exc:
            raise AugmentSettingsError(str(exc).split()[0], str(exc)) from exc


def needs_model(settings: AugmentSettings) -> bool:
    """Whether the settings use the causal LM (FGSM, LM ranking, or the LM judge of meaning)."""
    uses_judge = (settings.synonym_ratio > 0 and not settings.masked_lm_path) or settings.fgsm_ratio > 0
    ranking = settings.synonym_ratio > 0 and settings.synonym_lm_rank
    return settings.fgsm_ratio > 0 or ranking or (uses_judge and settings.meaning_lm)


def build_augmenters(settings: AugmentSettings, model_path: Path | None = None) -> Augmenters:
    """Load only what the configured ratios use; bad settings raise AugmentSettingsError.

    ``model_path`` is the causal LM that FGSM attacks, that ranks synonym variants
    (``synonym_lm_rank``) and that judges the meaning of children MiniLM cannot read
    (``meaning_lm``); all share one loaded copy.
    """
    from deepfeed.core.data.glossary import load_glossary
    from deepfeed.core.platform.encoders import SentenceEncoder

    try:
        glossary = load_glossary(settings.glossary_path or None)
    except (OSError, ValueError) as exc:
        raise AugmentSettingsError("glossary_path", str(exc)) from exc
    protected = partial(protected_mask, glossary=glossary)
    ranking = settings.synonym_ratio > 0 and settings.synonym_lm_rank
    if ranking and settings.masked_lm_path:
        raise AugmentSettingsError(
            "synonym_lm_rank",
            "ranks lexicon variants; the masked-LM path (masked_lm_path) proposes one variant per record, so there is nothing to rank",
        )
    needed_by = (
        ("fgsm_ratio", settings.fgsm_ratio > 0),
        ("synonym_lm_rank", ranking),
        ("meaning_lm", needs_model(settings)),
    )
    for field, needed in needed_by:
        if needed and model_path is None:
            raise AugmentSettingsError(field, f"{field} needs a causal LM; switch it off or provide one")
    model = tokenizer = None
    if needs_model(settings):
        from deepfeed.core.train.modeling import load_model, load_tokenizer

        model, tokenizer = load_model(model_path), load_tokenizer(model_path)
    encoder = SentenceEncoder()
    augmenters = Augmenters(encoder=encoder)
    judge_lm = None
    if model is not None and settings.meaning_lm:
        from deepfeed.core.augment.contextual_synonyms import CausalLMRanker

        judge_lm = CausalLMRanker(model, tokenizer)
    lexicons = None
    if settings.synonym_ratio > 0 or settings.fgsm_ratio > 0:
        from deepfeed.core.augment.meaning import MeaningJudge

        lexicons = _lexicons()
        augmenters.judge = MeaningJudge(
            lexicons,
            encoder,
            judge_lm,
            settings.similarity_threshold,
            settings.lm_threshold,
            settings.max_unk_share,
            protected,
        )
    if settings.synonym_ratio > 0:
        ranker = None
        if ranking:
            from deepfeed.core.augment.contextual_synonyms import CausalLMRanker

            ranker = CausalLMRanker(model, tokenizer)
        augmenters.synonyms = _synonyms(settings, encoder, protected, lexicons, ranker, judge_lm)
    if settings.fgsm_ratio > 0:
        from deepfeed.core.augment.fgsm import FgsmTextAttack

        try:
            augmenters.fgsm = FgsmTextAttack(
                model,
                tokenizer,
                settings.fgsm_epsilon,
                settings.fgsm_max_modification_rate,
                protected,
                lexicons=lexicons,
                judge=augmenters.judge,
            )
        except ValueError as exc:
            field = "fgsm_epsilon" if "epsilon" in str(exc) else "fgsm_max_modification_rate"
            raise AugmentSettingsError(field, str(exc)) from exc
    return augmenters


def _lexicons() -> dict:
    from deepfeed.core.augment.zh_synonyms import CilinSynonyms
    from deepfeed.core.platform.home import activate_nltk_data

    activate_nltk_data()
    return {"en": WordNetSynonyms(), "zh": CilinSynonyms()}


def _synonyms(settings: AugmentSettings, encoder, protected, lexicons, ranker=None, judge_lm=None):
    from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer, MaskedLMReplacer

    if settings.masked_lm_path:
        try:
            return MaskedLMReplacer(
                Path(settings.masked_lm_path).expanduser(),
                encoder,
                protected,
                settings.similarity_threshold,
                settings.synonym_rate,
            )
        except (OSError, ValueError) as exc:
            raise AugmentSettingsError("masked_lm_path", str(exc)) from exc
    try:
        return ContextualSynonymReplacer(
            encoder,
            lexicons["en"],
            lexicons["zh"],
            protected,
            settings.similarity_threshold,
            settings.synonym_rate,
            settings.synonym_variants,
            ranker,
            judge_lm=judge_lm,
            lm_threshold=settings.lm_threshold,
            max_unk_share=settings.max_unk_share,
        )
    except ValueError as exc:
        field = "synonym_rate" if "rate" in str(exc) else "similarity_threshold"
        raise AugmentSettingsError(field, str(exc)) from exc
