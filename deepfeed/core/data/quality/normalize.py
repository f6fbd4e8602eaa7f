"""Text normalisation: NFKC, controls and invisible characters removed, HTML and Markdown
stripped, mojibake repaired, whitespace collapsed."""

from __future__ import annotations

import re
import unicodedata

from deepfeed.core.data.quality.markup import strip_html, strip_markdown
from deepfeed.core.data.quality.mojibake import MOJIBAKE, fix_mojibake

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# C0/C1 controls (not \t \n), zero-width and bidi controls: invisible, and the last
# can reorder what a reader sees ("Trojan Source").
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


_SPACES = re.compile(r"[^\S\n\t]+")
_TABS = re.compile(r"[^\S\n]*\t[^\S\n]*")
_LINE_EDGES = re.compile(r"[^\S\n]*\n[^\S\n]*")
_BLANK_LINES = re.compile(r"\n{3,}")


def _normalize_full(text: str, repair_mojibake: bool = True, shortcut: bool = True) -> str:
    """normalize_text past its first shortcut; ``shortcut=False`` runs every step (tests)."""
    if repair_mojibake:
        text = fix_mojibake(text)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    text = unicodedata.normalize("NFKC", text)
    if shortcut and not _NEEDS_WORK.search(text):  # e.g. Chinese text whose full-width "，？" NFKC just changed
        return _collapse_whitespace(text)
    text = _LINE_BREAKS.sub("\n", text)
    stripped = strip_markdown(strip_html(text))
    if stripped != text:
        # Entities can decode to compatibility characters (&#65313; is a full-width A).
        text = unicodedata.normalize("NFKC", stripped)
    return _collapse_whitespace(_INVISIBLE.sub("", text))


# Text without any of these (and NFKC-stable, without mojibake) leaves every step above
# unchanged but the whitespace: no tag or entity, control, line break to unify, invisible
# character or lone surrogate, and nothing any _MD_RULES pattern needs (a "#" only counts
# at a line's start or end: "order #12" is not a heading). Most records are such plain text.
_NEEDS_WORK = re.compile(
    "[<&\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]"
    r"|[\[*_`|~>]|^[ \t]*(?:[-*_]|:-)|^[ \t]{0,3}#|#[ \t]*$",
    re.MULTILINE,
)


def _collapse_whitespace(text: str) -> str:
    if "\n" not in text and "\t" not in text:
        # The same as the four substitutions below for one line: str.split and re's \s
        # both split on str.isspace characters.
        return " ".join(text.split())
    text = _TABS.sub("\t", text)
    text = _SPACES.sub(" ", text)
    text = _LINE_EDGES.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_text(text: str, repair_mojibake: bool = True) -> str:
    """NFKC; controls removed (\\n and \\t kept); HTML and Markdown debris stripped
    (links keep their text, images go); whitespace runs collapsed, paragraphs kept.

    Mojibake is repaired first where the whole text round-trips (NFKC would otherwise
    turn some of it, e.g. "Â" + NBSP, into plausible-looking text). Lone surrogates
    become U+FFFD rather than vanishing, so the encoding-debris filter still sees
    that the record was damaged.
    """
    if not _NEEDS_WORK.search(text) and (
        text.isascii() or (unicodedata.is_normalized("NFKC", text) and not (repair_mojibake and MOJIBAKE.search(text)))
    ):
        return _collapse_whitespace(text)
    return _normalize_full(text, repair_mojibake)


def collapse_blank_lines(text: str) -> str:
    """Runs of blank lines cut to one blank line."""
    return _BLANK_LINES.sub("\n\n", text)
