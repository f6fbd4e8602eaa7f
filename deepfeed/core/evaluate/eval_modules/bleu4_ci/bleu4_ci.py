"""Corpus BLEU-4 (sacrebleu; zh tokenizer for Chinese, 13a otherwise) with a bootstrap interval."""

import datasets
import evaluate

from deepfeed.core.evaluate.textmetrics import bleu4_with_ci

_DESCRIPTION = (
    "Corpus BLEU-4 by sacrebleu over mixed-language records (n-gram statistics summed across tokenizers), "
    "per language, with a 95% bootstrap interval."
)
_KWARGS = """
Args:
    predictions: generated answers.
    references: one reference per prediction.
    langs: optional language per record ('zh' uses sacrebleu's zh tokenizer).
    bootstrap_samples: resamples for the interval (default 1000).
Returns:
    bleu4, bleu4_ci_low, bleu4_ci_high, bleu4_<lang> for each language
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu4CI(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, langs=None, bootstrap_samples=1000, seed=0):
        langs = list(langs) if langs is not None else [None] * len(predictions)
        return bleu4_with_ci(predictions, references, langs, bootstrap_samples, seed)
