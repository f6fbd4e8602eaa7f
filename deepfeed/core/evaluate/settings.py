"""How a model is scored, in a module that imports no torch: evaluation_report's Dagster config is
built from EvaluationConfig when the code location loads (docs/operations.md, startup)."""

from dataclasses import dataclass

from deepfeed.core.platform.settings import setting


@dataclass(frozen=True)
class EvaluationConfig:
    """How one model is scored; evaluation_report's Dagster config is generated from these fields."""

    max_length: int = setting(128, "Tokens per scored sequence.")
    batch_size: int = setting(16, "Sequences per perplexity forward pass.")
    # Each decode step reads every weight once whatever the batch, so fewer, larger batches
    # take fewer steps (SmolLM2, 16 prompts x 16 tokens, 1 thread: 15.8 CPU-s in one batch vs
    # 17.9 in two, on a shared machine); the KV cache grows with it (SmolLM2: ~7 MB per row at 160 tokens).
    generation_batch_size: int = setting(
        32, "Prompts decoded together (greedy, left-padded, KV cache); one batch for the demo's 24 answers."
    )
    max_new_tokens: int = setting(32, "Tokens generated per answer.")
    max_generation_records: int = setting(
        32, "Evaluation records answered by greedy generation (accuracy, BLEU-4, chrF, toxicity)."
    )
    max_relative_drop: float = setting(
        0.03,
        "Gate limit: a key metric fails when the whole paired 95% interval of its relative change vs the "
        "champion (or the base model, before the first champion) lies below -max_relative_drop "
        "(docs/evaluation-gates.md).",
    )
    bootstrap_samples: int = setting(
        1000,
        "Bootstrap resamples for the 95% intervals of BLEU-4, chrF and token F1 and for the paired "
        "intervals of every difference the gate reads.",
    )
    seed: int = setting(0, "Seed of the bootstrap resamples.")
    toxicity_threshold: float = setting(0.5, "Classifier probability at or above which an answer counts as toxic.")
