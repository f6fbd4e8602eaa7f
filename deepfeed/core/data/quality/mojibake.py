"""Mojibake: UTF-8 text decoded as cp1252/Latin-1 (or GBK round trips), found and, where
the whole text round-trips, repaired."""

from __future__ import annotations

import re

# Characters that bytes 0x80-0xBF (UTF-8 continuation bytes) become when UTF-8 is
# wrongly decoded as cp1252 or Latin-1: the fingerprint of mojibake.
_CONTINUATION = {bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0xC0)} | {
    chr(b) for b in range(0x80, 0xC0)
}
_QUOTES_AND_DASHES = set("‘’‚“”„–—…•\u00a0")


def _char_class(chars: set[str]) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


MOJIBAKE = re.compile(
    # 2-byte sequences: Latin-1 letters (é -> Ã©), NBSP/©/° (-> Â ), Latin Extended
    # (ł -> Å‚), Greek and Cyrillic (Ð¿). Leads other than Â/Ã are real capitals
    # in some languages, so after them a closing quote or dash is not evidence.
    "[ÂÃ]"
    + _char_class(_CONTINUATION)
    + "|[ÄÅÎÏÐÑ]"
    + _char_class(_CONTINUATION - _QUOTES_AND_DASHES)
    # 3-byte sequences: CJK and typographic punctuation (中 -> ä¸­, ’ -> â€™)
    + "|[\u00e0-\u00ef]"
    + _char_class(_CONTINUATION)
    + "{2}"
    + "|â€|ï»¿|Â\\s"
    # UTF-8 <-> GBK round trips
    + "|锟斤拷|烫烫烫|屯屯屯"
)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252/Latin-1 ("CafÃ©" -> "Café").

    Only whole-text round trips are attempted (and kept only when they remove the
    mojibake); mixed or doubly broken text is returned unchanged for the filter to drop.
    """
    if not MOJIBAKE.search(text):
        return text
    raw = bytearray()
    for ch in text:
        try:
            raw += ch.encode("cp1252")
        except UnicodeEncodeError:
            try:
                raw += ch.encode("latin-1")
            except UnicodeEncodeError:
                return text
    try:
        fixed = raw.decode("utf-8")
    except UnicodeDecodeError:
        return text
    return fixed if not MOJIBAKE.search(fixed) else text
