"""deepfeed's metrics as `evaluate` modules, loaded from the project's own paths.

`evaluate.load("<hub name>")` downloads the metric script, which cannot work where
deepfeed runs; `evaluate.load(<local folder>)` loads the script in that folder instead.
Each module here is a thin `evaluate.Metric` over deepfeed.core.evaluate.textmetrics / safety, so
the numbers equal those in the evaluation report.

    from deepfeed.core.evaluate.eval_modules import load
    load("token_f1").compute(predictions=[...], references=[...], langs=[...])
"""

from __future__ import annotations

from pathlib import Path

MODULES_DIR = Path(__file__).resolve().parent
NAMES = ("token_f1", "bleu4_ci", "toxicity_pass_rate")


def module_path(name: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown deepfeed evaluate module {name!r}; known: {list(NAMES)}")
    return MODULES_DIR / name


def load(name: str, **kwargs):
    import evaluate

    return evaluate.load(str(module_path(name)), **kwargs)
