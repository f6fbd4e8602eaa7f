"""SQuAD-style token precision, recall and F1 of generated answers (jieba words for Chinese)."""

import datasets
import evaluate

from deepfeed.core.evaluate.textmetrics import token_prf_corpus

_DESCRIPTION = (
    "Mean per-record token-overlap precision, recall and F1 (SQuAD normalization; Chinese segmented with "
    "jieba), with a 95% bootstrap interval of the F1."
)
_KWARGS = """
Args:
    predictions: generated answers.
    references: reference answers.
    langs: optional language per record ('zh' uses jieba; None detects Chinese characters).
    bootstrap_samples: resamples for the F1 interval (default 1000).
Returns:
    token_precision, token_recall, token_f1, token_f1_ci_low, token_f1_ci_high
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, langs=None, bootstrap_samples=1000, seed=0):
        langs = list(langs) if langs is not None else [None] * len(predictions)
        return token_prf_corpus(predictions, references, langs, bootstrap_samples, seed)
