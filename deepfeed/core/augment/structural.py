"""Structural perturbation: reorder sentences or clauses where order carries no meaning.

Order carries meaning in numbered steps, lists, code, dialog turns, and wherever a
sequencing or causal connective ties one part to the one before ("then", "because",
然后, 所以). Such texts are left alone. English connectives are matched as words with a
regex; Chinese has no spaces, so its connectives are matched on jieba words (a
substring test would find 后 in 后背 and refuse harmless text).

Only parts that stand on their own are moved. Sampled children of real answers showed
what breaks otherwise: a list item split off by an Oxford comma ("such as memory access,
processes, and peripheral access" -> "Peripheral access, and software which ..."), an
adverbial frame moved away from its clause ("at any rate ...", 从技术上讲), a fragment
that leans on the sentence before ("Truly one of a kind."), a question's clauses with the
question mark left on the wrong one, an interjection sent to the end (是啊, 不), and
sentences cut at abbreviations ("S. Carolina", "Dr. Smith"). So: English sentences are
split by pysbd (rule-based, offline, knows abbreviations and initials); every English
clause or sentence that moves needs a verb (textblob's tagger; an imperative's verb
counts), every Chinese clause a predicate (jieba's verb, adjective or idiom tags) and
three characters; clauses may not start with a preposition or subordinator; questions
are not reordered.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_ORDERED = re.compile(r"^\s*(?:\d+[.)]\s|[-*•]\s|(?:step\s+\d+|first|then|finally)\b)", re.I | re.M)
_DIALOG = re.compile(r"^\s*(?:[A-Z][\w ]{0,20}|问|答|用户|客服|医生|患者)\s*[:：]", re.M)
_EN_SEQUENCE = re.compile(
    r"\b(?:then|after|afterwards|before|first|second|next|finally|later|until|once|so|because|since|therefore|thus|hence|if|unless|when|while|but|however|otherwise|it|this|that|they|he|she|these|those|other|another|also|again|both|such|too)\b",
    re.I,
)
ZH_SEQUENCE = frozenset(
    (
        "然后 之后 以后 随后 接着 首先 其次 再 最后 先 后 因为 所以 因此 于是 如果 假如 但是 但 "
        "可是 然而 不过 否则 虽然 即使 只要 只有 除非 并且 而且 从而 那么 这 那 它 他 她 其 "
        # jieba keeps these as one word, so 这 and 他 alone do not find them.
        "他们 她们 它们 这些 那些 这个 那个 这样 那样 这是 那是 这里 那里 该 此"
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


# English clauses: a finite verb, or a verb first (an imperative); never a preposition,
# conjunction or wh-word first (a frame or a dependent clause, not a clause of its own).
_EN_FINITE = frozenset({"VBD", "VBZ", "VBP", "MD"})
_EN_DEPENDENT_START = frozenset({"IN", "TO", "CC", "WDT", "WP", "WRB", "RB", "VBG", "VBN"})
# Chinese: a predicate (verb, adjective, idiom, status word: jieba's v, a, i, l, z; not
# vn, a verbal noun), and no preposition or subordinator in front.
_ZH_PREDICATE = ("v", "a", "i", "l", "z")
_ZH_DEPENDENT_START = (
    "从 在 当 对 对于 关于 根据 按照 通过 为了 由于 作为 随着 除了 就 自从 尤其 包括 比如 例如 像 比 "
    "并 而 和 与 及 以及 或 或者 还".split()
)
# A clause that ends in a verb of saying or thinking has the next clause as its object.
_ZH_REPORTING = ("说", "讲", "道", "认为", "觉得", "表示", "知道", "相信", "希望", "听说")
_ZH_QUESTION = re.compile(r"[吗呢?？]|什么|谁|哪|怎么|为什么|多少|几")
_QUESTION = re.compile(r"[?？]\W*$")


def split_sentences(text: str) -> list[str]:
    if _CJK.search(text):
        return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]
    return [s.strip() for s in _english_segmenter().segment(text) if s.strip()]


@lru_cache(maxsize=1)
def _english_segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


@lru_cache(maxsize=1)
def _english_tagger():
    from deepfeed.core.augment.en_synonyms import EnglishTagger
    from deepfeed.core.platform.home import activate_nltk_data

    activate_nltk_data()  # the tagger asks WordNet whether a word can be a verb
    return EnglishTagger()


def stands_alone(part: str, clause: bool) -> bool:
    """Whether a sentence (or, with ``clause``, a clause of one) can move without the
    text around it: it has its own verb or predicate and does not open with a word that
    ties it to something else."""
    if _CJK.search(part):
        from deepfeed.core.augment.zh_synonyms import tag

        if not clause:
            # A Chinese sentence ended by 。！？ is whole; jieba's tags are too rough to
            # say otherwise (今天天气晴朗 comes out as one name, nr, without a predicate).
            return True
        words = [(part[a:b], flag) for a, b, flag in tag(part) if part[a:b].strip()]
        if not words or not any(flag.startswith(_ZH_PREDICATE) and flag != "vn" for _, flag in words):
            return False
        return len(part) >= 3 and not part.startswith(tuple(_ZH_DEPENDENT_START)) and not part.endswith(_ZH_REPORTING)
    tags = [(token, tag) for _, _, token, tag in _english_tagger().tag(part) if token[:1].isalnum()]
    if not tags:
        return False
    first_word, first_tag = tags[0]
    if clause and first_tag in _EN_DEPENDENT_START:
        return False
    if any(tag in _EN_FINITE for _, tag in tags):
        return True
    # An imperative: a base-form verb first and something after it ("store the box": the
    # tagger often reads a clause-initial imperative as a noun; "scissors" alone is none).
    return len(tags) >= 2 and (first_tag == "VB" or (first_tag in ("NN", "VBP") and _verb(first_word)))


def _verb(word: str) -> bool:
    from nltk.corpus import wordnet

    return bool(wordnet.synsets(word.lower(), "v"))


def is_question(text: str) -> bool:
    return bool(_QUESTION.search(text.strip()))


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
    """Sentences in another order, unless one leans on another: any sentence, the first
    too, since a sentence moved after others would take them as what its "this" means."""
    if order_matters(text):
        return None
    sentences = split_sentences(text)
    if len(sentences) < 2 or any(has_sequence_words(s) for s in sentences):
        return None
    # A question follows up on what came before it; a fragment leans on it.
    if any(is_question(s) or not stands_alone(s, clause=False) for s in sentences):
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
    if is_question(sentence) or (zh and _ZH_QUESTION.search(body)):
        return None  # the question mark (or 吗, 什么) belongs to one clause, not the sentence
    if not all(stands_alone(c, clause=True) for c in clauses):
        return None
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
        return (
            (new, "sentence_reorder")
            if new
            else "a sentence depends on the one before it (or is a question or a fragment)"
        )
    if has_sequence_words(text):
        return "a sequencing, causal or referring word ties the clauses together"
    new = reorder_clauses(text.strip(), rng)
    return (new, "clause_reorder") if new else "single sentence without clauses that stand on their own"
