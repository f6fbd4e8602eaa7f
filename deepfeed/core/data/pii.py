"""Rule-based PII detection and scrubbing with typed placeholders.

Detectors run in a fixed priority order over the text. Each accepted match is masked
(same length, so offsets stay valid) before the next detector runs: an e-mail's digits
never become a phone, a valid resident ID never becomes a bank card, and an ID with a
bad checksum is still free to be caught as a card if Luhn says so.

Everything is precompiled and gated on cheap substring tests because this runs over
millions of records, most of which contain no PII at all.

PII is often disguised, by accident or on purpose: full-width digits, a zero-width space
inside a phone number, ``%40`` or ``\u0040`` for '@', "name at example dot com",
"139.1773.0042". The detectors run on a normalized copy of the text (NFKC, zero-width
characters removed, percent-, backslash- and HTML-escapes decoded) and the spans found
there are mapped back to the original characters, so the placeholder replaces exactly
the disguised form. Spelled-out e-mails and digits split by separators have detectors of
their own (_SPELLED_EMAIL, _SPLIT_DIGITS).
"""

from __future__ import annotations

import datetime as _dt
import html
import ipaddress
import re
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

KINDS = ("EMAIL", "ID_CN", "BANK_CARD", "IP", "PHONE", "ADDRESS", "NAME")
PLACEHOLDERS = {kind: f"<{kind}>" for kind in KINDS}

# The mask must act as a token boundary for every pattern and never be matched itself.
_MASK = "\x00"


class Span(NamedTuple):
    kind: str
    start: int
    end: int


class ScrubResult(NamedTuple):
    text: str
    counts: dict[str, int]


# --- validators -------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(number: str) -> bool:
    """GB 11643 resident ID: 17 digits, a real birth date, ISO 7064 MOD 11-2 check char."""
    s = number.replace(" ", "").upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _valid_card(match: str) -> bool:
    seps = {c for c in match if c in " -"}
    if len(seps) > 1:  # "1234 5678-..." is two numbers glued together, not one card
        return False
    digits = match.replace(" ", "").replace("-", "")
    # A run of one repeated digit passes Luhn (all zeros) but is filler, not a card.
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _valid_ipv4(match: str) -> bool:
    return all(int(octet) <= 255 for octet in match.split("."))


def _valid_ipv6(match: str) -> bool:
    # "::1"-style loopbacks identify no one; the length floor also skips "a::b" in prose.
    if len(match) < 6:
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


# --- patterns ---------------------------------------------------------------------

# Explicit ASCII classes instead of \b / \w: CJK characters are \w, so "电话13812345678"
# has no \b before the digits.
_NB = r"(?<![0-9A-Za-z])"  # not preceded by an alphanumeric
_NA = r"(?![0-9A-Za-z])"  # not followed by one

# Quantifiers are bounded (RFC 5321 limits) and the match may only start at a token
# boundary, so a 10 MB line of letters stays linear instead of quadratic.
_EMAIL = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)

# Patterns start with a character class and check the left boundary right after it
# ("[1-9](?<![0-9A-Za-z].)"): the regex engine can then skip ahead to candidate
# characters instead of testing a look-behind at every position, about twice as fast.
_ID_CN = (
    r"[1-9](?<![0-9A-Za-z].)[0-9]{5} ?(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r" ?[0-9]{3}[0-9Xx]" + _NA
)

# First digit 2-6 or 9 covers Visa/Mastercard/Amex/JCB/Discover/UnionPay and China's
# domestic 9xxx cards, and keeps millisecond timestamps (1...) out: Luhn alone would
# pass one in ten of them.
_CARD = r"[2-69](?<![0-9A-Za-z].)[0-9]{3}(?:[ -]?[0-9]){9,15}" + _NA

# Octet ranges are checked by _valid_ipv4: the loose form keeps the character-first shape.
_IPV4 = r"[0-9](?<![0-9.].)[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\.?[0-9])"
_IPV6 = (
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?![0-9A-Za-z_:])"
)

_PHONE = "|".join(
    (
        # Chinese mobile, optionally +86 / 0086, optionally grouped 3-4-4.
        _NB + r"(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ .-]?[0-9]{4}){2}" + _NA,
        # Chinese landline: area code 0xx(x), local number never starts with 0 or 1.
        _NB + r"(?:\(0[1-9][0-9]{1,2}\)|0[1-9][0-9]{1,2})[ -]?[2-9][0-9]{6,7}(?:-[0-9]{1,4})?" + _NA,
        # International E.164-ish: '+', 8-15 digits, a few separators between them.
        r"(?<![0-9A-Za-z+])\+[1-9](?:[ .()-]{0,2}[0-9]){7,14}" + _NA,
        # US style. Separators are required: a bare 10-digit run is far more often an
        # order number or a timestamp than a phone.
        _NB + r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}" + _NA,
    )
)

_EN_STREET = (
    r"[0-9](?<![0-9A-Za-z].)[0-9]{0,5}[A-Za-z]?(?:[ \t]+[A-Z][A-Za-z'.-]*){1,4}[ \t]+"
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|"
    r"place|pl|terrace|ter|parkway|pkwy|highway|hwy|square|sq|circle|cir)\b\.?"
    r"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|room|\#)\.?[ \t]*[0-9A-Za-z-]{1,6})?"
    r"(?:,[ \t]*[A-Z][A-Za-z .]{1,30},[ \t]*[A-Z]{2}[ \t]+[0-9]{5}(?:-[0-9]{4})?)?"
)
# A place-name character: CJK, but not the words that typically lead into an address
# ("我住在", "地址是", "寄到"); without them the match would swallow the whole clause.
_ZP = r"(?:(?![我你他她的是在住址到从往去寄送请])[\u4e00-\u9fff])"
_ZH_ADDR = (
    rf"(?:{_ZP}{{2,7}}(?:省|自治区))?(?:{_ZP}{{1,6}}(?:市|州|盟))?"
    rf"(?:{_ZP}{{1,6}}(?:区|县|旗))?(?:{_ZP}{{1,8}}(?:镇|乡|街道))?"
    rf"{_ZP}{{1,12}}(?:大道|大街|路|街|巷|胡同|弄)[0-9]{{1,5}}(?:号|弄)"
    r"(?:[0-9]{1,5}(?:号楼|栋|幢|座|单元|层|楼|室|号))*"
)

# Common single and compound surnames: "我叫" also means "I call (for)", so a
# surname is what tells "我叫张伟" from "我叫了外卖".
_SURNAMES_1 = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏"
    "魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付傅方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚"
    "邵万钱严覃武戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳"
    "甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解"
    "牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边"
    "卞姬师仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
)
_SURNAMES_2 = "欧阳|司马|上官|诸葛|东方|皇甫|尉迟|公孙|慕容|长孙|宇文|司徒|夏侯|令狐|端木|轩辕|独孤|南宫|西门|呼延"
# Given-name characters exclude what usually follows a name in a sentence ("我叫张三今年…").
_GIVEN = r"(?:(?![的是在了和与住电手家今年岁来从我你他她])[\u4e00-\u9fff])"
_ZH_NAME = rf"(?:(?:{_SURNAMES_2})|[{_SURNAMES_1}]){_GIVEN}{{1,2}}"
# At least two letters: a lone capital is an initial (handled below) or noise ("name: C").
_EN_WORD = r"(?:[A-Z]'|Mc|Mac)?[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)"
# A title is never the name: "Prof. Dr. <NAME>" must not yield "Dr" on a second pass.
_EN_NAME = rf"(?!{_TITLES}\b)(?:[A-Z]\.[ \t]*)?{_EN_WORD}(?:[ \t]+{_EN_WORD}){{0,2}}"

# Titles may stack ("Prof. Dr. Marcos Bagno"); the name is what follows the last one.
_EN_TITLE = rf"(?<![A-Za-z])(?:{_TITLES}\.?[ \t]+)+(?P<v>{_EN_NAME})"
# "Saeed Torabzadeh <saeed@…>": e-mails are masked by the time names are looked for,
# so the mailbox shows as '<' followed by mask characters.
_EN_MAILBOX = rf"(?P<v>{_EN_NAME})[ \t]*<{_MASK}"
# "Name:" only capitalized, as on forms: lower-case "name:" is a YAML/GraphQL key whose
# values ("name: Install deps", "name: String") are not people.
_EN_INTRO = (
    r"(?:(?i:\b(?:my name is|my name's|i am called|i'm called))"
    r"|(?<![A-Za-z])(?:Name|NAME|Full [Nn]ame|FULL NAME)[ \t]*[:：])"
    rf"[ \t]*(?P<v>{_EN_NAME})"
)
_ZH_INTRO = (
    # "患者"/"病人" need the colon: "患者高烧", "患者查体" start with common surnames.
    rf"(?:我叫|我的名字[是叫]|本人姓名是?|联系人|收件人|收货人)(?P<v>{_ZH_NAME})"
    r"|(?:姓名|名字|联系人|收件人|收货人|患者|病人)[ \t]*[:：][ \t]*(?P<w>[\u4e00-\u9fff]{2,4}(?![\u4e00-\u9fff]))"
)
_ZH_HONORIFIC = rf"(?P<v>(?:{_SURNAMES_2})|[{_SURNAMES_1}])(?:先生|女士)"


# "jane dot doe at example dot com", "jane(at)example(dot)com", "jane [at] example.com":
# the separators spelled out, bracketed or not. Unbracketed " at " / " dot " read as
# English too ("look at it dot by dot"), so then the address must end in a common
# top-level domain.
_AT = r"(?:[ \t]*[\[({<][ \t]*(?i:at)[ \t]*[\])}>][ \t]*|[ \t]+(?i:at)[ \t]+)"
_DOT = r"(?:[ \t]*[\[({<][ \t]*(?i:dot)[ \t]*[\])}>][ \t]*|[ \t]+(?i:dot)[ \t]+|\.)"
_BRACKETED = re.compile(r"[\[({<][ \t]*(?i:at|dot)[ \t]*[\])}>]")
_COMMON_TLDS = frozenset("com org net edu gov mil int info biz io co cn uk de fr jp ru us ca au in me hk tw sg".split())
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_%+-]{0,62})"
_SPELLED_EMAIL = (
    rf"(?<![A-Za-z0-9._%+-]){_LABEL}(?:{_DOT}{_LABEL}){{0,4}}{_AT}{_LABEL}(?:{_DOT}{_LABEL}){{1,4}}"
    r"(?![A-Za-z0-9-])"
)


def _valid_spelled_email(match: str) -> bool:
    if "@" in match:  # a plain address is the EMAIL detector's
        return False
    if _BRACKETED.search(match):
        return True
    tld = re.split(r"[ \t.\])}>]+", match.strip())[-1].lower()
    return tld in _COMMON_TLDS


# Digits with a separator (space, dot, dash, slash, underscore) between any of them:
# "139.1773.0042", "1 3 9 1 7 7 3 0 0 4 2". The run is classified by its digits alone
# (mobile, resident ID, bank card); the formats the other detectors know (grouped cards,
# IPs, dates) are matched before it runs.
# A match starts only at the first digit of a run and takes the whole run (possessive),
# so a megabyte of "1 1 1 ..." is one match, not one attempt per digit.
_SPLIT_DIGITS = (
    r"(?<![0-9A-Za-z])(?<![0-9][ ._/-])(?<![0-9][ ._/-]{2})"
    r"[0-9]{1,8}(?:[ ._/-]{1,2}[0-9]{1,8})++[Xx]?(?![0-9A-Za-z])"
)
_SPLIT_SEP = re.compile(r"[ ._/-]")


def _split_digits_kind(match: str) -> str | None:
    digits = _SPLIT_SEP.sub("", match)
    if len(digits) == 18 and valid_cn_id(digits):
        return "ID_CN"
    if not digits.isdigit():
        return None
    if len(digits) == 11 and re.fullmatch(r"1[3-9][0-9]{9}", digits):
        return "PHONE"
    if 13 <= len(digits) <= 19 and digits[0] in "234569" and len(set(digits)) > 1 and luhn_ok(digits):
        return "BANK_CARD"
    return None


class _Features(NamedTuple):
    digit: bool
    # Seven digits with at most two separator characters between neighbours: every ID,
    # card and phone format has such a cluster, while years, prices and counts do not.
    cluster7: bool


_DIGIT = re.compile(r"[0-9]")
_CLUSTER7 = re.compile(r"[0-9](?:[ .()-]{0,2}[0-9]){6}")


def _features(t: str) -> _Features:
    m = _DIGIT.search(t)
    if m is None:
        return _Features(False, False)
    return _Features(True, _CLUSTER7.search(t, m.start()) is not None)


class _Detector(NamedTuple):
    kind: str
    finditer: Callable[[str], Iterable[re.Match[str]]]
    validate: Callable[[str], bool] | None
    # A necessary condition, far cheaper than the regex: most records skip most regexes.
    gate: Callable[[str, _Features], bool]
    # For detectors whose kind depends on the match: the kind, or None to reject it.
    classify: Callable[[str], str | None] | None = None


_ZH_ADDR_RE = re.compile(_ZH_ADDR)
_ZH_ANCHOR = re.compile(r"(?:大道|大街|路|街|巷|胡同|弄)[0-9]{1,5}(?:号|弄)")


def _zh_addresses(text: str) -> Iterable[re.Match[str]]:
    # The full pattern is costly at every CJK character (its optional admin-unit groups
    # backtrack), so it only runs in a window around each "路88号"-style anchor:
    # linear on a 10 MB line instead of minutes.
    pos = 0
    for a in _ZH_ANCHOR.finditer(text):
        if a.start() < pos:
            continue
        m = _ZH_ADDR_RE.search(text, max(pos, a.start() - 48), a.end() + 40)
        if m is not None:
            yield m
            pos = m.end()


_DETECTORS = (
    _Detector("EMAIL", re.compile(_EMAIL).finditer, None, lambda t, f: "@" in t),
    _Detector("ID_CN", re.compile(_ID_CN).finditer, valid_cn_id, lambda t, f: f.cluster7),
    _Detector("BANK_CARD", re.compile(_CARD).finditer, _valid_card, lambda t, f: f.cluster7),
    _Detector("IP", re.compile(_IPV4).finditer, _valid_ipv4, lambda t, f: f.digit and "." in t),
    _Detector("IP", re.compile(_IPV6).finditer, _valid_ipv6, lambda t, f: t.count(":") >= 2),
    _Detector("PHONE", re.compile(_PHONE).finditer, None, lambda t, f: f.cluster7),
    _Detector(
        "EMAIL",
        re.compile(_SPELLED_EMAIL).finditer,
        _valid_spelled_email,
        lambda t, f: (
            " at " in t
            or " AT " in t
            or " At " in t
            or "at]" in t
            or "at)" in t
            or "AT]" in t
            or "AT)" in t
            or "at}" in t
            or "at>" in t
        ),
    ),
    _Detector("SPLIT", re.compile(_SPLIT_DIGITS).finditer, None, lambda t, f: f.cluster7, _split_digits_kind),
    _Detector("ADDRESS", re.compile(_EN_STREET).finditer, None, lambda t, f: f.digit),
    _Detector("ADDRESS", _zh_addresses, None, lambda t, f: f.digit and ("号" in t or "弄" in t)),
    # Gates are spelled out as `in` chains: a generator over a tuple of needles costs
    # more than the whole chain.
    _Detector(
        "NAME",
        re.compile(_EN_TITLE).finditer,
        None,
        lambda t, f: "Mr" in t or "Ms" in t or "Dr" in t or "Prof" in t or "Miss" in t or "Mx" in t,
    ),
    _Detector("NAME", re.compile(_EN_MAILBOX).finditer, None, lambda t, f: "@" in t and "<" in t),
    _Detector(
        "NAME",
        re.compile(_EN_INTRO).finditer,
        None,
        lambda t, f: "ame" in t or "AME" in t or "alled" in t or "ALLED" in t,
    ),
    _Detector(
        "NAME",
        re.compile(_ZH_INTRO).finditer,
        None,
        lambda t, f: (
            "名" in t or "叫" in t or "联系人" in t or "收件人" in t or "收货人" in t or "患者" in t or "病人" in t
        ),
    ),
    _Detector("NAME", re.compile(_ZH_HONORIFIC).finditer, None, lambda t, f: "先生" in t or "女士" in t),
)


def _value_span(m: re.Match[str]) -> tuple[int, int]:
    # Name rules capture only the name ("Dr. <NAME>"), so the context stays readable.
    if m.lastgroup is not None:
        return m.span(m.lastgroup)
    return m.span()


# --- normalization -----------------------------------------------------------------

# Invisible characters that split a token without showing: zero-width space/joiners,
# word joiner, BOM, soft hyphen, the invisible math operators.
_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"
# What needs decoding: percent-escapes (runs, for multi-byte UTF-8), backslash escapes,
# HTML character references, invisible characters, and any non-ASCII run (NFKC).
_DECODE = re.compile(
    r"(?:%[0-9A-Fa-f]{2})+|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}|\\x[0-9A-Fa-f]{2}"
    rf"|&#[0-9]{{1,7}};|&#[xX][0-9A-Fa-f]{{1,6}};|&[A-Za-z]{{2,8}};|[{_INVISIBLE}]+|[^\x00-\x7f{_INVISIBLE}]+"
)
_ESCAPE_HINT = re.compile(r"%[0-9A-Fa-f]{2}|\\[uUx]|&#?[0-9A-Za-z]+;")
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]")


def _decode_escape(token: str) -> str:
    if token[0] == "%":
        return urllib.parse.unquote(token, errors="replace")
    if token[0] == "\\":
        try:
            return chr(int(token[2:], 16))
        except (ValueError, OverflowError):
            return token
    return html.unescape(token)


def normalize_for_matching(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """(normalized text, starts, ends): normalized character i stands for text[starts[i]:ends[i]].
    (text, None, None) when nothing changes, the common case, checked first and cheaply.

    Offsets stay exact wherever the mapping is one to one: ASCII, runs already in NFKC
    (most CJK text), and characters NFKC maps to one character (full-width forms). A
    character that expands ("ﬁ" -> "fi") maps each of its outputs to itself; an escape
    maps its decoded characters to the whole escape; invisible characters map to nothing.
    """
    if text.isascii():
        if not _ESCAPE_HINT.search(text):
            return text, None, None
    elif unicodedata.is_normalized("NFKC", text) and not _INVISIBLE_RE.search(text) and not _ESCAPE_HINT.search(text):
        return text, None, None
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []

    def same(a: int, b: int) -> None:
        out.append(text[a:b])
        starts.extend(range(a, b))
        ends.extend(range(a + 1, b + 1))

    pos = 0
    for m in _DECODE.finditer(text):
        a, b = m.span()
        if a > pos:
            same(pos, a)
        pos = b
        token = m.group()
        if token[0] in "%\\&":
            decoded = _decode_escape(token)
            out.append(decoded)
            starts.extend([a] * len(decoded))
            ends.extend([b] * len(decoded))
        elif _INVISIBLE_RE.match(token):
            continue
        elif unicodedata.is_normalized("NFKC", token):
            same(a, b)
        else:  # character by character, so each output keeps its own source character
            for i, ch in enumerate(token, start=a):
                decoded = unicodedata.normalize("NFKC", ch)
                out.append(decoded)
                starts.extend([i] * len(decoded))
                ends.extend([i + 1] * len(decoded))
    if pos < len(text):
        same(pos, len(text))
    return "".join(out), starts, ends


def _scan(text: str, first_only: bool) -> list[Span]:
    probe, starts, ends = normalize_for_matching(text)
    spans = _scan_normalized(probe, first_only)
    if starts is None or not spans:
        return spans
    mapped: list[Span] = []
    for sp in spans:
        s, e = starts[sp.start], ends[sp.end - 1]
        if mapped and s < mapped[-1].end:  # two spans inside one decoded token: merge
            last = mapped.pop()
            s, e = last.start, max(e, last.end)
        mapped.append(Span(sp.kind, s, e))
    return mapped


def _scan_normalized(probe: str, first_only: bool) -> list[Span]:
    spans: list[Span] = []
    masked = probe
    feats = _features(probe)
    for det in _DETECTORS:
        if not det.gate(probe, feats):
            continue
        found = []
        for m in det.finditer(masked):
            if det.validate is not None and not det.validate(m.group()):
                continue
            kind = det.kind
            if det.classify is not None:
                kind = det.classify(m.group())
                if kind is None:
                    continue
            s, e = _value_span(m)
            found.append(Span(kind, s, e))
            if first_only:
                return found
        if found:
            spans.extend(found)
            parts, pos = [], 0
            for sp in found:
                parts.append(masked[pos : sp.start])
                parts.append(_MASK * (sp.end - sp.start))
                pos = sp.end
            parts.append(masked[pos:])
            masked = "".join(parts)
    spans.sort(key=lambda sp: sp.start)
    return spans


def find_pii(text: str) -> list[Span]:
    """All PII spans in `text`, non-overlapping, ordered by position."""
    return _scan(text, first_only=False)


def has_pii(text: str) -> bool:
    """True as soon as one PII span is found; the cheap form for counting leftovers."""
    return bool(_scan(text, first_only=True))


def scrub(text: str) -> ScrubResult:
    """Replace every PII span by its placeholder; `counts` maps kind -> replacements."""
    spans = _scan(text, first_only=False)
    if not spans:
        return ScrubResult(text, {})
    parts, pos = [], 0
    counts: Counter[str] = Counter()
    for sp in spans:
        parts.append(text[pos : sp.start])
        parts.append(PLACEHOLDERS[sp.kind])
        pos = sp.end
        counts[sp.kind] += 1
    parts.append(text[pos:])
    return ScrubResult("".join(parts), dict(counts))


# Joins texts for one pass of scrub_many. No pattern matches across it (each needs a
# letter, digit or CJK character on both sides of what it matches, and none spans "\n"),
# and each text edge looks to the patterns like a text start or end.
_JOIN = "\n\x00\n"


def scrub_many(texts: Sequence[str]) -> list[ScrubResult]:
    """[scrub(t) for t in texts], with one scan of the joined texts deciding which hold no
    PII: thousands of short texts cost one call's overhead instead of thousands. The texts
    the joined scan changes are scrubbed again on their own, so the result is exactly the
    per-text one."""
    if len(texts) < 2 or any("\x00" in t for t in texts):  # NUL is the mask character
        return [scrub(t) for t in texts]
    parts = scrub(_JOIN.join(texts)).text.split(_JOIN)
    if len(parts) != len(texts):  # cannot happen by construction; stay correct anyway
        return [scrub(t) for t in texts]
    return [ScrubResult(t, {}) if part == t else scrub(t) for t, part in zip(texts, parts)]


def scrub_value(value: Any) -> tuple[Any, dict[str, int]]:
    """`value` with every string in it scrubbed (dict keys and values, list items, nested),
    other values unchanged; and the replacements by kind. For metadata, tags and other
    structured free text."""
    counts: Counter[str] = Counter()

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            result = scrub(v)
            counts.update(result.counts)
            return result.text
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v

    return walk(value), dict(counts)


def scrub_batch(texts: Iterable[str]) -> list[ScrubResult]:
    return [scrub(t) for t in texts]


def total_counts(results: Iterable[ScrubResult]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.counts)
    return dict(total)
