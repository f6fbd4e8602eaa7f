"""Building the augmenters from plain settings (shared by the asset, benchmark and ablation)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from deepfeed.core.augment.corpus import Augmenters, AugmentPlan
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.platform.settings import setting

SYNONYM_LANGUAGES = ("en", "zh")


class AugmentSettingsError(ValueError):
    """A setting is unusable; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class AugmentSettings:
    """What augmented_corpus generates; its Dagster config is generated from these fields."""

    synonym_ratio: float = setting(
        0.5, "Share of train records that get a contextual-synonym child (0 switches the technique off)."
    )
    structural_ratio: float = setting(
        0.5, "Share of train records that get a sentence- or clause-reordered child, where order carries no meaning."
    )
    fgsm_ratio: float = setting(
        0.1, "Share of train records that get an FGSM adversarial child from the base model's gradients."
    )
    fgsm_max_records: int = setting(
        16,
        "Most records attacked with FGSM per run (each costs a forward and backward pass of the model); the rest are "
        "skipped with the reason.",
    )
    synonym_rate: float = setting(0.15, "Share of the eligible words replaced in a synonym child.")
    similarity_threshold: float = setting(
        0.85,
        "Least cosine similarity (MiniLM sentence embeddings) between a synonym or FGSM child and its parent, where "
        "MiniLM can read the text.",
    )
    synonym_variants: int = setting(
        2,
        "Candidate variants scored per record; the most similar one above the threshold is kept (or, with "
        "synonym_lm_rank, the most probable one).",
    )
    synonym_lm_rank: bool = setting(
        False,
        "Rank the synonym variants that pass the similarity threshold by their sentence log-probability under the base "
        "causal LM (batched; slower, so off by default). MiniLM similarity stays the filter. Lexicon path only: not "
        "with masked_lm_path.",
    )
    meaning_lm: bool = setting(
        True,
        "Judge the meaning of children MiniLM cannot read (mostly [UNK] to it: Chinese) by the base causal LM's "
        "log-probability change; off: those children stand on the lexical gate alone.",
    )
    lm_threshold: float = setting(
        -12.0, "Least log-probability change (nats, child minus parent) under the base LM for a child the LM judges."
    )
    meaning_lm_everywhere: bool = setting(
        True,
        "With meaning_lm, the base LM also checks the children MiniLM judges (English): MiniLM barely moves for a "
        "synonym in the wrong sense ('hard ball' -> 'difficult ball'), the LM finds most of them far less likely.",
    )
    lm_check_threshold: float = setting(
        -4.0,
        "Least log-probability change (nats) under the base LM for a child MiniLM judged, with "
        "meaning_lm_everywhere. Stricter than lm_threshold because the LM reads these texts well: on two samples of "
        "real English children, 88% of those at or above -4 read as sensible, against 53-57% at -12.",
    )
    synonym_languages: str = setting(
        "en",
        "Languages that get synonym children, comma-separated: en, zh. Chinese is off by default: the bundled Cilin "
        "sets are loose (出来 -> 出去) and no judge available offline reads Chinese, so only 12 of 30 sampled Chinese "
        "children kept the meaning. Add zh where the base model reads Chinese, and check a sample first.",
    )
    max_unk_share: float = setting(
        0.1,
        "Largest share of [UNK] word pieces in MiniLM's reading of a text for MiniLM to judge it; above it the LM "
        "judges.",
    )
    masked_lm_path: str = setting(
        "",
        "Local masked-LM folder (BERT-style, with its head): use nlpaug's fill-mask replacement instead of "
        "WordNet/Cilin. Empty: lexicons.",
    )
    glossary_path: str = setting(
        "", "Glossary (.yaml/.csv) whose terms are never altered. Empty: the shipped ICD-10 example."
    )
    fgsm_epsilon: float = setting(0.1, "FGSM step size ε in embedding space (at most 0.5).")
    fgsm_max_modification_rate: float = setting(
        0.15,
        "Most words an FGSM child may change, as a share of its words (at least one swap where any word may change).",
    )
    fgsm_side: str = setting(
        "prompt",
        "Which side of a pair FGSM perturbs: 'prompt' (robustness: the reference answer stays the target) or "
        "'response' (measurement only: it teaches perturbed answers).",
    )
    max_chars: int = setting(2000, "Longer records are passed through unaugmented (reason recorded).")
    near_duplicate_threshold: float = setting(
        0.9, "Children whose MinHash Jaccard similarity to an existing record reaches this are dropped."
    )
    seed: int = setting(0, "Seed of every random choice, for reproducible corpora.")

    def languages(self) -> tuple[str, ...]:
        """The languages of ``synonym_languages``, checked."""
        names = tuple(dict.fromkeys(part.strip().lower() for part in self.synonym_languages.split(",") if part.strip()))
        unknown = [name for name in names if name not in SYNONYM_LANGUAGES]
        if unknown:
            raise AugmentSettingsError(
                "synonym_languages",
                f"unknown language {', '.join(unknown)}; choose from {', '.join(SYNONYM_LANGUAGES)}",
            )
        return names

    def plan(self) -> AugmentPlan:
        languages = list(self.languages())
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
                        "meaning_lm_everywhere": self.meaning_lm and self.meaning_lm_everywhere,
                        "lm_threshold": self.lm_threshold,
                        "lm_check_threshold": self.lm_check_threshold,
                        "languages": languages,
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
            "ranks lexicon variants; the masked-LM path (masked_lm_path) proposes one variant per record, so there is "
            "nothing to rank",
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
    judge_lm = ranking_model = None
    if model is not None and (settings.meaning_lm or ranking):
        from deepfeed.core.augment.lm_scoring import scoring_model

        ranking_model = scoring_model(model, shared=settings.fgsm_ratio > 0)
    if model is not None and settings.meaning_lm:
        from deepfeed.core.augment.lm_scoring import CausalLMRanker

        judge_lm = CausalLMRanker(ranking_model, tokenizer)
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
            lm_everywhere=settings.meaning_lm_everywhere,
            lm_check_threshold=settings.lm_check_threshold,
        )
    if settings.synonym_ratio > 0:
        ranker = None
        if ranking:
            from deepfeed.core.augment.lm_scoring import CausalLMRanker

            ranker = CausalLMRanker(ranking_model, tokenizer)
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
            lm_everywhere=settings.meaning_lm_everywhere,
            lm_check_threshold=settings.lm_check_threshold,
            languages=settings.languages(),
        )
    except ValueError as exc:
        field = "synonym_rate" if "rate" in str(exc) else "similarity_threshold"
        raise AugmentSettingsError(field, str(exc)) from exc
