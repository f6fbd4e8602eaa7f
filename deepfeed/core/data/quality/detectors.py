"""The seven quality detectors. Each works on a whole batch (a list of texts) and returns
one reason string or None per text, so the cleaning step can drop records with a reason
and the cleanliness check can re-run any detector alone on the cleaned corpus.

Regex detectors scan the batch joined into one string (texts separated by
``"\\n\\0\\n"``, which no pattern can cross) and map match offsets back to texts, so
the per-record cost of clean text is a C-level scan, not a Python call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import numpy as np

from deepfeed.core.data.quality.charclass import (
    CLASS_TABLE,
    DEBRIS,
    DIGIT,
    EAST_ASIAN,
    SPACE,
    SYMBOL,
    TextBatch,
    char_class_counts,
)
from deepfeed.core.data.quality.config import DEFAULT_CONFIG, QualityConfig
from deepfeed.core.data.quality.markup import MARKUP
from deepfeed.core.data.quality.mojibake import MOJIBAKE
from deepfeed.core.data.quality.normalize import collapse_blank_lines


def _reasons(n: int, flags: Sequence[tuple[str, np.ndarray]]) -> list[Optional[str]]:
    out: list[Optional[str]] = [None] * n
    for reason, mask in flags:
        for i in np.flatnonzero(mask).tolist():
            if out[i] is None:
                out[i] = reason
    return out


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros(len(part), float), where=whole > 0)


def text_length(text: str, cjk_weight: float = DEFAULT_CONFIG.cjk_weight) -> float:
    """Effective length of one text (see ``QualityConfig.min_length``)."""
    return float(_effective_lengths(char_class_counts([text]), cjk_weight)[0])


def _effective_lengths(counts: np.ndarray, cjk_weight: float) -> np.ndarray:
    east = counts[:, list(EAST_ASIAN)].sum(axis=1)
    return counts.sum(axis=1) - counts[:, SPACE] - east + cjk_weight * east


def _length(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    lengths = _effective_lengths(batch.counts, cfg.cjk_weight)
    return [("too_short", lengths < cfg.min_length), ("too_long", lengths > cfg.max_length)]


# Typed placeholders written by PII scrubbing (<EMAIL>, <ID_CN>): their brackets and
# underscores are not noise, or a scrubbed record could fail a re-scan it passed before.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def _placeholder_symbols(batch: TextBatch) -> np.ndarray:
    found = np.zeros(len(batch), np.int64)
    matches = list(_PLACEHOLDER.finditer(batch.joined))
    if matches:
        owners = batch.owners([m.start() for m in matches])
        np.add.at(found, owners, [2 + m.group().count("_") for m in matches])
    return found


def _symbols(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    symbols = batch.counts[:, SYMBOL] - _placeholder_symbols(batch)
    return [("symbol_ratio", _ratio(symbols, batch.visible) > cfg.max_symbol_ratio)]


def _digits(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    return [("digit_ratio", _ratio(batch.counts[:, DIGIT], batch.visible) > cfg.max_digit_ratio)]


_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# Words are runs of letters/digits; each CJK character is a word of its own.
_TOKEN = re.compile(rf"[{_CJK_RANGES}]|[^\W_{_CJK_RANGES}]+")


def _unit_repeats(batch: TextBatch, repeats: int) -> np.ndarray:
    """Texts where a unit of 1-4 non-space characters occurs ``repeats`` times in a row.

    Equivalent to the regex ``(\\S{1,4}?)\\1{repeats-1,}`` but vectorised: a unit of
    length k repeated r times is a run of r*k - k positions where s[i] == s[i + k].
    """
    cps, lengths = batch.code_points
    mask = np.zeros(len(lengths), bool)
    if cps.size == 0:
        return mask
    ends = np.cumsum(lengths)
    not_space = CLASS_TABLE[cps] != SPACE
    for k in range(1, 5):
        if cps.size <= k:
            break
        same = (cps[k:] == cps[:-k]) & not_space[:-k] & not_space[k:]
        # Comparisons that reach into the next text break the run.
        cut = (ends[:, None] - np.arange(1, k + 1)).ravel()
        same[cut[(cut >= 0) & (cut < same.size)]] = False
        edges = np.diff(np.concatenate(([0], same.view(np.int8), [0])))
        run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        long_runs = run_starts[run_ends - run_starts >= (repeats - 1) * k]
        if long_runs.size:
            mask[np.searchsorted(ends, long_runs, side="right")] = True
    return mask


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of word n-grams (CJK characters are words) that repeat an earlier one."""
    return _repeated_fraction(_TOKEN.findall(text.lower()), n, 0.0)


def _repeated_fraction(tokens: list[str], n: int, threshold: float) -> float:
    """The repeated n-gram fraction, or an upper bound of it when that is <= threshold."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    # Every repeated n-gram occurrence starts with a repeated token, so when few
    # tokens repeat the answer cannot exceed the threshold: skip building n-grams.
    bound = (len(tokens) - len(set(tokens))) / total
    if bound <= threshold:
        return bound
    grams = set(zip(*(tokens[k : k + total] for k in range(n))))
    return 1.0 - len(grams) / total


def _repetition(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    n, limit = cfg.repetition_ngram, cfg.max_repeated_ngram_fraction
    mask = np.zeros(len(batch), bool)
    for i, text in enumerate(batch.texts):
        tokens = _TOKEN.findall(text.lower())
        if len(tokens) - n + 1 >= cfg.min_ngrams_for_repetition:
            mask[i] = _repeated_fraction(tokens, n, limit) > limit
    mask |= _unit_repeats(batch, cfg.max_unit_repeats)
    return [("repetition", mask)]


_BOILERPLATE_EN = [
    r"\b(?:we|this (?:web)?site|our (?:web)?site) uses? cookies\b",
    r"\bcookies? (?:policy|settings|preferences|notice|consent|banner)\b",
    r"\baccept (?:all )?cookies\b",
    r"\bclick here\b",
    r"\ball rights reserved\b",
    r"(?:\bcopyright\s*)?(?:©|\(c\))\s*(?:\d{4}|copyright)",
    r"\bsubscribe (?:now|today|here|for free|to (?:our|the|my) (?:newsletter|channel|blog|mailing list))\b",
    r"\bunsubscribe\b",
    r"\bsign up for (?:our|the) newsletter\b",
    r"\bterms (?:of|and) (?:service|use|conditions)\b",
    r"\bprivacy (?:policy|statement|notice)\b",
    r"\bshare (?:this|on) (?:article|post|page|facebook|twitter|linkedin|whatsapp|wechat)\b",
    r"\bfollow us on\b",
    r"\b(?:read more|back to top|skip to (?:main )?content)\b",
    r"\b(?:please )?enable javascript\b",
    r"\bjavascript is (?:disabled|required)\b",
    r"^\s*advertisement\s*$",
]
_BOILERPLATE_ZH = [
    "版权所有",
    "版权声明",
    "点击这里",
    "点击此处",
    "点击查看",
    "点击阅读",
    "点击订阅",
    "立即订阅",
    "订阅我们",
    "免责声明",
    "隐私政策",
    "隐私条款",
    "服务条款",
    "使用条款",
    "用户协议",
    "关注我们",
    "扫码关注",
    "关注公众号",
    "转载请注明",
    r"未经(?:许可|授权)[，,]?\s*(?:不得|禁止)转载",
    "返回顶部",
    "上一篇",
    "下一篇",
    "阅读全文",
    "责任编辑",
    "分享到",
    r"^\s*广告\s*$",
]
_BOILERPLATE = re.compile("|".join(_BOILERPLATE_EN + _BOILERPLATE_ZH), re.IGNORECASE | re.MULTILINE)
# A keyword every boilerplate pattern contains, searched case-sensitively in lower-cased
# text: literal-first alternations let re skip ahead in C, ~10x faster than running
# the IGNORECASE patterns over everything. Only lines with a keyword get the full test.
_BOILERPLATE_HINT = re.compile(
    "cookie|click|reserved|©|\\(c\\)|subscribe|sign up|terms|privacy|share|follow us|read more|back to top|"
    "skip to|javascript|advertisement|版权|点击|订阅|免责|隐私|条款|协议|关注|转载|返回顶部|上一篇|下一篇|阅读全文|"
    "责任编辑|分享到|广告"
)


def _lower_same_length(text: str) -> Optional[str]:
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else None  # "İ" lower-cases to two characters


def _boilerplate_lines(text: str, max_line: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the short lines of ``text`` that match a boilerplate pattern."""
    lowered = _lower_same_length(text)
    candidates = _BOILERPLATE_HINT.finditer(lowered) if lowered is not None else _BOILERPLATE.finditer(text)
    last_line = -1
    for m in candidates:
        start = text.rfind("\n", 0, m.start()) + 1
        if start == last_line:
            continue
        last_line = start
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        line = text[start:end]
        if len(line.strip()) <= max_line and _BOILERPLATE.search(line):
            yield start, end


def _boilerplate_chars(batch: TextBatch, max_line: int) -> np.ndarray:
    """Characters per text that sit on short lines matching a boilerplate phrase."""
    joined = batch.joined
    chars = np.zeros(len(batch), np.int64)
    for start, end in _boilerplate_lines(joined, max_line):
        chars[batch.owners([start])[0]] += len(joined[start:end].strip())
    return chars


def _boilerplate(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    chars = _boilerplate_chars(batch, cfg.max_boilerplate_line)
    totals = np.fromiter((len(t.strip()) for t in batch.texts), dtype=np.int64, count=len(batch))
    return [("boilerplate", (chars > 0) & (_ratio(chars, totals) >= cfg.max_boilerplate_fraction))]


def strip_boilerplate_lines(text: str, max_line: int = DEFAULT_CONFIG.max_boilerplate_line) -> str:
    """Drop short lines that match a boilerplate phrase (cookie banners, footers, ...)."""
    spans = list(_boilerplate_lines(text, max_line))
    if not spans:
        return text
    pieces, pos = [], 0
    for start, end in spans:
        pieces.append(text[pos:start])
        pos = end + 1  # with the line break
    pieces.append(text[pos:])
    return collapse_blank_lines("".join(pieces)).strip()


def _encoding_debris(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    return [("encoding_debris", (batch.counts[:, DEBRIS] > 0) | batch.matching(MOJIBAKE))]


def _markup(batch: TextBatch, cfg: QualityConfig) -> list[tuple[str, np.ndarray]]:
    return [("markup", batch.matching(MARKUP))]


_CHECKS: dict[str, Callable[[TextBatch, QualityConfig], list[tuple[str, np.ndarray]]]] = {
    "encoding_debris": _encoding_debris,
    "length": _length,
    "markup": _markup,
    "boilerplate": _boilerplate,
    "symbols": _symbols,
    "digits": _digits,
    "repetition": _repetition,
}


def _detector(name: str) -> Callable[..., list[Optional[str]]]:
    def detect(texts: Sequence[str], config: QualityConfig = DEFAULT_CONFIG) -> list[Optional[str]]:
        batch = TextBatch(texts)
        return _reasons(len(batch), _CHECKS[name](batch, config))

    detect.__name__ = f"flag_{name}"
    detect.__doc__ = f"Reason string or None per text, for the {name!r} check alone."
    return detect


flag_encoding_debris = _detector("encoding_debris")
flag_length = _detector("length")
flag_markup = _detector("markup")
flag_boilerplate = _detector("boilerplate")
flag_symbols = _detector("symbols")
flag_digits = _detector("digits")
flag_repetition = _detector("repetition")

DETECTORS: dict[str, Callable[..., list[Optional[str]]]] = {
    "encoding_debris": flag_encoding_debris,
    "length": flag_length,
    "markup": flag_markup,
    "boilerplate": flag_boilerplate,
    "symbols": flag_symbols,
    "digits": flag_digits,
    "repetition": flag_repetition,
}


def check_quality(texts: Sequence[str], config: QualityConfig = DEFAULT_CONFIG) -> list[Optional[str]]:
    """First failing reason per text (checks run in ``config.checks`` order), or None."""
    batch = TextBatch(texts)
    flags: list[tuple[str, np.ndarray]] = []
    for name in config.checks:
        flags.extend(_CHECKS[name](batch, config))
    return _reasons(len(batch), flags)
