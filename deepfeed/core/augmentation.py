"""Pieces every augmentation technique shares: the protected spans and the English lexicon.

The augmentation pass itself is :mod:`deepfeed.core.augment_corpus`; the techniques are
:mod:`~deepfeed.core.contextual_synonyms`, :mod:`~deepfeed.core.structural` and
:mod:`~deepfeed.core.fgsm`. Protected spans (numbers, codes, URLs, placeholders such as
<EMAIL>, glossary terms) are never altered by any of them.
"""

from __future__ import annotations

import re

_PROTECTED = re.compile(
    r"<[A-Z_]+>"  # PII placeholders
    r"|https?://\S+|\S+@\S+"  # URLs, e-mail-like tokens
    r"|\b[A-Z]\d{2}(?:\.\d+)?\b"  # ICD-10-like codes
    r"|\d[\d.,:/-]*"  # numbers, dates, times
    r"|`[^`]*`"  # inline code
)


class WordNetSynonyms:
    """Synonyms of single English words from WordNet, most frequent senses first.

    ``base_forms_only`` offers only words already in their dictionary form: WordNet
    lemmas are uninflected, so "reported" -> "describe" would break the grammar.
    """

    def __init__(self, base_forms_only: bool = False):
        from nltk.corpus import stopwords, wordnet

        self._wordnet = wordnet
        self.base_forms_only = base_forms_only
        self._stop = set(stopwords.words("english"))
        self._cache: dict[str, list[str]] = {}

    def candidates(self, word: str) -> list[str]:
        key = word.lower()
        # Every answer is cached, refusals included: morphy and synsets cost far more
        # than the lookup, and corpora repeat their words.
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._lookup(key)
        return cached

    def _lookup(self, key: str) -> list[str]:
        if key in self._stop or len(key) < 3:
            return []
        if self.base_forms_only and self._wordnet.morphy(key) not in (None, key):
            return []
        names: list[str] = []
        for synset in self._wordnet.synsets(key)[:3]:
            for lemma in synset.lemma_names():
                lemma = lemma.replace("_", " ")
                if lemma.lower() != key and lemma not in names and " " not in lemma:
                    names.append(lemma)
        return names[:5]


def protected_mask(text: str, glossary=None) -> list[tuple[int, int]]:
    """Spans no technique may alter: placeholders, URLs, codes, numbers, inline code,
    and, given a :class:`~deepfeed.core.glossary.Glossary`, every glossary term."""
    spans = [m.span() for m in _PROTECTED.finditer(text)]
    if glossary is not None:
        # _hits is the glossary's own matcher (its case, boundary and longest-match
        # rules); the public find_variants leaves out terms already in canonical form,
        # which must be protected too.
        spans += [(hit.start, hit.end) for hit in glossary._hits(text)]
    return sorted(spans)
