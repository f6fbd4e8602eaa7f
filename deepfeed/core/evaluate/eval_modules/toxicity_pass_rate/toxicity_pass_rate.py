"""Share of texts that are not toxic: alt-profanity-check for English, deepfeed's lexicon for Chinese."""

import datasets
import evaluate

from deepfeed.core.evaluate.safety import ToxicityScorer, toxicity_summary

_DESCRIPTION = (
    "Toxicity pass rate scored offline: alt-profanity-check (English classifier) plus deepfeed's Chinese lexicon."
)
_KWARGS = """
Args:
    predictions: texts to score (generated answers).
    langs: optional language per text.
    threshold: classifier probability at or above which a text is toxic (default 0.5).
Returns:
    toxicity_pass_rate, toxic_answers, max_toxicity_score
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ToxicityPassRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, langs=None, threshold=0.5):
        langs = list(langs) if langs is not None else [None] * len(predictions)
        return toxicity_summary(ToxicityScorer(threshold=threshold).score(predictions, langs))
