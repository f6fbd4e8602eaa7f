"""Contextual synonym replacement: in-context candidates, filtered by a judge of meaning.

Candidates come from a lexicon (WordNet for English, Cilin for Chinese) that reads the
whole sentence first: part of speech, names, idioms, pronouns and inflection decide
which words may change and into what (:mod:`~deepfeed.core.augment.en_synonyms`,
:mod:`~deepfeed.core.augment.zh_synonyms`). Each text gets a few variants with different words
replaced, and all variants of a batch are judged together
(:class:`~deepfeed.core.augment.meaning.MeaningJudge`): by MiniLM cosine similarity where the
encoder reads the text, by the base causal LM's log-probability change where MiniLM
sees mostly [UNK] (Chinese). The variant kept is the best-scoring one that passes.
``languages`` names the languages that get children at all: the shipped settings leave
Chinese out (``synonym_languages``), for reasons given in docs/augmentation.md.

Batching is what makes this fast: nlpaug's contextual augmenter runs a masked LM per
sentence per word (nlpaug issue #248); here one encoder pass scores a whole batch.

Optionally a causal LM ranks the variants that pass the similarity filter
(:class:`CausalLMRanker`): the log-probability of the whole sentence with the
substitute judges fluency and fit on both sides of the word, which a sentence embedding
barely sees ("made a decision" vs "made a determination" embed alike). MiniLM stays the
filter: the LM only orders what already kept the meaning.

With a user-supplied local masked LM, :class:`MaskedLMReplacer` uses nlpaug's
``ContextualWordEmbsAug`` fill-mask path instead, under the same protection and the
same similarity filter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfeed.core.augment.lm_scoring import CausalLMRanker
from deepfeed.core.augment.meaning import Verdict
from deepfeed.core.platform.encoders import SentenceEncoder

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
_EN_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")

Spans = list[tuple[int, int]]
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}
# nlpaug skips whitespace tokens matching this: anything with a digit, placeholder
# bracket, URL or e-mail mark or code tick (the token-level view of protected_mask).
_NLPAUG_PROTECTED = r".*(?:\d|<|>|@|`|https?:|www\.)"


def text_script(text: str) -> str:
    """'en', 'zh', 'mixed' (both scripts in earnest) or 'none' (no letters at all)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return "none"
    # A few Latin letters in Chinese text (a drug name, "CT") do not make it mixed,
    # while a Chinese character is worth ~3 Latin letters of content.
    share = 3 * cjk / (3 * cjk + latin)
    if share >= 0.8:
        return "zh"
    if share <= 0.2:
        return "en"
    return "mixed"


def _inside(start: int, end: int, protected: Spans) -> bool:
    return any(start < b and a < end for a, b in protected)


@dataclass(frozen=True)
class SynonymEdit:
    text: str
    replaced: int
    # MiniLM cosine to the parent; None where the encoder cannot read the text (Chinese).
    similarity: float | None
    # Sentence log-probability under the ranking causal LM; None when nothing ranked it.
    lm_logprob: float | None = None
    judge: str = "encoder"  # which model judged the meaning: encoder, lm, or lexicon (gate only)
    meaning_score: float | None = None  # that judge's score (cosine, or log-probability change)


def _score(verdict) -> float:
    # Where the LM checked an encoder-judged child its change ranks the variants: it told
    # right from wrong senses far better than the cosine on sampled English children.
    if verdict.lm_change is not None:
        return verdict.lm_change
    return float("-inf") if verdict.score is None else verdict.score


@dataclass(frozen=True)
class Skip:
    reason: str


class ContextualSynonymReplacer:
    """Lexicon candidates ranked and filtered in context by sentence similarity.

    ``english`` and ``chinese`` are lexicons with ``candidates(word) -> list[str]``
    (:class:`~deepfeed.core.augment.protected.WordNetSynonyms`,
    :class:`~deepfeed.core.augment.zh_synonyms.CilinSynonyms`); a missing one means that
    language has no synonym resource and its texts are skipped with that reason.
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        english=None,
        chinese=None,
        protected: Callable[[str], Spans] | None = None,
        threshold: float = 0.85,
        rate: float = 0.15,
        variants: int = 3,
        ranker: CausalLMRanker | None = None,
        judge_lm: CausalLMRanker | None = None,
        lm_threshold: float = -12.0,
        max_unk_share: float = 0.1,
        lm_everywhere: bool = False,
        lm_check_threshold: float | None = None,
        languages: Collection[str] = ("en", "zh"),
    ):
        from deepfeed.core.augment.meaning import MeaningJudge

        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.encoder = encoder
        self.lexicons = {"en": english, "zh": chinese}
        self.languages = frozenset(languages)
        self.protected = protected or (lambda text: [])
        self.threshold = threshold
        self.rate = rate
        self.variants = max(1, variants)
        self.ranker = ranker
        # The judge of meaning: MiniLM where it reads the text, the causal LM where MiniLM
        # sees mostly [UNK] (Chinese); see deepfeed.core.augment.meaning.
        self.judge = MeaningJudge(
            self.lexicons,
            encoder,
            judge_lm,
            threshold,
            lm_threshold,
            max_unk_share,
            self.protected,
            lm_everywhere,
            lm_check_threshold,
        )

    def script(self, text: str) -> str | Skip:
        """The language whose lexicon applies, judged on the unprotected text."""
        if not text.strip():
            return Skip("empty text")
        pieces, last = [], 0
        for a, b in self.protected(text):
            pieces.append(text[last:a])
            last = max(last, b)
        script = text_script("".join(pieces) + text[last:])
        if script == "none":
            return Skip("nothing but protected spans, numbers and punctuation")
        if script == "mixed":
            return Skip("mixed-language text: no single synonym resource applies")
        if "```" in text:
            # The prose around code names its parts ("a linked list", "a static method"):
            # terms of art with no synonyms, which sampled children turned into nonsense.
            return Skip("contains code: its terms have no synonyms")
        if script not in self.languages:
            return Skip(f"{LANGUAGE_NAMES.get(script, script)} synonyms are off (synonym_languages)")
        return script

    def _words(self, text: str, script: str) -> Spans:
        if script == "zh":
            from deepfeed.core.augment.zh_synonyms import segment

            spans = [(a, b) for a, b in segment(text) if _CJK.match(text[a])]
        else:
            spans = [m.span() for m in _EN_WORD.finditer(text)]
        protected = self.protected(text)
        return [(a, b) for a, b in spans if not _inside(a, b, protected)]

    def _options(self, text: str, script: str, lexicon) -> tuple[list[tuple[int, int, list[str]]], int]:
        """(replaceable words with their candidates, number of words) of a text."""
        if hasattr(lexicon, "options"):
            # The context-aware path: part of speech, names, idioms and inflection decided
            # on the whole sentence (en_synonyms, zh_synonyms).
            words = self._words(text, script)
            return [o for o in lexicon.options(text, self.protected(text)) if o[2]], len(words)
        words = self._words(text, script)
        options = [(a, b, lexicon.candidates(text[a:b])) for a, b in words]
        return [o for o in options if o[2]], len(words)

    def _variants(self, text: str, script: str, rng: random.Random) -> list[tuple[str, int]] | Skip:
        lexicon = self.lexicons.get(script)
        if lexicon is None:
            return Skip(f"no synonym resource for {script} text")
        options, n_words = self._options(text, script, lexicon)
        if not options:
            return Skip("no replaceable word")
        count = min(len(options), max(1, round(self.rate * n_words)))
        out: list[tuple[str, int]] = []
        for _ in range(self.variants):
            chosen = sorted(rng.sample(options, count))
            pieces, last = [], 0
            for a, b, candidates in chosen:
                word = rng.choice(candidates)
                if text[a].isupper() and not hasattr(lexicon, "options"):
                    word = word[0].upper() + word[1:]
                pieces += [text[last:a], word]
                last = b
            pieces.append(text[last:])
            variant = "".join(pieces)
            if variant != text and variant not in (v for v, _ in out):
                out.append((variant, count))
        return out or Skip("no replaceable word")

    def replace_batch(self, texts: Sequence[str], rng: random.Random) -> list[SynonymEdit | Skip]:
        """One edit (or the reason for none) per text; one model call per batch and judge round."""
        plans: list[list[tuple[str, int]] | Skip] = []
        scripts: list[str] = []
        for text in texts:
            script = self.script(text)
            scripts.append(script if isinstance(script, str) else "")
            plans.append(script if isinstance(script, Skip) else self._variants(text, script, rng))
        originals = [i for i, p in enumerate(plans) if not isinstance(p, Skip)]
        by_text = self._judge_variants(texts, scripts, plans, originals)
        kept: dict[int, list[tuple[int, float]]] = {}  # text -> (variant, score) that kept the meaning
        results: list[SynonymEdit | Skip | None] = []
        for i, plan in enumerate(plans):
            if isinstance(plan, Skip):
                results.append(plan)
                continue
            judged = by_text[i]
            passing = [(v, _score(verdict)) for v, verdict in judged if verdict.keeps_meaning]
            if passing:
                kept[i] = passing
                results.append(None)
            else:
                best = max(judged, key=lambda p: _score(p[1]))[1]
                results.append(Skip(f"no variant kept the meaning ({best.judge}: {best.reason})"))
        scores = self._rank_scores(plans, kept)
        for i, passing in kept.items():
            verdict_of = dict(by_text[i])
            if (i, passing[0][0]) not in scores:
                v, _ = max(passing, key=lambda p: p[1])
                lm_logprob = None
            else:
                v, _ = max(passing, key=lambda p: scores[(i, p[0])])
                lm_logprob = round(scores[(i, v)], 4)
            verdict = verdict_of[v]
            similarity = verdict.score if verdict.judge == "encoder" else None
            results[i] = SynonymEdit(
                plans[i][v][0], plans[i][v][1], similarity, lm_logprob, verdict.judge, verdict.score
            )
        return results

    def _judge_variants(self, texts, scripts, plans, originals) -> dict[int, list[tuple[int, Verdict]]]:
        """text -> [(variant, verdict)] of the variants judged.

        MiniLM is cheap: every variant of a text it reads is judged at once, and the best
        score wins. The LM judge (Chinese) is not: its texts are judged one variant per
        round, all texts of the batch together, and a text leaves once a variant passes
        (it keeps that one). With an LM ranker every variant is judged, since the ranker
        chooses among all that pass."""
        lm_judged = set()
        if self.ranker is None:
            lm_judged = {i for i in originals if self.judge.scorer(texts[i]) == "lm"}
        pairs = [(i, v) for i in originals for v in (range(len(plans[i])) if i not in lm_judged else [0])]
        by_text: dict[int, list[tuple[int, Verdict]]] = {}
        while pairs:
            # Variants are built from the lexicon's in-context candidates, so the judge's
            # lexical gate holds by construction; only its score is needed here.
            verdicts = self.judge.judge(
                [texts[i] for i, _ in pairs], [plans[i][v][0] for i, v in pairs], [scripts[i] for i, _ in pairs], False
            )
            for (i, v), verdict in zip(pairs, verdicts):
                by_text.setdefault(i, []).append((v, verdict))
            pairs = [
                (i, v + 1)
                for (i, v), verdict in zip(pairs, verdicts)
                if i in lm_judged and not verdict.keeps_meaning and v + 1 < len(plans[i])
            ]
        return by_text

    def _rank_scores(self, plans, kept) -> dict[tuple[int, int], float]:
        """LM log-probabilities, in one batched pass, of the variants that passed the filter
        where there is a choice: a lone survivor is kept without spending the LM on it."""
        if self.ranker is None:
            return {}
        keys = [(i, v) for i, passing in kept.items() if len(passing) > 1 for v, _ in passing]
        if not keys:
            return {}
        scores = self.ranker.log_probs([plans[i][v][0] for i, v in keys])
        return dict(zip(keys, map(float, scores)))


class MaskedLMReplacer:
    """nlpaug's fill-mask path with a local masked LM the user owns (BERT-style).

    ``use_custom_api=False`` is required offline: nlpaug's own wrappers fetch from the hub.
    Protected spans are handed to nlpaug as stop words, and every output is checked
    again, since nlpaug re-tokenises and may still split or drop them.
    """

    def __init__(
        self,
        model_path: str | Path,
        encoder: SentenceEncoder,
        protected: Callable[[str], Spans] | None = None,
        threshold: float = 0.85,
        rate: float = 0.15,
        top_k: int = 20,
        stop_words: Sequence[str] = (),
    ):
        import nlpaug.augmenter.word as naw

        path = Path(model_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"masked LM folder {path} has no config.json")
        self.augmenter = naw.ContextualWordEmbsAug(
            model_path=str(path),
            model_type="bert",
            use_custom_api=False,
            aug_p=rate,
            top_k=top_k,
            device="cpu",
            stopwords=list(stop_words) or None,
            stopwords_regex=_NLPAUG_PROTECTED,
        )
        self.augmenter.model.model = _SpecialTokenFreeFillMask(self.augmenter.model.model)
        self.mask_token = (
            self.augmenter.model.get_mask_token() if hasattr(self.augmenter.model, "get_mask_token") else "[MASK]"
        )
        self.encoder = encoder
        self.protected = protected or (lambda text: [])
        self.threshold = threshold

    def replace_batch(self, texts: Sequence[str], rng: random.Random) -> list[SynonymEdit | Skip]:
        # nlpaug draws positions and candidates from the global random, numpy and torch
        # generators: seed them from ``rng`` for reproducibility, then give them back.
        with _seeded_global_generators(rng.randrange(2**31)):
            outputs = self.augmenter.augment(list(texts))
        outputs = outputs if isinstance(outputs, list) else [outputs]
        sims = self.encoder.similarity(texts, outputs)
        results: list[SynonymEdit | Skip] = []
        for text, new, sim in zip(texts, outputs, sims):
            kept = [text[a:b] for a, b in self.protected(text)]
            if new == text:
                results.append(Skip("masked LM proposed no change"))
            elif self.mask_token in new or any(token not in new for token in kept):
                results.append(Skip("masked LM output lost a protected span or kept a mask"))
            elif sim < self.threshold:
                results.append(Skip(f"no variant kept the meaning (similarity {sim:.2f} < {self.threshold})"))
            else:
                changed = sum(1 for a, b in zip(text.split(), new.split()) if a != b)
                results.append(SynonymEdit(new, max(changed, 1), float(sim)))
        return results


@contextmanager
def _seeded_global_generators(seed: int):
    import torch

    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


class _SpecialTokenFreeFillMask:
    """The fill-mask pipeline as nlpaug calls it, minus special-token candidates.

    nlpaug writes a predicted token string back into the text: a predicted ``[MASK]``
    becomes a second mask in the next round, the pipeline then answers with one list
    per mask, and nlpaug 1.1.11 fails on that shape (``list indices must be integers``).
    Dropping special tokens keeps every text at one mask; a text that still has several
    (a user's own literal ``[MASK]``) is answered for its first mask only.
    """

    def __init__(self, pipeline):
        self._pipeline = pipeline
        self._special = set(pipeline.tokenizer.all_special_tokens)

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def __call__(self, texts, **kwargs):
        answers = self._pipeline(texts, **kwargs)
        if isinstance(texts, str) or len(texts) == 1:
            answers = [answers]  # a batch of one comes back unwrapped
        cleaned = []
        for answer in answers:
            while answer and isinstance(answer[0], list):
                answer = answer[0]
            cleaned.append([c for c in answer if c["token_str"].strip() not in self._special])
        return cleaned
