"""deepfeed's metrics load with evaluate.load(<local path>) and give the report's numbers."""

import pytest

from deepfeed.core.evaluate.eval_modules import NAMES, load, module_path
from deepfeed.core.evaluate.textmetrics import bleu4_with_ci, token_prf_corpus

PREDICTIONS = ["The cat sat.", "高血压是一种疾病", "hello there"]
REFERENCES = ["A cat sat down", "高血压是血压持续升高的疾病", "hello my friend"]
LANGS = ["en", "zh", "en"]


def test_modules_load_from_the_project_and_match_the_core_metrics():
    assert all((module_path(n) / f"{n}.py").is_file() for n in NAMES)
    f1 = load("token_f1").compute(predictions=PREDICTIONS, references=REFERENCES, langs=LANGS, bootstrap_samples=50)
    assert f1 == pytest.approx(token_prf_corpus(PREDICTIONS, REFERENCES, LANGS, 50, 0))
    bleu = load("bleu4_ci").compute(predictions=PREDICTIONS, references=REFERENCES, langs=LANGS, bootstrap_samples=50)
    assert bleu == pytest.approx(bleu4_with_ci(PREDICTIONS, REFERENCES, LANGS, 50, 0))
    toxicity = load("toxicity_pass_rate").compute(
        predictions=["have a nice day", "you stupid fucking idiot", "你这个傻逼"]
    )
    assert toxicity["toxicity_pass_rate"] == pytest.approx(1 / 3) and toxicity["toxic_answers"] == 2


def test_unknown_module_is_named():
    with pytest.raises(ValueError, match="unknown deepfeed evaluate module 'rouge'"):
        load("rouge")
