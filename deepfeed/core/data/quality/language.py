"""Language identification (zh / en / other) from character classes and English stop words."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from deepfeed.core.data.quality.charclass import HAN, HANGUL, KANA, LATIN, OTHER_LETTER, char_class_counts

# English function words that are not also common words of French, German, Spanish,
# Italian or Portuguese ("a", "in", "an", "on", "so", "die", "was", "also", "no" are
# left out on purpose), so their rate separates English from other Latin-script text.
_EN_STOPWORDS = frozenset(
    """the and of to is are were be been being with for that this these those it its as at by from or
    not but have has had which who whom what when where why how can could should would might must
    there their they them he she his her we our you your if than then into more some any each other
    such only very does did do because while during between without after before about over under""".split()
)
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _languages(texts: Sequence[str], counts: np.ndarray) -> list[str]:
    han, kana, hangul = counts[:, HAN], counts[:, KANA], counts[:, HANGUL]
    latin, other = counts[:, LATIN], counts[:, OTHER_LETTER]
    letters = han + kana + hangul + latin + other
    # Japanese mixes kana into Han text, Korean uses Hangul: neither is zh.
    east_other = kana + hangul
    # Han characters are weighed against Latin *words* (~4.5 letters): Chinese text
    # that quotes a few English terms is still zh.
    zh = (han > 0) & (east_other * 10 < han) & (han * 4.5 >= latin) & (han * 2 >= other + east_other)
    latin_text = ~zh & (latin > 0) & (latin >= 0.8 * letters)
    out = ["zh" if z else "other" for z in zh.tolist()]
    for i in np.flatnonzero(latin_text).tolist():
        words = _EN_WORD.findall(texts[i].lower())
        if not words:
            continue
        hits = sum(w in _EN_STOPWORDS for w in words)
        # Headlines and short notes have few function words; with no non-ASCII
        # letters a short Latin text in an en/zh corpus is English.
        if (hits > 0 and hits >= 0.08 * len(words)) or (len(words) < 4 and texts[i].isascii()):
            out[i] = "en"
    return out


def detect_languages(texts: Sequence[str]) -> list[str]:
    """``"zh"``, ``"en"`` or ``"other"`` per text, from character classes and English stop words."""
    texts = list(texts)
    return _languages(texts, char_class_counts(texts))


def detect_language(text: str) -> str:
    return detect_languages([text])[0]
