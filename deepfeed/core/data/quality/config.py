"""Thresholds of the quality filters and the checks they run."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_CHECKS = ("encoding_debris", "length", "markup", "boilerplate", "symbols", "digits", "repetition")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality filters; every ratio is over non-whitespace characters."""

    # Length in effective characters: whitespace is not counted and a Han, kana or
    # Hangul character counts ``cjk_weight`` times, because one carries about what
    # three Latin letters do (an English word ~ 4.5 letters ~ 1.5 Han characters).
    min_length: int = 20
    max_length: int = 100_000
    cjk_weight: float = 3.0
    max_symbol_ratio: float = 0.25
    max_digit_ratio: float = 0.5
    # Fraction of word 3-grams (Han characters count as words) that repeat an earlier one.
    repetition_ngram: int = 3
    max_repeated_ngram_fraction: float = 0.3
    min_ngrams_for_repetition: int = 4
    # A unit of 1-4 non-space characters repeated this many times in a row
    # ("!!!!!!", "hahahaha...", "-----") is noise whatever the n-gram statistics say.
    max_unit_repeats: int = 16
    # Share of the text (in characters) on boilerplate lines; lines longer than
    # ``max_boilerplate_line`` are prose that merely mentions, say, a privacy policy.
    max_boilerplate_fraction: float = 0.3
    max_boilerplate_line: int = 200
    checks: tuple[str, ...] = field(default=ALL_CHECKS)

    def __post_init__(self):
        unknown = set(self.checks) - set(ALL_CHECKS)
        if unknown:
            raise ValueError(f"unknown quality checks {sorted(unknown)}; known: {ALL_CHECKS}")


DEFAULT_CONFIG = QualityConfig()
