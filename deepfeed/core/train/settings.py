"""The settings of one fine-tuning run, in a module that imports no torch.

Asset modules build their Dagster configs from TrainingConfig when the code location loads,
and loading must not import the deep-learning stack (docs/operations.md, startup); the
trainer itself is deepfeed.core.train.training.
"""

from dataclasses import dataclass

from deepfeed.core.platform.settings import setting

# Required: 0.7 (docs/requirements.md); distill.DistillationConfig defaults to it too.
DISTILL_TEMPERATURE = 0.7


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of one fine-tuning run; the Dagster configs of finetuned_model and incremental_model
    are generated from these fields (deepfeed/pipelines/config.py)."""

    max_steps: int = setting(30, "Optimizer steps.")
    batch_size: int = setting(8, "Sequences per step (the global batch when nproc > 1).")
    max_length: int = setting(128, "Tokens per sequence (longer ones are cut).")
    learning_rate: float = setting(2e-4, "Peak learning rate of AdamW after warm-up.")
    final_learning_rate: float = setting(
        1e-6, "Learning rate at the end of the cosine decay (required: 1e-6; docs/requirements.md)."
    )
    warmup_steps: int = setting(3, "Linear warm-up steps.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradients are clipped to this global L2 norm before each step.")
    method: str = setting(
        "lora",
        "'lora' (peft adapters, merged before saving), 'qlora' (4-bit NF4 base via bitsandbytes, CUDA only; "
        "adapters merged into the bf16 base) or 'full' fine-tuning.",
    )
    lora_rank: int = setting(8, "LoRA rank (method=lora or qlora).")
    lora_alpha: int = setting(16, "LoRA scaling alpha (method=lora or qlora).")
    lora_dropout: float = setting(0.0, "Dropout on the LoRA adapters' input (method=lora or qlora).")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    seed: int = setting(0, "Seed of initialization and data order.")
    log_every: int = setting(5, "Write a progress line to the Dagster log every N steps.")
    # Knowledge distillation: loss = α·CE + (1−α)·T²·KL; α = 1 trains on labels only.
    distill_alpha: float = setting(
        1.0,
        "Weight of the label CE; 1 - alpha goes to the teacher's KL at distill_temperature (1.0 = no distillation).",
    )
    distill_temperature: float = setting(
        DISTILL_TEMPERATURE,
        "Softmax temperature of distillation (required: 0.7; docs/requirements.md); the KL is scaled by T^2.",
    )
    # Teacher logits computed once into `teacher_cache_dir` and read back every step,
    # epoch and later run (the teacher is then not loaded at all).
    teacher_cache: bool = setting(
        False,
        "Compute the teacher's logits once into <artifact root>/teacher_logits (keyed by teacher hash + data hash "
        "+ top-k) and read them back every step, epoch and later run instead of running the teacher; for large "
        "teachers.",
    )
    teacher_cache_top_k: int = setting(
        0,
        "With teacher_cache: keep the k largest teacher logits per token in fp16 with their token ids (KL over "
        "those k, teacher renormalised); 0 = full fp32 logits, identical loss, for small vocabularies.",
    )
    teacher_cache_budget_gb: float = setting(
        20.0,
        "With teacher_cache: disk budget of all teacher logit caches together (GiB); after each run the least "
        "recently used other caches are deleted to fit it; 0 keeps every cache.",
    )
    fgsm_epsilon: float = setting(
        0.0,
        "FGSM adversarial training: each step also trains on input embeddings moved by epsilon·sign(gradient); "
        "0 = off, at most 0.5 (docs/requirements.md §3).",
    )
    fgsm_weight: float = setting(
        1.0, "Weight of the FGSM adversarial loss added to the clean loss (with fgsm_epsilon > 0)."
    )
    ewc_lambda: float = setting(
        0.0,
        "EWC penalty strength towards the starting checkpoint (0 = off). Full fine-tuning penalises the weights; "
        "LoRA penalises the adapters' delta of the adapted weights (B·A·scale).",
    )
    fisher_samples: int = setting(
        32, "Records of the earlier data used for the EWC Fisher (computed once per champion)."
    )
    eval_every: int = setting(
        0, "Score the held-out records every N steps (0 = only after the last step); feeds the elastic rate."
    )
    eval_samples: int = setting(16, "Held-out records scored for the eval loss.")
    # Elastic learning rate driven by the eval (replay) loss; see elastic.py.
    elastic: bool = setting(False, "Lower the learning rate each time the eval (replay) loss rises (elastic.py).")
    elastic_factor: float = setting(
        0.5, "Multiplier of the learning rate each time the eval loss rises (with elastic)."
    )
    elastic_tolerance: float = setting(
        0.0, "Relative rise of the eval loss tolerated before lowering the learning rate (with elastic)."
    )
    elastic_min_scale: float = setting(
        0.05, "Lowest fraction of the scheduled learning rate the elastic scale reaches."
    )
    checkpoint_every: int = setting(
        0, "Write a resumable checkpoint every N steps (0 = none); a retried run resumes from it."
    )
    keep_checkpoints: int = setting(2, "Resumable checkpoints kept (the oldest are deleted).")
    packing: bool = setting(False, "Concatenate records into full max_length rows (no padding).")
    # LoRA/QLoRA load the frozen base in this dtype; full fine-tuning keeps fp32 master
    # weights and computes in it (see memory_layout.training_layout, shared with `deepfeed plan`).
    precision: str = setting(
        "auto",
        "'auto' (bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on CPU), 'fp32', 'bf16' or 'fp16'. "
        "LoRA/QLoRA load the frozen base in it; full fine-tuning keeps fp32 master weights and computes in it.",
    )
    # "fsdp" shards parameters, gradients and AdamW state N ways with torch's FSDP2
    # (fully_shard per decoder layer), so each rank holds ~1/N of them.
    sharding: str = setting(
        "ddp",
        "With nproc > 1: 'ddp' (a full model, gradient and AdamW copy per process) or 'fsdp' (FSDP2: each process "
        "holds ~1/nproc of them; for models whose training state does not fit one device; no "
        "EWC/FGSM/checkpoint_every yet).",
    )
