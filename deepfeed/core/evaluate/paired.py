"""Paired comparisons of two candidates scored on the same evaluation records.

Every difference in the evaluation report (challenger vs base, challenger vs champion,
artifact vs challenger) comes with a paired bootstrap 95% interval: each bootstrap draw
resamples record indices once and recomputes the metric of *both* candidates on that
same resample, so the record-to-record spread that both share (an easy question is easy
for both) cancels out of the difference. Why this is written here rather than taken from
a library: scipy.stats.bootstrap pairs samples but needs a vectorised statistic, and the
corpus metrics (BLEU, chrF) are computed by sacrebleu from summed per-record sufficient
statistics one resample at a time; the draw scheme is the one of
paired_relative_change, which the mean metrics reuse directly.

- token F1, toxicity pass rate: means of per-record scores (paired_relative_change);
- BLEU-4, chrF: corpus scores from summed sufficient statistics (sacrebleu's own);
- perplexity: exp(sum of per-record NLL / sum of scored tokens).

See docs/evaluation-gates.md for how the promotion gate reads these intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from deepfeed.core.evaluate.textmetrics import bleu_statistics, chrf_statistics, token_prf

# Direction of each compared metric: +1 higher is better, -1 lower is better.
DIRECTIONS = {"token_f1": +1, "bleu4": +1, "chrf": +1, "perplexity": -1, "toxicity_pass_rate": +1}


@dataclass(frozen=True)
class PairedChange:
    """`candidate` against `reference` on the same `records`. `relative*` are signed so
    that negative means worse whatever the metric's direction; None when the reference
    scores 0 (there is nothing to be relative to)."""

    metric: str
    direction: int
    reference: float
    candidate: float
    records: int
    difference: float  # candidate - reference, in the metric's units
    difference_low: float
    difference_high: float
    relative: float | None = None
    relative_low: float | None = None
    relative_high: float | None = None

    @property
    def significant_gain(self) -> bool:
        """The whole 95% interval of the difference lies on the good side of zero."""
        return (self.difference_low > 0) if self.direction > 0 else (self.difference_high < 0)

    @property
    def significant_loss(self) -> bool:
        return (self.difference_high < 0) if self.direction > 0 else (self.difference_low > 0)


def paired_relative_change(
    reference: np.ndarray, candidate: np.ndarray, samples: int, seed: int, alpha: float = 0.05
) -> tuple[float | None, float | None, float | None]:
    """(mean(candidate) - mean(reference)) / mean(reference) over the same records, with a
    paired bootstrap interval (each draw resamples records for both sides at once).
    None when the reference scores 0: there is no drop to measure against."""
    reference, candidate = np.asarray(reference, float), np.asarray(candidate, float)
    if reference.size == 0 or reference.mean() == 0:
        return None, None, None
    change = float(candidate.mean() / reference.mean() - 1)
    if reference.size < 2 or samples <= 0:
        return change, change, change
    draws = np.random.default_rng(seed).integers(0, reference.size, size=(samples, reference.size))
    ref_means, cand_means = reference[draws].mean(1), candidate[draws].mean(1)
    ok = ref_means > 0
    values = cand_means[ok] / ref_means[ok] - 1
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return change, float(low), float(high)


def _draws(n: int, samples: int, seed: int) -> np.ndarray:
    # The same draws as paired_relative_change for the same seed.
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_corpus_change(
    metric: str,
    reference_stats: np.ndarray,
    candidate_stats: np.ndarray,
    score: Callable[[np.ndarray], float],
    samples: int,
    seed: int,
    alpha: float = 0.05,
) -> PairedChange:
    """A metric computed from summed per-record statistics (rows = records, the same
    records on both sides), with paired bootstrap intervals of its difference and of its
    relative change."""
    direction = DIRECTIONS[metric]
    reference_stats, candidate_stats = np.asarray(reference_stats, float), np.asarray(candidate_stats, float)
    n = len(reference_stats)
    ref, cand = score(reference_stats.sum(0)), score(candidate_stats.sum(0))
    relative = None if ref == 0 else direction * (cand / ref - 1)
    if n < 2 or samples <= 0:
        diff = cand - ref
        return PairedChange(metric, direction, ref, cand, n, diff, diff, diff, relative, relative, relative)
    draws = _draws(n, samples, seed)
    refs = np.array([score(s) for s in reference_stats[draws].sum(1)])
    cands = np.array([score(s) for s in candidate_stats[draws].sum(1)])
    low, high = _interval(cands - refs, alpha)
    rel_low = rel_high = None
    if relative is not None:
        ok = refs != 0
        rel_low, rel_high = (relative, relative)
        if ok.any():
            rel_low, rel_high = _interval(direction * (cands[ok] / refs[ok] - 1), alpha)
    return PairedChange(metric, direction, ref, cand, n, cand - ref, low, high, relative, rel_low, rel_high)


def paired_mean_change(
    metric: str,
    reference: Sequence[float],
    candidate: Sequence[float],
    samples: int,
    seed: int,
) -> PairedChange:
    """A mean of per-record scores (higher is better): the difference's interval from the
    paired bootstrap, the relative change's from paired_relative_change."""
    ref, cand = np.asarray(reference, float), np.asarray(candidate, float)
    ones = np.ones_like(ref)
    change = paired_corpus_change(
        metric,
        np.stack([ref, ones], 1),
        np.stack([cand, ones], 1),
        lambda s: float(s[0] / s[1]),
        samples,
        seed,
    )
    relative, low, high = paired_relative_change(ref, cand, samples, seed)
    return PairedChange(
        metric,
        change.direction,
        change.reference,
        change.candidate,
        change.records,
        change.difference,
        change.difference_low,
        change.difference_high,
        relative,
        low,
        high,
    )


def _perplexity(summed: np.ndarray) -> float:
    return math.exp(summed[0] / summed[1]) if summed[1] else math.nan


def compare(
    reference: dict[str, list[Any]],
    candidate: dict[str, list[Any]],
    answered: list[dict[str, Any]],
    samples: int,
    seed: int,
) -> dict[str, PairedChange]:
    """Every metric both candidates' per-record scores allow. `reference` / `candidate`
    are CandidateResult.per_record: "nll" and "tokens" aligned with the evaluation
    records, "answers" and "toxic" aligned with `answered` (the records answered by
    generation). A metric either side lacks is absent from the result."""
    out: dict[str, PairedChange] = {}
    ref_nll, cand_nll = reference.get("nll") or [], candidate.get("nll") or []
    if ref_nll and len(ref_nll) == len(cand_nll):
        both = [i for i, (a, b) in enumerate(zip(ref_nll, cand_nll)) if a is not None and b is not None]
        if both:
            ref_stats = np.array([[ref_nll[i], reference["tokens"][i]] for i in both], float)
            cand_stats = np.array([[cand_nll[i], candidate["tokens"][i]] for i in both], float)
            out["perplexity"] = paired_corpus_change("perplexity", ref_stats, cand_stats, _perplexity, samples, seed)
    ref_answers, cand_answers = reference.get("answers"), candidate.get("answers")
    if not (ref_answers and cand_answers and len(ref_answers) == len(cand_answers) == len(answered)):
        return out
    referenced = [i for i, r in enumerate(answered) if (r.get("response") or "").strip()]
    if referenced:
        refs = [answered[i]["response"] for i in referenced]
        langs = [answered[i].get("lang") for i in referenced]
        ref_hyp, cand_hyp = [ref_answers[i] for i in referenced], [cand_answers[i] for i in referenced]
        out["token_f1"] = paired_mean_change(
            "token_f1",
            [token_prf(h, r, lang)[2] for h, r, lang in zip(ref_hyp, refs, langs)],
            [token_prf(h, r, lang)[2] for h, r, lang in zip(cand_hyp, refs, langs)],
            samples,
            seed,
        )
        ref_stats, score = bleu_statistics(ref_hyp, refs, langs)
        cand_stats, _ = bleu_statistics(cand_hyp, refs, langs)
        out["bleu4"] = paired_corpus_change("bleu4", ref_stats, cand_stats, score, samples, seed)
        ref_stats, score = chrf_statistics(ref_hyp, refs)
        cand_stats, _ = chrf_statistics(cand_hyp, refs)
        out["chrf"] = paired_corpus_change("chrf", ref_stats, cand_stats, score, samples, seed)
    ref_toxic, cand_toxic = reference.get("toxic"), candidate.get("toxic")
    if ref_toxic and cand_toxic and len(ref_toxic) == len(cand_toxic):
        out["toxicity_pass_rate"] = paired_mean_change(
            "toxicity_pass_rate",
            [0.0 if t else 1.0 for t in ref_toxic],
            [0.0 if t else 1.0 for t in cand_toxic],
            samples,
            seed,
        )
    return out


def format_change(change: PairedChange, fmt: str = "{:.3g}") -> str:
    """'0.030 → 0.079, +0.049 (paired 95% CI +0.003 … +0.105; +163%)'."""
    signed = fmt.replace("{:", "{:+")
    text = (
        f"{fmt.format(change.reference)} → {fmt.format(change.candidate)}, {signed.format(change.difference)} "
        f"(paired 95% CI {signed.format(change.difference_low)} … {signed.format(change.difference_high)}"
    )
    if change.relative is not None:
        # relative is signed "negative = worse"; shown as the plain change of the value
        shown = change.relative * change.direction
        text += f"; {shown:+.1%}"
    return text + f"; {change.records} records)"
