"""Structural perturbation: reorder sentences or clauses where order carries no meaning.

Order carries meaning in numbered steps, lists, code, dialog turns, and wherever a
sequencing or causal connective ties one part to the one before ("then", "because",
然后, 所以). Such texts are left alone. English connectives are matched as words with a
regex; Chinese has no spaces, so its connectives are matched on jieba words (a
substring test would find 后 in 后背 and refuse harmless text).
"""

from __future__ import annotations

import random
import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_ORDERED = re.compile(r"^\s*(?:\d+[.)]\s|[-*•]\s|(?:step\s+\d+|first|then|finally)\b)", re.I | re.M)
_DIALOG = re.compile(r"^\s*(?:[A-Z][\w ]{0,20}|问|答|用户|客服|医生|患者)\s*[:：]", re.M)
_EN_SEQUENCE = re.compile(
    r"\b(?:then|after|afterwards|before|first|second|next|finally|later|until|once|so|because|since|therefore|thus|hence|if|unless|when|while|but|however|otherwise|it|this|that|they|he|she|these|those)\b",
    re.I,
)
ZH_SEQUENCE = frozenset(
    (
        "然后 之后 以后 随后 接着 首先 其次 再 最后 先 后 因为 所以 因此 于是 如果 假如 但是 但 "
        "可是 然而 不过 否则 虽然 即使 只要 只有 除非 并且 而且 从而 那么 这 那 它 他 她 其"
    ).split()
)
# Clause boundaries inside one sentence: a comma/semicolon before "and"/"or" or a
# semicolon in English; a comma or semicolon in Chinese, full-width or ASCII: cleaning's
# NFKC folds ，；！？ into ,;!? (only 。 survives), and augmentation runs after cleaning.
# An ASCII comma between digits is a thousands separator, not a clause boundary.
_EN_CLAUSE = re.compile(r";\s+|,\s+(?:and|or)\s+")
_ZH_CLAUSE = re.compile(r"\s*(?:[，；]|(?<!\d)[,;]|[,;](?!\d))\s*")
# Full stops only: a semicolon joins clauses of one sentence (see _EN_CLAUSE). In Chinese
# an ASCII ! ? or . right after a Han character ends a sentence too (NFKC, as above).
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<![0-9][.])\s+|(?<=[。！？])\s*|(?<=[\u3400-\u4dbf\u4e00-\u9fff][.!?])\s*")
_END = re.compile(r"[.!?。！？;；]+$")


def split_sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def order_matters(text: str) -> bool:
    """Numbered steps, lists, code or dialog turns."""
    return bool(_ORDERED.search(text) or "```" in text or len(_DIALOG.findall(text)) >= 2)


def has_sequence_words(text: str) -> bool:
    if not _CJK.search(text):
        return bool(_EN_SEQUENCE.search(text))
    from deepfeed.core.augment.zh_synonyms import segment

    return any(text[a:b] in ZH_SEQUENCE for a, b in segment(text)) or bool(_EN_SEQUENCE.search(text))


def _shuffled(parts: list[str], rng: random.Random) -> list[str] | None:
    if len(set(parts)) < 2:
        return None
    if len(parts) == 2:
        return parts[::-1]
    for _ in range(20):
        order = parts[:]
        rng.shuffle(order)
        if order != parts:
            return order
    return None


def reorder_sentences_safely(text: str, rng: random.Random) -> str | None:
    """Sentences in another order, unless a later sentence leans on an earlier one."""
    if order_matters(text):
        return None
    sentences = split_sentences(text)
    if len(sentences) < 2 or any(has_sequence_words(s) for s in sentences[1:]):
        return None
    order = _shuffled(sentences, rng)
    if order is None:
        return None
    return ("" if _CJK.search(text) else " ").join(order)


def _sentence_case(clause: str, first: bool) -> str:
    word = clause.split(" ", 1)[0]
    # Only plain lower/upper-case words are re-cased: "I", "NASA" and "iPhone" stay.
    if first:
        return clause[0].upper() + clause[1:] if clause[:1].islower() else clause
    if word[:1].isupper() and word[1:].islower() and word != "I":
        return clause[0].lower() + clause[1:]
    return clause


def reorder_clauses(sentence: str, rng: random.Random) -> str | None:
    """Coordinated clauses of one sentence in another order, or None where unsafe."""
    if order_matters(sentence) or has_sequence_words(sentence):
        return None
    end = _END.search(sentence)
    tail = end.group() if end else ""
    body = sentence[: len(sentence) - len(tail)]
    zh = bool(_CJK.search(body))
    pattern = _ZH_CLAUSE if zh else _EN_CLAUSE
    separators = pattern.findall(body)
    clauses = [c.strip() for c in pattern.split(body)]
    if len(clauses) < 2 or any(not c for c in clauses) or len(set(separators)) != 1:
        return None  # mixed separators ("A, and B; C") nest clauses: not a flat list
    order = _shuffled(clauses, rng)
    if order is None:
        return None
    if not zh:
        order = [_sentence_case(c, first=i == 0) for i, c in enumerate(order)]
    return separators[0].join(order) + tail


def structural_variant(text: str, rng: random.Random) -> tuple[str, str] | str:
    """(new text, technique) or the reason there is none.

    Several sentences are reordered as wholes; a single sentence has its coordinated
    clauses reordered.
    """
    if not text.strip():
        return "empty text"
    if order_matters(text):
        return "order carries meaning (steps, list, code or dialog)"
    sentences = split_sentences(text)
    if len(sentences) >= 2:
        new = reorder_sentences_safely(text, rng)
        return (new, "sentence_reorder") if new else "a sentence depends on the one before it"
    if has_sequence_words(text):
        return "a sequencing, causal or referring word ties the clauses together"
    new = reorder_clauses(text.strip(), rng)
    return (new, "clause_reorder") if new else "single sentence without independent clauses"
