"""HTML and Markdown: the patterns the markup detector looks for and the stripping that
`normalize_text` does. Sharing the patterns guarantees normalised text has nothing left
for the detector to find."""

from __future__ import annotations

import html
import re

_HTML_TAGS = (
    "a|abbr|address|area|article|aside|audio|b|base|bdi|bdo|blockquote|body|br|button|canvas|caption|center|cite|"
    "code|col|colgroup|data|dd|del|details|dfn|dialog|div|dl|dt|em|embed|fieldset|figcaption|figure|font|footer|"
    "form|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|kbd|label|legend|li|link|main|mark|meta|nav|noscript|"
    "object|ol|optgroup|option|output|p|param|picture|pre|q|s|samp|script|section|select|small|source|span|strike|"
    "strong|style|sub|summary|sup|svg|table|tbody|td|template|textarea|tfoot|th|thead|time|title|tr|track|tt|u|ul|"
    "var|video|wbr"
)
# Known tag names only, since a generic <word> pattern would eat "x<y and y>z". A bare
# upper-case name of 4+ letters (<ADDRESS>, <TIME>) is a typed placeholder written by
# PII scrubbing, not HTML; short upper-case tags (<P>, <BR>, </TD>) still count.
_NOT_PLACEHOLDER = r"(?!(?-i:[A-Z][A-Z0-9_]{3,}>))"
_TAG = rf"<{_NOT_PLACEHOLDER}/?(?:{_HTML_TAGS})(?:\s[^<>\n]*)?/?>|<!--|-->|<!doctype\b"
# Entities html.unescape resolves, so normalised text never keeps one.
_ENTITY = (
    r"&(?:nbsp|amp|lt|gt|quot|apos|copy|reg|trade|hellip|[lr][sd]quo|[mn]dash|middot|bull|deg|times|"
    r"divide|plusmn|euro|pound|yen|cent|sect|para|[lr]aquo|shy|ensp|emsp|thinsp|zwn?j|#\d{1,7}|#x[0-9a-f]{1,6});"
)

# Markdown constructs: (pattern, replacement) used by normalize_text, and the subset
# the markup detector looks for. Sharing the patterns guarantees normalised text has
# nothing left for the detector to find.
_MD_FENCE = r"^[ \t]*(?:```|~~~).*$"
_MD_RULE = r"^[ \t]*(?:[-*_][ \t]*){3,}$"
_MD_TABLE_SEP = r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$"
_MD_TABLE_ROW = r"^[ \t]*\|([^\n]*)\|[ \t]*$"
_MD_IMAGE = r"!\[[^\]\n]*\]\([^)\n]*\)"
_MD_LINK = r"\[([^\]\n]+)\]\([^)\n]*\)"
_MD_REF_LINK = r"\[([^\]\n]+)\]\[[^\]\n]*\]"
_MD_REF_DEF = r"^[ \t]*\[[^\]\n]+\]:[ \t]*\S+.*$"
_MD_HEADING = r"^[ \t]{0,3}#{1,6}(?:[ \t]+|$)"
_MD_BOLD = r"(?<![\w*])\*\*(?=\S)([^*\n]+?)(?<=\S)\*\*(?![\w*])"
# __x__ only around phrases with a space: single words are more often identifiers.
_MD_BOLD_UNDERSCORE = r"(?<![\w_])__(?=\S)([^_\n]*\s[^_\n]*?)(?<=\S)__(?![\w_])"
_MD_STRIKE = r"~~(?=\S)([^~\n]+?)(?<=\S)~~"

MARKUP = re.compile(
    "|".join(
        [
            _TAG,
            _ENTITY,
            _MD_FENCE,
            _MD_RULE,
            _MD_TABLE_ROW,
            _MD_IMAGE,
            _MD_LINK,
            _MD_REF_LINK,
            _MD_HEADING,
            _MD_BOLD,
            _MD_BOLD_UNDERSCORE,
            _MD_STRIKE,
        ]
    ),
    re.IGNORECASE | re.MULTILINE,
)


_SCRIPT_STYLE = re.compile(
    r"<(script|style|noscript|template)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL
)
_BLOCK_TAG = re.compile(
    rf"<{_NOT_PLACEHOLDER}/?(?:address|article|aside|blockquote|br|dd|details|div|dl|dt|figcaption|figure|footer|"
    r"form|h[1-6]|header|hr|li|main|nav|ol|p|pre|section|summary|table|tbody|td|tfoot|th|thead|tr|ul)\b"
    r"(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_ANY_TAG = re.compile(
    rf"<{_NOT_PLACEHOLDER}/?(?:{_HTML_TAGS})\b(?:\s[^<>]*)?/?>|<!doctype[^>]*>|<!--|-->", re.IGNORECASE
)
_MD_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(p, re.MULTILINE), r)
    for p, r in [
        (_MD_FENCE, ""),  # fences go, the code stays
        (_MD_RULE, ""),
        (_MD_TABLE_SEP, ""),
        (_MD_TABLE_ROW, r"\1"),  # rows keep their inner cells
        (_MD_IMAGE, ""),
        (_MD_LINK, r"\1"),  # links keep their text
        (_MD_REF_LINK, r"\1"),
        (_MD_REF_DEF, ""),
        (_MD_HEADING, ""),
        (r"[ \t]+#+[ \t]*$", ""),  # closing heading hashes
        (r"^(?:[ \t]{0,3}>[ \t]?)+", ""),  # blockquote markers
        (_MD_BOLD, r"\1"),
        (_MD_BOLD_UNDERSCORE, r"\1"),
        (r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])", r"\1"),
        (r"(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])", r"\1"),
        (_MD_STRIKE, r"\1"),
        (r"`([^`\n]+)`", r"\1"),
    ]
]
_MD_HINT = re.compile(r"[\[*_`#|~>]|^[ \t]*[-*_]", re.MULTILINE)


def strip_html(text: str) -> str:
    for _ in range(3):  # "&amp;lt;p&amp;gt;" and "<<b>p>" need more than one pass
        before = text
        if "&" in text:
            text = html.unescape(text)
        if "<" in text:
            text = _SCRIPT_STYLE.sub("", text)
            text = _BLOCK_TAG.sub("\n", text)
            text = _ANY_TAG.sub("", text)
        if text == before:
            break
    return text


def strip_markdown(text: str) -> str:
    for _ in range(3):  # "# # title" or "||cell||" need a second pass
        if not _MD_HINT.search(text):
            break
        before = text
        for pattern, replacement in _MD_RULES:
            text = pattern.sub(replacement, text)
        if text == before:
            break
    return text
