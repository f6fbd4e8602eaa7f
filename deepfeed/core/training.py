"""Fine-tuning a causal LM on records: AdamW, warm-up then cosine decay to a floor.

The article's "Lorazepam optimizer" does not exist; AdamW is the well-understood
default. LoRA (peft) or full fine-tuning; LoRA adapters are merged before saving so
every checkpoint is a plain Hugging Face folder that exports and serves the same way.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deepfeed.core.modeling import collate, encode_record, load_model, load_tokenizer, num_parameters


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int = 20
    batch_size: int = 8
    max_length: int = 128
    learning_rate: float = 2e-4
    final_learning_rate: float = 1e-6
    warmup_steps: int = 2
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    method: str = "lora"  # "lora" or "full"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 5


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainingResult:
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    examples: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "steps": len(self.losses),
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "train_seconds": round(self.seconds, 1),
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "examples": self.examples,
        }


def cosine_with_floor(step: int, config: TrainingConfig) -> float:
    """Learning rate at `step`: linear warm-up, then cosine from the peak to the floor."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps - 1)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.final_learning_rate
    return floor + 0.5 * (config.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def _apply_lora(model, config: TrainingConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _batches(examples, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of length-bucketed batches (less padding per batch)."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunks = [order[i:i + batch_size * 8] for i in range(0, len(order), batch_size * 8)]
        batches = []
        for chunk in chunks:
            chunk.sort(key=lambda i: len(examples[i].input_ids))
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        rng.shuffle(batches)
        for batch in batches:
            yield [examples[i] for i in batch]


def fine_tune(
    base_path: Path,
    records: list[dict[str, Any]],
    output_dir: Path,
    config: TrainingConfig,
    on_step: Callable[[int, float, float], None] | None = None,
) -> TrainingResult:
    if not records:
        raise TrainingError("no training records: the augmented corpus has no train split")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = load_tokenizer(base_path)
    model = load_model(base_path)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if config.method == "lora":
        model = _apply_lora(model, config)
    elif config.method != "full":
        raise TrainingError(f"method={config.method!r}: expected 'lora' or 'full'")
    model.train()

    examples = [encode_record(tokenizer, r, config.max_length) for r in records]
    examples = [e for e in examples if any(label != -100 for label in e.labels)]
    if not examples:
        raise TrainingError("every training record was empty after tokenization")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    result = TrainingResult(
        trainable_parameters=sum(p.numel() for p in params),
        total_parameters=num_parameters(model),
        examples=len(examples),
    )
    batches = _batches(examples, config.batch_size, rng)
    started = time.perf_counter()
    for step in range(config.max_steps):
        lr = cosine_with_floor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = collate(next(batches), tokenizer.pad_token_id)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step}; no checkpoint was written")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.item()))
        result.learning_rates.append(lr)
        result.tokens += int(batch["attention_mask"].sum())
        if on_step:
            on_step(step, result.losses[-1], lr)
    result.seconds = time.perf_counter() - started

    if config.method == "lora":
        model = model.merge_and_unload()
    model.config.use_cache = True
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return result


def config_dict(config: TrainingConfig) -> dict[str, Any]:
    return asdict(config)
