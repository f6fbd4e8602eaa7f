"""Character classes counted for a whole batch at once: the batch is encoded to UTF-32,
mapped through a lookup table and summed per text with ``np.bincount``; and `TextBatch`, the
batch view every detector shares (class counts and the joined text computed once)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Optional

import numpy as np

SPACE, LATIN, HAN, KANA, HANGUL, OTHER_LETTER, DIGIT, PUNCT, SYMBOL, DEBRIS = range(10)
N_CLASSES = 10
EAST_ASIAN = (HAN, KANA, HANGUL)

# Punctuation-category characters that are really markup or code syntax, not prose.
_SYMBOLISH_PUNCT = set("#*@\\_[]{}")
# Symbol-category characters that are at home in prose.
_PROSE_SYMBOLS = {"Sc"}  # currency signs: "$100", "¥50"


def _build_class_table() -> np.ndarray:
    table = np.full(0x110000, OTHER_LETTER, np.uint8)
    for cp in range(0x10000):
        table[cp] = _classify(chr(cp))
    # Astral planes by range: a per-code-point scan of all 1.1M would cost ~0.1 s per import.
    table[0x10000:0x20000] = OTHER_LETTER
    table[0x1D400:0x1D800] = LATIN  # mathematical alphanumerics (NFKC folds them to ASCII)
    table[0x1F000:0x1FB00] = SYMBOL  # emoji, pictographs, mahjong/domino/playing cards
    table[0x20000:0x40000] = HAN  # CJK extensions B-H
    table[0xE0000:0xE0080] = DEBRIS  # tag characters
    table[0xF0000:] = DEBRIS  # supplementary private use areas
    noncharacters = [p * 0x10000 + 0xFFFE for p in range(17)] + [p * 0x10000 + 0xFFFF for p in range(17)]
    table[noncharacters] = DEBRIS
    table[0xFDD0:0xFDF0] = DEBRIS
    return table


def _classify(ch: str) -> int:
    cp = ord(ch)
    if ch in "\t\n\r":
        return SPACE
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or ch == "〇":
        return HAN
    if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9D:
        return KANA
    if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
        return HANGUL
    if cp == 0xFFFD:
        return DEBRIS
    cat = unicodedata.category(ch)
    major = cat[0]
    if cat in ("Cc", "Cs", "Co") or cp in (0xFFFE, 0xFFFF):
        return DEBRIS
    if major == "Z" or cat == "Cf":  # separators and invisible format characters
        return SPACE
    if major == "L":
        return LATIN if "LATIN" in unicodedata.name(ch, "") else OTHER_LETTER
    if major == "M":
        return OTHER_LETTER
    if major == "N":
        return DIGIT
    if major == "P":
        return SYMBOL if ch in _SYMBOLISH_PUNCT else PUNCT
    if cat in _PROSE_SYMBOLS:
        return PUNCT
    return SYMBOL  # S*, and unassigned code points (often emoji newer than unicodedata)


CLASS_TABLE = _build_class_table()


def code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32), lengths


def char_class_counts(texts: Sequence[str]) -> np.ndarray:
    """Per-text counts of each character class: an ``(n, N_CLASSES)`` int64 array."""
    return class_counts(*code_points(texts))


def class_counts(cps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    n = len(lengths)
    text_index = np.repeat(np.arange(n, dtype=np.int64), lengths)
    flat = np.bincount(text_index * N_CLASSES + CLASS_TABLE[cps], minlength=n * N_CLASSES)
    return flat.reshape(n, N_CLASSES)


_SEP = "\n\x00\n"


class TextBatch:
    """A batch of texts with lazily computed, shared per-batch data."""

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)
        self._cps: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._counts: Optional[np.ndarray] = None
        self._joined: Optional[str] = None
        self._starts: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def code_points(self) -> tuple[np.ndarray, np.ndarray]:
        """All code points of the batch, concatenated, and the length of each text."""
        if self._cps is None:
            self._cps = code_points(self.texts)
        return self._cps

    @property
    def counts(self) -> np.ndarray:
        if self._counts is None:
            self._counts = class_counts(*self.code_points)
        return self._counts

    @property
    def visible(self) -> np.ndarray:
        return self.counts.sum(axis=1) - self.counts[:, SPACE]

    @property
    def joined(self) -> str:
        if self._joined is None:
            self._joined = _SEP.join(self.texts)
            lengths = self.code_points[1] + len(_SEP)
            self._starts = np.cumsum(lengths) - lengths
        return self._joined

    def owners(self, positions: Sequence[int]) -> np.ndarray:
        """Index of the text each offset of ``joined`` falls in."""
        _ = self.joined
        return np.searchsorted(self._starts, np.asarray(positions, np.int64), side="right") - 1

    def matching(self, pattern: re.Pattern) -> np.ndarray:
        """Mask of texts in which ``pattern`` matches (patterns never span the separator)."""
        mask = np.zeros(len(self.texts), bool)
        starts = [m.start() for m in pattern.finditer(self.joined)]
        if starts:
            mask[self.owners(starts)] = True
        return mask
