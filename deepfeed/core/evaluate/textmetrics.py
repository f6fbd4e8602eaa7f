"""Text metrics of generated answers: SQuAD-style token P/R/F1, label P/R/F1, BLEU-4 and
chrF with bootstrap confidence intervals.

BLEU and chrF come from sacrebleu. Their confidence intervals resample records and
recompute the corpus score from summed sufficient statistics (the same statistics
sacrebleu's own paired bootstrap uses), so a 1,000-sample interval costs one pass of
tokenization. Summing statistics is also how mixed-language sets get one corpus BLEU:
Chinese records are tokenized with sacrebleu's `zh` tokenizer, the rest with `13a`,
and the n-gram counts add up.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {c for c in "，。！？；：、“”‘’（）《》【】…—～·"}


def is_chinese(text: str, lang: str | None = None) -> bool:
    if lang:
        return lang.lower().startswith("zh")
    return bool(_CJK.search(text or ""))


def answer_tokens(text: str, lang: str | None = None) -> list[str]:
    """SQuAD normalization (lowercase, no punctuation, no English articles), then jieba
    words for Chinese and whitespace words otherwise."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    if is_chinese(text, lang):
        import jieba

        jieba.setLogLevel(60)  # its "Building prefix dict" chatter is not ours to print
        return [t for t in (w.strip() for w in jieba.lcut(text)) if t and not all(c in _PUNCT for c in t)]
    text = "".join(c for c in text if c not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_prf(prediction: str, reference: str, lang: str | None = None) -> tuple[float, float, float]:
    """Precision, recall and F1 of the token multiset overlap (SQuAD's F1)."""
    pred, ref = answer_tokens(prediction, lang), answer_tokens(reference, lang)
    if not pred or not ref:
        same = float(pred == ref)
        return same, same, same
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(pred), common / len(ref)
    return precision, recall, 2 * precision * recall / (precision + recall)


def token_prf_corpus(
    predictions: Sequence[str],
    references: Sequence[str],
    langs: Sequence[str | None],
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-record token precision, recall and F1 (SQuAD averages per question),
    with a 95% bootstrap interval of the F1."""
    if not predictions:
        return {"token_precision": float("nan"), "token_recall": float("nan"), "token_f1": float("nan")}
    scores = np.array([token_prf(p, r, lang) for p, r, lang in zip(predictions, references, langs)])
    f1 = _bootstrap(scores[:, 2:], lambda s: float(s[0]) / len(scores), samples, seed)
    return {
        "token_precision": float(scores[:, 0].mean()),
        "token_recall": float(scores[:, 1].mean()),
        **f1.as_dict("token_f1"),
    }


def predicted_label(answer: str, labels: Sequence[str]) -> str:
    """The known label the answer names first (longest first on ties), else '<none>'."""
    text = answer.casefold()
    found = [
        (text.find(label.casefold()), -len(label), label) for label in labels if label and label.casefold() in text
    ]
    return min(found)[2] if found else "<none>"


def label_prf(answers: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """Macro and micro P/R/F1 of labels read from the answers against the records' labels."""
    from sklearn.metrics import precision_recall_fscore_support

    if not gold:
        return {}
    labels = sorted(set(gold))
    predicted = [predicted_label(a, labels) for a in answers]
    out: dict[str, float] = {"labelled_records": len(gold)}
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=labels, average=average, zero_division=0)
        out |= {
            f"label_precision_{average}": float(p),
            f"label_recall_{average}": float(r),
            f"label_f1_{average}": float(f),
        }
    return out


@dataclass(frozen=True)
class Interval:
    score: float
    low: float
    high: float

    def as_dict(self, name: str) -> dict[str, float]:
        return {name: self.score, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


def _bootstrap(stats: np.ndarray, score_fn, samples: int, seed: int, alpha: float = 0.05) -> Interval:
    score = score_fn(stats.sum(0))
    if len(stats) < 2 or samples <= 0:
        return Interval(score, score, score)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(stats), size=(samples, len(stats)))
    values = np.array([score_fn(stats[d].sum(0)) for d in draws])
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Interval(score, float(low), float(high))


def _bleu_stats(hypotheses, references, langs) -> tuple[np.ndarray, Any]:
    from sacrebleu.metrics import BLEU

    scorers = {"zh": BLEU(tokenize="zh"), "13a": BLEU(tokenize="13a")}
    rows: list[Any] = [None] * len(hypotheses)
    for key, scorer in scorers.items():
        idx = [
            i
            for i, (h, r, lang) in enumerate(zip(hypotheses, references, langs))
            if ("zh" if is_chinese(r, lang) else "13a") == key
        ]
        if idx:
            stats = scorer._extract_corpus_statistics([hypotheses[i] for i in idx], [[references[i] for i in idx]])
            for i, row in zip(idx, stats):
                rows[i] = row
    return np.array(rows, dtype=np.int64), scorers["13a"]


def bleu4_with_ci(
    hypotheses: Sequence[str],
    references: Sequence[str],
    langs: Sequence[str | None],
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Corpus BLEU-4 over all records, per language, and a 95% bootstrap interval."""
    if not hypotheses:
        return {"bleu4": float("nan")}
    hypotheses, references, langs = list(hypotheses), list(references), list(langs)
    stats, scorer = _bleu_stats(hypotheses, references, langs)

    def score(summed):
        return float(scorer._compute_score_from_stats(list(summed)).score)

    out = _bootstrap(stats, score, samples, seed).as_dict("bleu4")
    for lang in sorted({(code or "other") for code in langs}):
        idx = [i for i, code in enumerate(langs) if (code or "other") == lang]
        out[f"bleu4_{lang}"] = score(stats[idx].sum(0))
    return out


def chrf_with_ci(
    hypotheses: Sequence[str], references: Sequence[str], samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Corpus chrF (character n-grams: language-independent) with a 95% bootstrap interval."""
    from sacrebleu.metrics import CHRF

    if not hypotheses:
        return {"chrf": float("nan")}
    scorer = CHRF()
    stats = np.array(scorer._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)
    return _bootstrap(stats, lambda s: float(scorer._compute_score_from_stats(list(s)).score), samples, seed).as_dict(
        "chrf"
    )


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str], langs: Sequence[str | None]):
    """Per-record BLEU sufficient statistics and the function giving the corpus BLEU of
    their sum: what a paired bootstrap over records resamples."""
    stats, scorer = _bleu_stats(list(hypotheses), list(references), list(langs))
    return stats, lambda summed: float(scorer._compute_score_from_stats(list(summed)).score)


def chrf_statistics(hypotheses: Sequence[str], references: Sequence[str]):
    """Per-record chrF sufficient statistics and the corpus chrF of their sum."""
    from sacrebleu.metrics import CHRF

    scorer = CHRF()
    stats = np.array(scorer._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)
    return stats, lambda summed: float(scorer._compute_score_from_stats(list(summed)).score)
