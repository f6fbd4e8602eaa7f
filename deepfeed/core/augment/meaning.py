"""Does an augmented child keep its parent's meaning? One judge for synonym and FGSM children.

Two checks, both required:

1. **The lexical gate** (:meth:`MeaningJudge.reachable`): the child must be the parent
   with some words swapped for candidates the context-aware lexicon offers *at that
   position* (:meth:`~deepfeed.core.augment.en_synonyms.WordNetSynonyms.options`,
   :meth:`~deepfeed.core.augment.zh_synonyms.CilinSynonyms.options`): same part of speech, never a
   name, pronoun, idiom or function word, inflected like the original. Antonyms, wrong
   parts of speech and gender swaps are not in any synonym set, so this is what stops
   "big" -> "tiny", "Use" -> "Utilization" and 他们 -> 她们. A sentence encoder cannot: an
   antonym swap leaves a sentence embedding almost where it was (measured on the
   labelled pairs in ``deepfeed/data/meaning_pairs_*.tsv``; see docs/augmentation.md).
2. **A score** of the whole child against its parent, by whichever model can read the
   text: MiniLM cosine similarity where the encoder's vocabulary covers it, else the base
   causal LM's log-probability change (child minus parent, scored on the tokens around
   the change: ``CausalLMRanker.log_prob_changes``). MiniLM's WordPiece vocabulary has
   almost no Chinese, so Chinese text comes out as [UNK] and every Chinese pair looks
   identical to it (0.999); the share of [UNK] pieces decides which model scores a
   text (``max_unk_share``).
3. Where MiniLM scores a text and an LM is given (``lm_everywhere``), **the LM's change
   too**: a synonym in a sense the context does not have ("a hard, rawhide covered
   ball" -> "a difficult, rawhide extended ball", "the cables are connected" -> "...
   related") moves a sentence embedding little, but the base LM finds it far less
   likely. Its bar here (``lm_check_threshold``) is stricter than for texts only the LM
   reads: on two samples of real English children, those at or above -4 nats read as
   sensible 88% of the time, against 53-57% for all that pass at -12
   (docs/augmentation.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class Verdict:
    keeps_meaning: bool
    score: float | None  # cosine (judge "encoder") or log-probability change in nats (judge "lm")
    judge: str  # "encoder", "lm", or "lexicon" when the gate alone refused it
    reason: str = ""
    lm_change: float | None = None  # the LM's change where it checked an encoder-judged child


class MeaningJudge:
    """``lexicons``: ``{"en": ..., "zh": ...}`` objects with ``options(text, protected)``.
    ``encoder``: a :class:`~deepfeed.core.platform.encoders.SentenceEncoder`; ``lm``: a
    :class:`~deepfeed.core.augment.lm_scoring.CausalLMRanker` (None: texts the encoder
    cannot read are judged by the lexical gate alone, and say so in their verdict)."""

    def __init__(
        self,
        lexicons: dict,
        encoder=None,
        lm=None,
        similarity_threshold: float = 0.85,
        lm_threshold: float = -6.0,
        max_unk_share: float = 0.1,
        protected: Callable[[str], Spans] | None = None,
        lm_everywhere: bool = False,
        lm_check_threshold: float | None = None,
    ):
        self.lexicons = lexicons
        self.lm_everywhere = lm_everywhere
        self.lm_check_threshold = lm_threshold if lm_check_threshold is None else lm_check_threshold
        self.encoder = encoder
        self.lm = lm
        self.similarity_threshold = similarity_threshold
        self.lm_threshold = lm_threshold
        self.max_unk_share = max_unk_share
        self.protected = protected or (lambda text: [])

    # --- which model reads the text ---------------------------------------------------

    def unk_share(self, text: str) -> float:
        """Share of the encoder's word pieces of ``text`` that are [UNK]."""
        return _unk_share(self.encoder.tokenizer, text) if self.encoder is not None else 1.0

    def scorer(self, text: str) -> str:
        if self.encoder is not None and self.unk_share(text) <= self.max_unk_share:
            return "encoder"
        return "lm" if self.lm is not None else "none"

    # --- the lexical gate ---------------------------------------------------------------

    def reachable(self, parent: str, child: str, script: str) -> int | None:
        """Number of swaps that turn ``parent`` into ``child`` using only the candidates the
        lexicon offers in context, or None when no such sequence of swaps exists."""
        lexicon = self.lexicons.get(script)
        if lexicon is None:
            return None
        options = {a: (b, cands) for a, b, cands in lexicon.options(parent, self.protected(parent))}
        return _reach(parent, child, options)

    # --- verdicts -------------------------------------------------------------------------

    def judge(
        self, parents: Sequence[str], children: Sequence[str], scripts: Sequence[str], gate: bool = True
    ) -> list[Verdict]:
        """One verdict per (parent, child); the models run once per batch. ``gate=False``:
        the caller built every child from the lexicon's in-context candidates itself."""
        verdicts: list[Verdict | None] = [None] * len(parents)
        by_model: dict[str, list[int]] = {"encoder": [], "lm": [], "none": []}
        for i, (parent, child, script) in enumerate(zip(parents, children, scripts)):
            if gate and self.reachable(parent, child, script) is None:
                verdicts[i] = Verdict(False, None, "lexicon", "not a swap of in-context synonyms")
            else:
                by_model[self.scorer(parent)].append(i)
        if by_model["encoder"]:
            rows = by_model["encoder"]
            sims = self.encoder.similarity([parents[i] for i in rows], [children[i] for i in rows])
            for i, sim in zip(rows, sims):
                ok = float(sim) >= self.similarity_threshold
                reason = "" if ok else f"similarity {sim:.2f} < {self.similarity_threshold}"
                verdicts[i] = Verdict(ok, round(float(sim), 4), "encoder", reason)
            checked = [i for i in rows if verdicts[i].keeps_meaning] if self.lm_everywhere and self.lm else []
            if checked:
                changes = self.lm.log_prob_changes([parents[i] for i in checked], [children[i] for i in checked])
                for i, change in zip(checked, changes):
                    delta = round(float(change), 4)
                    ok = delta >= self.lm_check_threshold
                    reason = "" if ok else f"log-probability change {delta:.1f} < {self.lm_check_threshold}"
                    verdicts[i] = Verdict(ok, verdicts[i].score, "encoder", reason, delta)
        if by_model["lm"]:
            rows = by_model["lm"]
            # Child minus parent on the window around the change: the common head cancels.
            changes = self.lm.log_prob_changes([parents[i] for i in rows], [children[i] for i in rows])
            for i, change in zip(rows, changes):
                delta = float(change)
                ok = delta >= self.lm_threshold
                reason = "" if ok else f"log-probability change {delta:.1f} < {self.lm_threshold}"
                verdicts[i] = Verdict(ok, round(delta, 4), "lm", reason)
        for i in by_model["none"]:
            # No model reads this text: the lexical gate (checked here, or vouched for by a
            # caller that built the child from the lexicon's own candidates) is the verdict.
            verdicts[i] = Verdict(True, None, "lexicon")
        return verdicts  # type: ignore[return-value]


def _reach(parent: str, child: str, options: dict[int, tuple[int, list[str]]]) -> int | None:
    """Fewest offered swaps turning parent into child (a small dynamic programme over
    (parent position, child position)), or None."""
    import sys

    limit = sys.getrecursionlimit()
    if len(parent) + len(child) > limit // 2:
        return None if parent != child else 0
    memo: dict[tuple[int, int], int | None] = {}

    def go(p: int, q: int) -> int | None:
        if p == len(parent):
            return 0 if q == len(child) else None
        key = (p, q)
        if key in memo:
            return memo[key]
        best = None
        if q < len(child) and parent[p] == child[q]:
            best = go(p + 1, q + 1)
        if p in options:
            end, candidates = options[p]
            for candidate in candidates:
                if child.startswith(candidate, q):
                    rest = go(end, q + len(candidate))
                    if rest is not None and (best is None or rest + 1 < best):
                        best = rest + 1
        memo[key] = best
        return best

    return go(0, 0)


@lru_cache(maxsize=4096)
def _unk_cached(tokenizer_id: int, text: str) -> float:
    tokenizer = _TOKENIZERS[tokenizer_id]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sum(1 for i in ids if i == tokenizer.unk_token_id) / max(1, len(ids))


_TOKENIZERS: dict[int, object] = {}


def _unk_share(tokenizer, text: str) -> float:
    _TOKENIZERS[id(tokenizer)] = tokenizer
    return _unk_cached(id(tokenizer), text)


def precision_recall(keep_same: Sequence[bool], keep_changed: Sequence[bool]) -> dict[str, float]:
    """Of a labelled set: recall = share of meaning-preserving children kept; precision =
    share of kept children that do preserve meaning; changed_kept = share of
    meaning-changing children let through."""
    same, changed = int(np.sum(keep_same)), int(np.sum(keep_changed))
    return {
        "recall": same / max(1, len(keep_same)),
        "precision": same / max(1, same + changed),
        "changed_kept": changed / max(1, len(keep_changed)),
        "kept": same + changed,
    }
