"""Domain-term consistency: rewrite every glossary variant to one canonical form.

A glossary maps a canonical key (e.g. an ICD-10 code) to the ways people write it::

    I10: [hypertension, high blood pressure, 高血压]

How the canonical form is rendered (``style``):

* ``"term_code"`` (default): the preferred term in the script of the variant that was
  found, followed by the code -- ``hypertension (I10)``, ``高血压(I10)``. The code is the
  one canonical key shared by every variant and both languages, so retrieval,
  evaluation and the consistency check can rely on it; the term keeps the sentence
  fluent, which matters because the model is fine-tuned on this text (a bare
  ``患者有I10病史`` teaches it to talk in codes and drops the word it should know).
* ``"code"``: the bare code, as the source article literally suggests.
* ``"term"``: the preferred term only.

The preferred term of a script is the first variant listed in that script (Han
characters or not); with none in that script the other one is used.

Replacement is idempotent: a variant directly followed by its own code in brackets
(``hypertension (I10)``, ``高血压（I10）``) is matched as one unit, so the renderer's own
output is recognised as canonical, is not reported by :meth:`Glossary.find_variants`
and is rewritten to itself. Where a replacement meets the text around it and forms a
longer variant (CJK has no word boundaries: ``急性`` + ``心肌梗死(I21)``), normalisation
repeats until nothing changes.

Matching: Latin variants are case-insensitive with word boundaries and treat runs of
spaces/hyphens alike; all-caps acronyms (``COPD``, ``HTN``) are case-sensitive, so
"copd" in a URL or "Mi" in a name are left alone; CJK variants match as substrings.
At any position the longest variant wins ("type 2 diabetes mellitus" over "diabetes").
All variants compile into one regex shaped as a trie, run over the lowercased text:
Python's ``re`` tries the branches of a flat alternation one by one, while a trie
whose every branch starts with a literal character lets it skip non-candidate
positions in C and costs, per candidate, the variant length instead of the glossary
size (IGNORECASE would switch that skipping off). ``pyahocorasick`` would do the same
but is not a dependency of this project, and the regex handles the boundary and case
rules in the same pass.
"""

from __future__ import annotations

import bisect
import csv
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Optional, Union

import yaml

__all__ = ["EXAMPLE_GLOSSARY", "IGNORE_KEY", "Glossary", "VariantMatch", "load_glossary"]

EXAMPLE_GLOSSARY = "glossary_icd10.yaml"  # shipped in deepfeed/data
# Reserved key: phrases that contain a variant but must be left alone ("ST depression").
IGNORE_KEY = "_ignore"
STYLES = ("term_code", "code", "term")

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_LATIN_WORD_CHAR = "A-Za-z0-9\u00c0-\u024f"
_SEPARATOR = r"[\s\-\u2010-\u2015]+"
_APOSTROPHE = "['\u2019]"
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]{1,5}")
_MAX_PASSES = 5


@dataclass(frozen=True)
class VariantMatch:
    """A non-canonical occurrence of a glossary term in a text."""

    start: int
    end: int
    text: str
    canonical: str


def _key(text: str) -> str:
    """Comparison key of a variant or of matched text: case and separators folded."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    return re.sub(_SEPARATOR, " ", text).strip().casefold()


def _atoms(variant: str) -> list[str]:
    atoms: list[str] = []
    for ch in variant:
        if re.fullmatch(_SEPARATOR, ch):
            if atoms and atoms[-1] != _SEPARATOR:
                atoms.append(_SEPARATOR)
        elif ch in "'\u2019":
            atoms.append(_APOSTROPHE)
        else:
            atoms.append(re.escape(ch))
    # Word boundaries for Latin ends; a hyphen that glues on another word makes a
    # compound ("stroke-like", "post-stroke") that is not the term itself. The start
    # check sits after the first character so that every trie branch begins with a
    # literal, which is what lets re skip ahead quickly.
    if re.match(f"[{_LATIN_WORD_CHAR}]", variant[0]):
        atoms.insert(1, f"(?<![{_LATIN_WORD_CHAR}].)(?<![{_LATIN_WORD_CHAR}]-.)")
    if re.match(f"[{_LATIN_WORD_CHAR}]", variant[-1]):
        atoms.append(f"(?![{_LATIN_WORD_CHAR}]|-[{_LATIN_WORD_CHAR}])")
    return atoms


def _trie_regex(variants: Iterable[str]) -> str:
    """One regex matching any variant, preferring the longest at each position."""
    trie: dict = {}
    for variant in variants:
        node = trie
        for atom in _atoms(variant):
            node = node.setdefault(atom, {})
        node[None] = True  # a variant ends here

    def order(item) -> tuple[int, str]:
        # Continuations first, then the word-boundary check that ends a Latin variant,
        # then "ends here": Python's re takes the first branch that succeeds, so this
        # order is what makes the longest variant win.
        atom = item[0]
        return (2, "") if atom is None else (int(atom.startswith("(?!")), atom)

    def build(node: dict) -> str:
        branches = ["" if atom is None else atom + build(child) for atom, child in sorted(node.items(), key=order)]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return build(trie) if trie else "(?!)"


class _Hit(NamedTuple):
    start: int
    end: int
    variant: str
    suffix: str  # a bracketed glossary code right after the variant, or ""
    code: Optional[str]
    canonical: Optional[str]  # None: an ignored phrase


_NOT_A_TERM = object()


class Glossary:
    """A compiled glossary: canonical key -> variants, with one matching regex."""

    def __init__(self, mapping: Mapping[str, Sequence[str]], style: str = "term_code"):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
        self.terms: dict[str, tuple[str, ...]] = {}
        self._preferred: dict[tuple[str, bool], str] = {}
        # key -> canonical (None for an ignored phrase); folded: case-insensitive
        # variants, exact: case-sensitive acronyms
        self._folded: dict[str, Optional[str]] = {}
        self._exact: dict[str, Optional[str]] = {}
        self.ignored: tuple[str, ...] = ()
        conflicts = []
        for canonical, variants in mapping.items():
            if isinstance(variants, str):
                variants = [variants]
            if canonical == IGNORE_KEY:
                self.ignored = tuple(dict.fromkeys(self._clean(v, "ignored phrase") for v in variants or []))
                for phrase in self.ignored:
                    self._register(phrase, None, conflicts)
                continue
            canonical = self._clean(canonical, "canonical term")
            cleaned = [self._clean(v, f"variant of {canonical}") for v in variants or []]
            # A variant equal to its code would make the rendered code itself a variant.
            cleaned = [v for v in dict.fromkeys(cleaned) if _key(v) != _key(canonical)]
            if not cleaned:
                raise ValueError(f"glossary term {canonical!r} has no variants")
            self.terms[canonical] = tuple(cleaned)
            for variant in cleaned:
                self._register(variant, canonical, conflicts)
            cjk = [v for v in cleaned if _CJK.search(v)]
            latin = [v for v in cleaned if not _CJK.search(v)]
            self._preferred[(canonical, True)] = (cjk or latin)[0]
            self._preferred[(canonical, False)] = (latin or cjk)[0]
        if conflicts:
            raise ValueError("glossary variants map to more than one canonical term: " + "; ".join(conflicts))
        self._compile()

    def _register(self, variant: str, canonical: Optional[str], conflicts: list) -> None:
        table, key = (self._exact, variant) if _ACRONYM.fullmatch(variant) else (self._folded, _key(variant))
        if key in table and table[key] != canonical:
            conflicts.append(f"{variant!r} -> {table[key]} and {canonical}")
        table.setdefault(key, canonical)

    @staticmethod
    def _clean(value, what: str) -> str:
        # YAML reads unquoted yes/no/on/off as booleans and 1.0 as a float: refuse them
        # rather than silently matching "True".
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{what} must be a non-empty string, got {value!r} (quote it in YAML)")
        return unicodedata.normalize("NFKC", value.strip())

    def _compile(self) -> None:
        phrases = [v for vs in self.terms.values() for v in vs] + list(self.ignored)
        codes = "|".join(re.escape(c.lower()) for c in sorted(self.terms, key=len, reverse=True))
        suffix = rf"(?P<suffix>[ \t]*[(\uff08][ \t]*(?P<code>{codes})[ \t]*[)\uff09])?"
        # Acronyms are matched in lower case like the rest and checked for their exact
        # spelling afterwards (see _lookup).
        source = f"(?P<variant>{_trie_regex(sorted({p.lower() for p in phrases}))}){suffix}"
        self._pattern = re.compile(source)
        self._source = source
        self._ignorecase: Optional[re.Pattern] = None

    @property
    def _pattern_ignorecase(self) -> re.Pattern:
        # For the rare text whose lower-casing changes its length ("İ" -> "i̇"), so that
        # offsets in the lowercased copy would not line up with the original. Compiled on
        # first use: compiling the trie takes about as long as cleaning 10,000 records.
        if self._ignorecase is None:
            self._ignorecase = re.compile(self._source, re.IGNORECASE)
        return self._ignorecase

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: Union[str, Path], style: str = "term_code") -> "Glossary":
        """From a YAML file: ``canonical: [variant, ...]``."""
        return cls(_yaml_mapping(Path(path).read_text(encoding="utf-8")), style)

    @classmethod
    def from_csv(cls, path: Union[str, Path], style: str = "term_code") -> "Glossary":
        """From a CSV with a header: ``canonical,variant`` (one row per variant) or
        ``canonical,variants`` (variants separated by ``|`` or ``;``)."""
        mapping: dict[str, list[str]] = {}
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            if "canonical" not in fields or not ({"variant", "variants"} & fields.keys()):
                raise ValueError(f"{path}: CSV glossary needs a 'canonical' and a 'variant' or 'variants' column")
            for row in reader:
                canonical = (row[fields["canonical"]] or "").strip()
                if not canonical:
                    continue
                if "variant" in fields:
                    values = [row[fields["variant"]] or ""]
                else:
                    values = re.split(r"[|;]", row[fields["variants"]] or "")
                mapping.setdefault(canonical, []).extend(v.strip() for v in values if v.strip())
        return cls(mapping, style)

    # -- rendering ------------------------------------------------------------

    def render(self, canonical: str, cjk: bool = False) -> str:
        """The canonical form of a term, for text in CJK (``cjk=True``) or Latin script."""
        term = self._preferred[(canonical, cjk)]
        if self.style == "code":
            return canonical
        if self.style == "term":
            return term
        return f"{term}({canonical})" if _CJK.search(term) else f"{term} ({canonical})"

    def _lookup(self, variant: str):
        if variant in self._exact:
            return self._exact[variant]
        return self._folded.get(_key(variant), _NOT_A_TERM)  # e.g. "Copd" for acronym COPD

    def _hits(self, text: str) -> Iterator[_Hit]:
        haystack, pattern = text.lower(), self._pattern
        if len(haystack) != len(text):
            haystack, pattern = text, self._pattern_ignorecase
        for m in pattern.finditer(haystack):
            start, end = m.span("variant")
            canonical = self._lookup(text[start:end])
            if canonical is _NOT_A_TERM:
                continue
            code = text[m.start("code") : m.end("code")] if m.group("code") is not None else None
            yield _Hit(start, m.end(), text[start:end], text[end : m.end()], code, canonical)

    def _rendering(self, hit: _Hit, drop_foreign_code: bool = False) -> tuple[str, bool]:
        """(replacement text, whether the matched text is already canonical)."""
        matched = hit.variant + hit.suffix
        if hit.canonical is None:  # an ignored phrase: matched only to shield its variant
            return matched, True
        rendered = self.render(hit.canonical, cjk=bool(_CJK.search(hit.variant)))
        if hit.variant[:1].isupper() and rendered[:1].islower() and not _ACRONYM.fullmatch(hit.variant):
            rendered = rendered[0].upper() + rendered[1:]  # keep a sentence-initial capital
        own_code = hit.code is not None and hit.code.casefold() == hit.canonical.casefold()
        if own_code and self.style != "term":
            # "high blood pressure (I10)" -> "hypertension (I10)", not "... (I10) (I10)".
            return rendered, matched == rendered
        if drop_foreign_code and self.style == "term_code" and hit.code is not None:
            return rendered, False
        return rendered + hit.suffix, hit.variant == rendered

    # -- use ------------------------------------------------------------------

    def find_variants(self, text: str) -> list[VariantMatch]:
        """Occurrences of glossary variants that are not in canonical form."""
        return [
            VariantMatch(hit.start, hit.end, hit.variant + hit.suffix, hit.canonical)
            for hit in self._hits(text)
            if not self._rendering(hit)[1]
        ]

    def normalize(self, text: str) -> tuple[str, Counter]:
        """Rewrite every variant to its canonical form.

        Returns the new text and, per canonical term, how many occurrences in the
        input were rewritten.
        """
        counts: Counter = Counter()
        text, changed = self._pass(text, counts, drop_foreign_codes=False)
        for _ in range(_MAX_PASSES - 1):
            if not changed:
                break
            # Later passes only repair what the previous one formed with its
            # neighbours; a bracketed code of another term behind such a repair is
            # one this method wrote, so it goes.
            text, changed = self._pass(text, Counter(), drop_foreign_codes=True)
        return text, counts

    def _pass(self, text: str, counts: Counter, drop_foreign_codes: bool) -> tuple[str, bool]:
        pieces, pos = [], 0
        for hit in self._hits(text):
            replacement, is_canonical = self._rendering(hit, drop_foreign_codes)
            if is_canonical:
                continue
            pieces += [text[pos : hit.start], replacement]
            pos = hit.end
            counts[hit.canonical] += 1
        if not pieces:
            return text, False
        pieces.append(text[pos:])
        return "".join(pieces), True

    def normalize_many(self, texts: Sequence[str], separator: str = "\n\x00\n") -> list[tuple[str, Counter]]:
        """``[normalize(t) for t in texts]``, each pass run once over the texts it applies to.

        Pass n runs over the texts pass n-1 changed (all texts for the first), joined by
        ``separator``: no variant or code suffix can span it (they hold no NUL, suffixes no
        line break, and a line break is a word edge like a text's own ends), so each hit
        lies in one text and is counted for it. Thousands of short texts then cost a few
        regex scans instead of thousands, each with its Python overhead.
        """
        out = list(texts)
        counts = [Counter() for _ in out]
        active = []
        for i, text in enumerate(out):
            if text and separator in text:
                out[i], counts[i] = self.normalize(text)
            elif text:
                active.append(i)
        for n in range(_MAX_PASSES):
            if not active:
                break
            joined = separator.join(out[i] for i in active)
            starts, pos = [], 0
            for i in active:
                starts.append(pos)
                pos += len(out[i]) + len(separator)
            pieces, pos, changed = [], 0, set()
            for hit in self._hits(joined):
                replacement, is_canonical = self._rendering(hit, drop_foreign_code=n > 0)
                if is_canonical:
                    continue
                part = bisect.bisect_right(starts, hit.start) - 1
                pieces += [joined[pos : hit.start], replacement]
                pos = hit.end
                changed.add(part)
                if n == 0:  # as in normalize: later passes repair, they are not counted
                    counts[active[part]][hit.canonical] += 1
            if not pieces:
                break
            pieces.append(joined[pos:])
            parts = "".join(pieces).split(separator)
            if len(parts) != len(active):  # cannot happen by construction; stay correct anyway
                return [self.normalize(t) if t else (t, Counter()) for t in texts]
            for part, text in zip(active, parts):
                out[part] = text
            active = [active[k] for k in sorted(changed)]
        return list(zip(out, counts))

    def normalize_batch(self, texts: Iterable[str]) -> tuple[list[str], Counter]:
        total: Counter = Counter()
        out = []
        for text in texts:
            new, counts = self.normalize(text)
            out.append(new)
            total.update(counts)
        return out, total

    def __len__(self) -> int:
        return len(self.terms)

    def __contains__(self, canonical: str) -> bool:
        return canonical in self.terms


def _yaml_mapping(text: str) -> dict:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, Mapping):
        raise ValueError("a YAML glossary must be a mapping of canonical term -> list of variants")
    # Codes such as 250 or 1.5 arrive as numbers; they are still names.
    return {str(k) if isinstance(k, (int, float)) else k: v for k, v in data.items()}


def load_glossary(path: Union[str, Path, None] = None, style: str = "term_code") -> Glossary:
    """Load a glossary by file extension (.yaml/.yml or .csv); None gives the shipped
    ICD-10 example."""
    if path is None:
        text = resources.files("deepfeed").joinpath("data", EXAMPLE_GLOSSARY).read_text(encoding="utf-8")
        return Glossary(_yaml_mapping(text), style)
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return Glossary.from_yaml(Path(path), style)
    if suffix == ".csv":
        return Glossary.from_csv(path, style)
    raise ValueError(f"unsupported glossary format {suffix!r} (use .yaml, .yml or .csv)")
