"""Text normalisation, language identification and quality filters for zh/en corpora.

One module per concern:

* ``charclass``: character classes counted for a whole batch at once (UTF-32, a lookup
  table, ``np.bincount``) and ``TextBatch``, the batch view the detectors share;
* ``config``: ``QualityConfig``, the thresholds;
* ``detectors``: the seven detectors (encoding debris, length, markup, boilerplate,
  symbols, digits, repetition), each returning one reason or None per text;
* ``markup``: HTML and Markdown patterns, shared by the markup detector and the stripping;
* ``mojibake``: finding and repairing UTF-8 decoded as cp1252/Latin-1;
* ``language``: zh / en / other from character classes and English stop words;
* ``normalize``: ``normalize_text``.

The names below are the package's public interface, importable from here.
"""

from deepfeed.core.data.quality.charclass import char_class_counts
from deepfeed.core.data.quality.config import ALL_CHECKS, DEFAULT_CONFIG, QualityConfig
from deepfeed.core.data.quality.detectors import (
    DETECTORS,
    check_quality,
    flag_boilerplate,
    flag_digits,
    flag_encoding_debris,
    flag_length,
    flag_markup,
    flag_repetition,
    flag_symbols,
    repeated_ngram_fraction,
    strip_boilerplate_lines,
    text_length,
)
from deepfeed.core.data.quality.language import detect_language, detect_languages
from deepfeed.core.data.quality.mojibake import fix_mojibake
from deepfeed.core.data.quality.normalize import normalize_text

__all__ = [
    "ALL_CHECKS",
    "DEFAULT_CONFIG",
    "DETECTORS",
    "QualityConfig",
    "char_class_counts",
    "check_quality",
    "detect_language",
    "detect_languages",
    "fix_mojibake",
    "flag_boilerplate",
    "flag_digits",
    "flag_encoding_debris",
    "flag_length",
    "flag_markup",
    "flag_repetition",
    "flag_symbols",
    "normalize_text",
    "repeated_ngram_fraction",
    "strip_boilerplate_lines",
    "text_length",
]
