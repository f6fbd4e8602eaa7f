"""Pieces every augmentation technique shares: the protected spans and the English lexicon.

The augmentation pass itself is :mod:`deepfeed.core.augment.corpus`; the techniques are
:mod:`~deepfeed.core.augment.contextual_synonyms`, :mod:`~deepfeed.core.augment.structural` and
:mod:`~deepfeed.core.augment.fgsm`. Protected spans (numbers, codes, URLs, placeholders such as
<EMAIL>, glossary terms) are never altered by any of them.
"""

from __future__ import annotations

import re

from deepfeed.core.augment.en_synonyms import WordNetSynonyms  # noqa: F401 - the English lexicon lives there

_PROTECTED = re.compile(
    r"<[A-Z_]+>"  # PII placeholders
    r"|https?://\S+|\S+@\S+"  # URLs, e-mail-like tokens
    r"|\b[A-Z]\d{2}(?:\.\d+)?\b"  # ICD-10-like codes
    r"|\d[\d.,:/-]*"  # numbers, dates, times
    r"|`[^`]*`"  # inline code
)


def protected_mask(text: str, glossary=None) -> list[tuple[int, int]]:
    """Spans no technique may alter: placeholders, URLs, codes, numbers, inline code,
    and, given a :class:`~deepfeed.core.data.glossary.Glossary`, every glossary term."""
    spans = [m.span() for m in _PROTECTED.finditer(text)]
    if glossary is not None:
        # _hits is the glossary's own matcher (its case, boundary and longest-match
        # rules); the public find_variants leaves out terms already in canonical form,
        # which must be protected too.
        spans += [(hit.start, hit.end) for hit in glossary._hits(text)]
    return sorted(spans)
