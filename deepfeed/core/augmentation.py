"""Augmenting the training split, with provenance on every new record.

Techniques here: sentence reordering (structural perturbation) and WordNet synonym
replacement. Only train-split records are augmented, so no sibling of a held-out
evaluation record can leak into training. Protected spans (numbers, codes, URLs,
placeholders such as <EMAIL>) are never altered.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from deepfeed.core.cleaning import content_key

# A Latin sentence ends at .!?; followed by space (not "3.5" or a "1." list number);
# a Chinese one at its full-width punctuation, with or without space.
_SENTENCE_END = re.compile(r"(?<=[.!?;])(?<!\d[.])\s+|(?<=[。！？；])\s*")
_PROTECTED = re.compile(
    r"<[A-Z_]+>"  # PII placeholders
    r"|https?://\S+|\S+@\S+"  # URLs, e-mail-like tokens
    r"|\b[A-Z]\d{2}(?:\.\d+)?\b"  # ICD-10-like codes
    r"|\d[\d.,:/-]*"  # numbers, dates, times
    r"|`[^`]*`"  # inline code
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_ORDERED = re.compile(r"^\s*(?:\d+[.)]\s|[-*•]\s|(?:step\s+\d+|first|then|finally)\b)", re.I | re.M)


@dataclass(frozen=True)
class AugmentationConfig:
    reorder_ratio: float = 0.5
    synonym_ratio: float = 0.5
    synonym_rate: float = 0.15
    max_new_per_record: int = 2
    seed: int = 0


@dataclass
class AugmentationResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def split_sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def reorder_sentences(text: str, rng: random.Random) -> str | None:
    """A different order of the same sentences, or None where order carries meaning
    (numbered steps, lists, code) or there is nothing to reorder."""
    if _ORDERED.search(text) or "```" in text:
        return None
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    for _ in range(5):
        shuffled = sentences[:]
        rng.shuffle(shuffled)
        if shuffled != sentences:
            joiner = "" if re.search(r"[\u4e00-\u9fff]", text) else " "
            return joiner.join(shuffled)
    return None


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
        if key in self._stop or len(key) < 3:
            return []
        if self.base_forms_only and self._wordnet.morphy(key) not in (None, key):
            return []
        if key not in self._cache:
            names: list[str] = []
            for synset in self._wordnet.synsets(key)[:3]:
                for lemma in synset.lemma_names():
                    lemma = lemma.replace("_", " ")
                    if lemma.lower() != key and lemma not in names and " " not in lemma:
                        names.append(lemma)
            self._cache[key] = names[:5]
        return self._cache[key]


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


def replace_synonyms(text: str, synonyms: WordNetSynonyms, rate: float, rng: random.Random) -> tuple[str, int] | None:
    protected = protected_mask(text)
    words = [m for m in _WORD.finditer(text) if not any(a <= m.start() < b for a, b in protected)]
    options = [(m, synonyms.candidates(m.group())) for m in words]
    options = [(m, c) for m, c in options if c]
    if not options:
        return None
    count = max(1, round(rate * len(words)))
    chosen = sorted(rng.sample(options, min(count, len(options))), key=lambda o: o[0].start())
    pieces, last = [], 0
    for match, candidates in chosen:
        word = rng.choice(candidates)
        if match.group()[0].isupper():
            word = word[0].upper() + word[1:]
        pieces.extend([text[last:match.start()], word])
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces), len(chosen)


def _child(parent: dict[str, Any], field_name: str, new_text: str, technique: str, params: dict) -> dict[str, Any]:
    child = dict(parent)
    child[field_name] = new_text
    child["parent_id"] = parent["record_id"]
    child["technique"] = technique
    child["aug_params"] = json.dumps(params, sort_keys=True)
    child["record_id"] = hashlib.sha1(f"{parent['record_id']}:{technique}:{new_text}".encode()).hexdigest()[:16]
    return child


def augment_records(records: list[dict[str, Any]], config: AugmentationConfig, synonyms: WordNetSynonyms | None = None) -> AugmentationResult:
    """Originals (train split only) plus their augmented children."""
    rng = random.Random(config.seed)
    result = AugmentationResult()
    seen = set()
    for record in records:
        if record.get("split") != "train":
            continue
        original = {**record, "parent_id": None, "technique": "original", "aug_params": "{}"}
        result.records.append(original)
        seen.add(content_key(original))
        field_name = "response" if record["kind"] == "pair" else "text"
        text = record[field_name] or ""
        children = []
        if rng.random() < config.reorder_ratio:
            new = reorder_sentences(text, rng)
            if new is None:
                result.skip("reorder: order carries meaning or a single sentence")
            else:
                children.append(_child(record, field_name, new, "sentence_reorder", {"seed": config.seed}))
        if synonyms is not None and rng.random() < config.synonym_ratio:
            if record.get("lang") not in (None, "en"):
                result.skip(f"synonyms: no synonym resource for lang={record.get('lang')}")
            else:
                replaced = replace_synonyms(text, synonyms, config.synonym_rate, rng)
                if replaced is None:
                    result.skip("synonyms: no replaceable word")
                else:
                    new, count = replaced
                    children.append(_child(record, field_name, new, "wordnet_synonym", {"rate": config.synonym_rate, "replaced": count}))
        for child in children[: config.max_new_per_record]:
            key = content_key(child)
            if key in seen:
                result.skip("duplicate of an existing record")
                continue
            seen.add(key)
            result.records.append(child)
    return result
