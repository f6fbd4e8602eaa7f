"""English synonym candidates chosen in context: part of speech, names, idioms, inflection.

A word is replaced only where a replacement can be right in that sentence:

* its part of speech comes from a tagger run on the whole sentence (textblob's
  ``PatternTagger``, a Brill tagger whose lexicon ships inside the package, so it works
  offline; NLTK's perceptron tagger needs data that only its downloader provides), and
  only WordNet senses of that part of speech are used: "Use" tagged as a verb never
  gets the noun "Utilization";
* proper nouns and names are never touched: a word tagged NNP, or capitalised anywhere
  but at the start of a sentence, or next to such a word ("John Dewey" at the start of
  a sentence), or written in capitals (acronyms);
* words inside a multi-word expression WordNet knows ("in advance", "give up",
  "kick the bucket") are never touched: the expression means something its words do not;
* function words (stop words, and every tag that is not a noun, verb, adjective or
  adverb) are never touched;
* the replacement gets the original's inflection (lemminflect: "hid" -> "concealed",
  "doctors" -> "physicians") and case; a candidate that cannot be inflected that way is
  dropped, as is one that would need another indefinite article ("a" -> "an").

Only the dominant WordNet senses of the word's lemma are used (the first synset, and
later ones only where SemCor finds the word in that sense at least a quarter as often
as in the first), and only lemmas SemCor
attests (count >= 1): rare lemmas ("white-shoe", "utilise", "habituate") are mostly
the wrong register or the wrong sense. The sense must be dominant for the candidate too:
"line" is a synonym of "cable" only in a sense "line" is rarely used in, and a reader
takes "check the monitor line" in its usual one (so too "capacity" -> "content").

Sampled children of real answers (docs/augmentation.md) added these:

* a noun next to another noun is part of a compound term ("monitor cable", "bubble
  sort", "memoization function"), and a noun after a number is a unit ("10 seconds" is
  not "10 minutes" although WordNet lists both for "a short time"): neither is touched;
* an adverb in -ly is replaced only by one in -ly ("connected properly" never becomes
  "connected decent", though WordNet lists "decent" as an adverb);
* WordNet lemmas that are inflected forms themselves ("authorities") are not inflected
  again ("authoritieses").
"""

from __future__ import annotations

import re
from functools import lru_cache

Spans = list[tuple[int, int]]

# Tokens as the tagger expects them: words (with inner apostrophes or hyphens),
# numbers, and each punctuation mark on its own.
_TOKEN = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|\d+(?:[.,:]\d+)*|\S")
_SENTENCE_BREAK = frozenset('.!?:;"“”()')
_WORDNET_POS = {
    "NN": "n",
    "NNS": "n",
    "VB": "v",
    "VBD": "v",
    "VBG": "v",
    "VBN": "v",
    "VBP": "v",
    "VBZ": "v",
    "JJ": "a",
    "JJR": "a",
    "JJS": "a",
    "RB": "r",
    "RBR": "r",
    "RBS": "r",
}
_UPOS = {"n": "NOUN", "v": "VERB", "a": "ADJ", "r": "ADV"}
# Subject pronouns, modals, "to" and the do-auxiliary are followed by a verb, not a noun:
# the Brill lexicon's single default tag ("use" -> NN) is wrong after them, and the
# pattern rules do not correct it ("I use", "do not use", "to use").
_VERB_CONTEXT = frozenset(
    "i you we they to can could will would shall should may might must do does did not n't don't "
    "doesn't didn't never".split()
)
# Words that may stand inside a multi-word expression WordNet lists without them.
_FILLERS = frozenset("a an the this that these those my your his her its our their any it them him me us".split())
_VOWEL = re.compile(r"[aeiou]")
_VOWEL_SOUND = re.compile(r"^(?:[aeio]|u(?![nr][aeiou]|s[aeiou]|ni|ti|ri))", re.I)


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | frozenset("also get got make made let like just".split())


def match_case(template: str, word: str) -> str:
    """``word`` written in the case of ``template`` (UPPER, Title or lower)."""
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower() if template.islower() else word


def article_for(word: str) -> str:
    # Spelling, not sound: good enough to refuse "a utilization"/"an knife"; the few
    # exceptions ("an hour", "a one-off") only cost a candidate, never add a wrong one.
    return "an" if _VOWEL_SOUND.match(word) else "a"


class EnglishTagger:
    """(start, end, token, Penn tag) of every token of a text, tagged per sentence."""

    def __init__(self):
        from textblob.en.taggers import PatternTagger

        self._tagger = PatternTagger()

    def tag(self, text: str) -> list[tuple[int, int, str, str]]:
        tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
        if not tokens:
            return []
        tags = [t for _, t in self._tagger.tag(" ".join(tok for _, _, tok in tokens), tokenize=False)]
        if len(tags) != len(tokens):  # the tagger re-split a token: tag the words one by one
            tags = [self._tagger.tag(tok, tokenize=False)[0][1] for _, _, tok in tokens]
        for i in range(1, len(tokens)):
            after_verb_context = tokens[i - 1][2].lower() in _VERB_CONTEXT
            if tags[i].startswith("NN") and tags[i] not in ("NNP", "NNPS") and after_verb_context:
                if _has_pos(tokens[i][2].lower(), "v"):
                    tags[i] = "VBP" if tokens[i - 1][2].lower() in ("i", "you", "we", "they") else "VB"
            # "it changes every few years": a plural noun after a third-person subject is
            # the tagger missing a verb (a sampled child read "it alterations").
            if (
                tags[i] == "NNS"
                and tokens[i - 1][2].lower() in ("he", "she", "it")
                and _has_pos(tokens[i][2].lower(), "v")
            ):
                tags[i] = "VBZ"
        return [(a, b, tok, tag) for (a, b, tok), tag in zip(tokens, tags)]


@lru_cache(maxsize=65536)
def _has_pos(word: str, pos: str) -> bool:
    from nltk.corpus import wordnet

    return bool(wordnet.synsets(word, pos))


@lru_cache(maxsize=65536)
def _is_expression(words: tuple[str, ...]) -> bool:
    from nltk.corpus import wordnet

    return bool(wordnet.synsets("_".join(words)))


def _sentence_initial(text: str, tagged: list, i: int) -> bool:
    if i == 0:
        return True
    return tagged[i - 1][2] in _SENTENCE_BREAK or "\n" in text[tagged[i - 1][1] : tagged[i][0]]


class WordNetSynonyms:
    """Synonyms of English words from WordNet, chosen for the word's use in its sentence.

    :meth:`options` is the context-aware path every augmenter uses. :meth:`candidates`
    answers for a bare word (no tag, no inflection) and keeps ``base_forms_only``:
    WordNet lemmas are uninflected, so "reported" -> "describe" would break the grammar.
    """

    def __init__(self, base_forms_only: bool = False, max_candidates: int = 5, max_senses: int = 3):
        from nltk.corpus import stopwords, wordnet

        self._wordnet = wordnet
        self.base_forms_only = base_forms_only
        self.max_candidates = max_candidates
        self.max_senses = max_senses
        self._stop = set(stopwords.words("english")) | _stop_words()
        self._cache: dict[str, list[str]] = {}
        self._tagger: EnglishTagger | None = None

    # --- bare words ---------------------------------------------------------------

    def candidates(self, word: str) -> list[str]:
        key = word.lower()
        # Every answer is cached, refusals included: morphy and synsets cost far more
        # than the lookup, and corpora repeat their words.
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._lookup(key)
        return cached

    def _lookup(self, key: str) -> list[str]:
        if key in self._stop or len(key) < 3:
            return []
        if self.base_forms_only and self._wordnet.morphy(key) not in (None, key):
            return []
        names: list[str] = []
        for synset in self._wordnet.synsets(key)[:3]:
            for lemma in synset.lemma_names():
                lemma = lemma.replace("_", " ")
                if lemma.lower() != key and lemma not in names and " " not in lemma:
                    names.append(lemma)
        return names[:5]

    # --- words in context ---------------------------------------------------------

    @property
    def tagger(self) -> EnglishTagger:
        if self._tagger is None:
            self._tagger = EnglishTagger()
        return self._tagger

    def options(self, text: str, protected: Spans = ()) -> list[tuple[int, int, list[str]]]:
        """(start, end, inflected candidates) of every word that may be replaced here."""
        tagged = self.tagger.tag(text)
        blocked = self._blocked(text, tagged)
        out = []
        for i, (a, b, word, tag) in enumerate(tagged):
            if i in blocked or any(a < y and x < b for x, y in protected):
                continue
            candidates = self.in_context(word, tag)
            prev = tagged[i - 1][2].lower() if i else ""
            if prev in ("a", "an"):
                candidates = [c for c in candidates if article_for(c) == prev]
            if candidates:
                out.append((a, b, [match_case(word, c) for c in candidates]))
        return out

    def _blocked(self, text: str, tagged: list) -> set[int]:
        """Token positions that are names, parts of a multi-word expression or function words."""
        blocked: set[int] = set()
        words = [t[2].lower() for t in tagged]
        for i, (_, _, word, tag) in enumerate(tagged):
            capital = word[:1].isupper()
            acronym = len(word) > 1 and word.isupper()
            if tag in ("NNP", "NNPS") or acronym or (capital and not _sentence_initial(text, tagged, i)):
                blocked.add(i)
                if i + 1 < len(tagged) and tagged[i + 1][2][:1].isupper():
                    blocked.add(i + 1)  # "Toilet Dewey": the first word of a name goes with the rest
                if i and tagged[i - 1][2][:1].isupper():
                    blocked.add(i - 1)
            if tag not in _WORDNET_POS or word.lower() in self._stop or len(word) < 3 or not word.isalpha():
                blocked.add(i)
            if tag.startswith("NN") and i and tagged[i - 1][3] == "CD":
                blocked.add(i)  # a unit: "10 seconds"
            if tag.startswith("NN") and any(
                0 <= k < len(tagged) and tagged[k][3].startswith("NN") and tagged[k][2].isalpha()
                for k in (i - 1, i + 1)
            ):
                blocked.add(i)  # part of a compound term: "monitor cable", "bubble sort"
        for n in (4, 3, 2):
            for i in range(len(tagged) - n + 1):
                window = tuple(words[i : i + n])
                if not all(w.isalpha() for w in window):
                    continue
                # An expression with a determiner or object pronoun inside it ("in your
                # case" is "in case"; "take it into account") is still that expression.
                inner = [k for k in range(1, n - 1) if window[k] in _FILLERS]
                if _is_expression(window) or (
                    inner and _is_expression(tuple(w for k, w in enumerate(window) if k not in inner))
                ):
                    blocked.update(range(i, i + n))
        return blocked

    @lru_cache(maxsize=65536)  # noqa: B019 - one lexicon per augmentation run; the cache is the point
    def in_context(self, word: str, tag: str) -> list[str]:
        """Candidates for ``word`` used as ``tag`` (Penn), inflected like it, lower case."""
        from lemminflect import getInflection, getLemma

        pos = _WORDNET_POS.get(tag)
        if pos is None:
            return []
        lower = word.lower()
        lemmas = getLemma(lower, upos=_UPOS[pos]) or (lower,)
        lemma = lemmas[0]
        if lemma in self._stop:
            return []
        synsets = self._wordnet.synsets(lemma, pos="as" if pos == "a" else pos)
        if not synsets and pos == "a":
            synsets = self._wordnet.synsets(lemma, pos="a")
        out: list[str] = []
        counts = [
            next((x.count() for x in s.lemmas() if x.name().lower() == lemma), 0) for s in synsets[: self.max_senses]
        ]
        for rank, synset in enumerate(synsets[: self.max_senses]):
            if rank > 0 and counts[rank] < max(1, counts[0] / 4):
                continue  # a later sense only where SemCor finds the word used in it often enough
            for entry in sorted(synset.lemmas(), key=lambda x: -x.count()):
                name = entry.name()
                if entry.count() < 1 or not name.isalpha() or not name.islower() or name == lemma or name in self._stop:
                    continue
                if not self._dominant(name, synset, pos) or (getLemma(name, upos=_UPOS[pos]) or (name,))[0] != name:
                    continue
                if pos == "r" and lower.endswith("ly") and not name.endswith("ly"):
                    continue
                if not _VOWEL.search(name):
                    continue  # an abbreviation ("yr" for "year") is another register
                form = name if tag in ("NN", "VB", "VBP", "JJ", "RB") else (getInflection(name, tag=tag) or [None])[0]
                if tag == "VBP" and lower != lemma:
                    form = None  # a VBP that is not the lemma ("am", "are") has no regular inflection
                if form and form != lower and form not in out:
                    out.append(form)
        return out[: self.max_candidates]

    def _dominant(self, name: str, synset, pos: str) -> bool:
        """Whether ``synset`` is one of ``name``'s own dominant senses, by the rule
        :meth:`in_context` applies to the word replaced."""
        senses = self._wordnet.synsets(name, pos="as" if pos == "a" else pos)[: self.max_senses]
        if synset not in senses:
            return False
        if synset == senses[0]:
            return True

        def count(s) -> int:
            return next((x.count() for x in s.lemmas() if x.name().lower() == name), 0)

        return count(synset) >= max(1, count(senses[0]) / 4)
