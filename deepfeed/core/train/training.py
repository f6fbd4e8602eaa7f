"""Fine-tuning a causal LM on records: AdamW, warm-up then cosine decay to a floor.

The source article's "Lorazepam optimizer" (docs/requirements.md) does not exist; AdamW is the well-understood
default. LoRA (peft) or full fine-tuning; LoRA adapters are merged before saving so
every checkpoint is a plain Hugging Face folder that exports and serves the same way.

One loop serves both streams of docs/requirements.md §4: the monthly full retrain and the incremental
stream (distillation from a live or cached teacher, EWC towards the champion with full
fine-tuning or LoRA, an elastic learning rate watching a replay sample), optional FGSM
adversarial training in embedding space, with resumable checkpoints and, when
`torch.distributed` is initialised (torchrun), data-parallel training over ranks.
"""

from __future__ import annotations

import math
import random
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deepfeed.core.train import checkpointing
from deepfeed.core.train.distill import DistillationConfig, token_ce_sum
from deepfeed.core.train.elastic import ElasticScale
from deepfeed.core.train.loss_terms import (
    AdversarialCrossEntropy,
    CachedDistillationKL,
    DistillationKL,
    EwcTerm,
    ForwardPass,
    LabelCrossEntropy,
    TokenTerm,
    labelled_tokens,
    token_loss_sum,
)
from deepfeed.core.train.memory_layout import LayoutError, TrainingLayout, training_layout
from deepfeed.core.train.modeling import (
    TORCH_DTYPES,
    Example,
    ModelSourceError,
    collate,
    encode_record,
    load_model,
    load_tokenizer,
    num_parameters,
)
from deepfeed.core.train.settings import TrainingConfig

# Fields that do not change what a run computes: a resumed run may differ in them.
_RESUME_NEUTRAL = {"log_every", "checkpoint_every", "keep_checkpoints", "teacher_cache_budget_gb"}


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
    tokens_per_second_series: list[float] = field(default_factory=list)
    peak_memory_mb_series: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    # Held-out loss of the starting weights (before step 1): with the final eval loss it
    # says whether training helped on data it did not see.
    initial_eval_loss: float | None = None
    elastic_reductions: int = 0
    resumed_from_step: int = 0
    fisher_file: str = ""
    adversarial_losses: list[float] = field(default_factory=list)
    teacher_cache: str = ""
    teacher_cache_built: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    base_dtype: str = "fp32"  # how the weights that are not trained were held
    sharding: str = "none"  # none (one process) | ddp | fsdp
    # Per rank: bytes of parameters, gradients and AdamW state it held after the last step.
    rank_state_bytes: list[dict[str, int]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def peak_memory_mb(self) -> float:
        return max(self.peak_memory_mb_series, default=0.0)

    def loss_windows(self) -> dict[str, float]:
        """Means of the first and last 10 training losses (one step is too noisy to compare)."""
        from deepfeed.core.evaluate.learning_outcome import loss_windows

        return loss_windows(self.losses).as_dict() if len(self.losses) >= 2 else {}

    def summary(self) -> dict[str, Any]:
        return {
            "steps": len(self.losses),
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            **self.loss_windows(),
            "initial_eval_loss": self.initial_eval_loss,
            "final_eval_loss": self.eval_losses[-1][1] if self.eval_losses else None,
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "train_seconds": round(self.seconds, 1),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "examples": self.examples,
            "elastic_reductions": self.elastic_reductions,
            "resumed_from_step": self.resumed_from_step,
            "final_adversarial_loss": self.adversarial_losses[-1] if self.adversarial_losses else None,
            "device": self.device,
            "precision": self.precision,
            "base_dtype": self.base_dtype,
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


class BatchSampler:
    """Shuffled epochs of length-bucketed batches (less padding per batch).

    The order comes from one `random.Random(seed)` consumed epoch after epoch, so the
    data position is two integers (epoch, batch): a resumed run replays the shuffles of
    the epochs before and then sees exactly the batches the lost run would have seen.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._rng = random.Random(seed)
        self.epoch, self.position = 0, 0
        self._order = self._next_epoch()

    def _next_epoch(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        self._rng.shuffle(order)
        span = self.batch_size * 8
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        self._rng.shuffle(batches)
        return batches

    def next(self) -> list[int]:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._next_epoch()
        batch = self._order[self.position]
        self.position += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: dict[str, int]) -> None:
        self._rng = random.Random(self.seed)
        self._order = self._next_epoch()
        for _ in range(int(state["epoch"])):
            self._order = self._next_epoch()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def pack_examples(examples: list[Example], max_length: int) -> list[Example]:
    """Concatenate examples into rows of exactly `max_length` tokens (the last may be shorter).

    The first token of each example gets no label, so no row learns to predict one
    record from the end of another.
    """
    rows: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        ids.extend(example.input_ids)
        labels.extend([-100] + list(example.labels[1:]))
        while len(ids) >= max_length:
            rows.append(Example(ids[:max_length], labels[:max_length]))
            ids, labels = ids[max_length:], labels[max_length:]
    if ids and any(label != -100 for label in labels):
        rows.append(Example(ids, labels))
    return rows


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def adamw(params: list[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has it for these parameters.

    The same update as the per-tensor loop, ~3x faster on CPU for SmolLM2 (a third of a
    training step otherwise), and what the HF Trainer picks by default on torch >= 2.8.
    """
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fusable or None)


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    _, world = _world()
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _gather_objects(value):
    _, world = _world()
    if world == 1:
        return [value]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a (possibly FSDP-sharded DTensor) tensor that this rank stores."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def rank_state_bytes(model, optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by this process."""
    size = lambda t: _local(t).numel() * _local(t).element_size()  # noqa: E731
    return {
        "parameters": sum(size(p) for p in model.parameters()),
        "gradients": sum(size(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": sum(
            size(v)
            for state in optimizer.state.values()
            for k, v in state.items()
            if k != "step" and isinstance(v, torch.Tensor)
        ),
    }


def shard_model(model) -> None:
    """FSDP2: each decoder layer one unit (its parameters gathered only while it runs),
    the rest (embeddings, final norm, lm_head) in the root unit."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(_hf_model(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        found = sorted(layer_types) or "unknown types"
        raise TrainingError(f"sharding='fsdp': no decoder layers ({found}) found to shard")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def _hf_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _unsharded_copy(model, base_path: Path, layout: TrainingLayout, config: TrainingConfig):
    """The trained weights gathered from every rank into a plain model on rank 0 (None
    elsewhere). Collective: all ranks must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _world()[0] != 0:
        return None
    plain = _wrap_for_training(load_for_training(base_path, layout, torch.device("cpu")), config)
    plain.load_state_dict(full)
    return plain


def encode_examples(tokenizer, records, config: TrainingConfig) -> list[Example]:
    examples = [encode_record(tokenizer, r, config.max_length) for r in records]
    return [e for e in examples if any(label != -100 for label in e.labels)]


def _select_device_and_precision(config: TrainingConfig) -> tuple[torch.device, TrainingLayout]:
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if config.precision not in {"auto", "fp32", "bf16", "fp16"}:
        raise TrainingError(f"precision={config.precision!r}: expected 'auto', 'fp32', 'bf16' or 'fp16'")
    precision = config.precision
    if precision == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if gpu_bf16 else ("fp16" if device.type == "cuda" else "fp32")
        if config.method == "qlora" and precision == "fp32":
            precision = "bf16"  # QLoRA only exists in 16 bit; its CUDA check comes at load time
    try:
        return device, training_layout(config.method, precision)
    except LayoutError as exc:
        raise TrainingError(str(exc)) from exc


def load_for_training(base_path: Path, layout: TrainingLayout, device: torch.device):
    """The base model as the layout says: fp32 master weights for full fine-tuning, the
    training precision for a LoRA base, NF4 (bitsandbytes, CUDA) for a QLoRA base."""
    try:
        if layout.base == "nf4":
            # peft's prepare_model_for_kbit_training is not called: it upcasts every
            # non-quantised weight to fp32, which the planner's layout (and a 24 GB card)
            # does not budget for; freezing and input gradients are done by the trainer.
            return load_model(base_path, TORCH_DTYPES[layout.compute], quantization="nf4")
        return load_model(base_path, TORCH_DTYPES[layout.base]).to(device)
    except ModelSourceError as exc:
        raise TrainingError(str(exc)) from exc


def _wrap_for_training(model, config: TrainingConfig):
    """Gradient checkpointing and the adapters on a loaded base (after EWC's Fisher, which
    is taken over the base weights)."""
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if config.method in ("lora", "qlora"):
        model = _apply_lora(model, config)
        _adapters_to_fp32(model)
    return model


def setup_model(base_path: Path, config: TrainingConfig):
    """(model ready to train, its layout, device) exactly as `fine_tune` builds them."""
    _validate(config)
    device, layout = _select_device_and_precision(config)
    return _wrap_for_training(load_for_training(base_path, layout, device), config), layout, device


def _adapters_to_fp32(model) -> None:
    """peft upcasts adapters on a 16-bit base already; this makes the layout's promise
    (fp32 adapters and optimizer state) independent of that default."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


@torch.no_grad()
def mean_token_loss(model, examples: list[Example], pad_id: int, batch_size: int, device, autocast_dtype=None) -> float:
    """Mean next-token cross-entropy over the labelled tokens of `examples`."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        with _autocast(device, autocast_dtype):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce, n = token_ce_sum(logits, batch["labels"])
        total, tokens = total + float(ce), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def _validate(config: TrainingConfig) -> DistillationConfig:
    if config.method not in {"lora", "qlora", "full"}:
        raise TrainingError(f"method={config.method!r}: expected 'lora', 'qlora' or 'full'")
    if config.sharding not in {"ddp", "fsdp"}:
        raise TrainingError(f"sharding={config.sharding!r}: expected 'ddp' or 'fsdp'")
    if config.sharding == "fsdp":
        # These read or write whole parameters outside the forward pass, which FSDP
        # holds only as shards on each rank.
        unsupported = [
            name
            for name, on in (
                ("ewc_lambda > 0", config.ewc_lambda > 0),
                ("fgsm_epsilon", bool(config.fgsm_epsilon)),
                ("checkpoint_every", config.checkpoint_every > 0),
                ("method='qlora'", config.method == "qlora"),
            )
            if on
        ]
        if unsupported:
            raise TrainingError(f"sharding='fsdp' does not support {', '.join(unsupported)} yet; use sharding='ddp'")
    if config.method == "qlora" and config.ewc_lambda > 0:
        raise TrainingError(
            "ewc_lambda > 0 with method='qlora': EWC's Fisher needs gradients of the base weights, "
            "which a 4-bit base does not have; use method='lora' (EWC on the adapters)"
        )
    if config.ewc_lambda < 0:
        raise TrainingError(f"ewc_lambda={config.ewc_lambda}: must be >= 0")
    if config.fgsm_epsilon:
        from deepfeed.core.augment.fgsm import check_epsilon

        try:
            check_epsilon(config.fgsm_epsilon)
        except ValueError as exc:
            raise TrainingError(f"fgsm_epsilon={config.fgsm_epsilon}: {exc} (0 disables FGSM training)") from exc
    if config.fgsm_weight < 0:
        raise TrainingError(f"fgsm_weight={config.fgsm_weight}: must be >= 0")
    if config.teacher_cache_budget_gb < 0:
        raise TrainingError(
            f"teacher_cache_budget_gb={config.teacher_cache_budget_gb}: must be >= 0 (0 keeps every cache)"
        )
    if config.teacher_cache_top_k < 0:
        raise TrainingError(f"teacher_cache_top_k={config.teacher_cache_top_k}: must be >= 0 (0 keeps the full logits)")
    try:
        return DistillationConfig(alpha=config.distill_alpha, temperature=config.distill_temperature)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def _ewc_fisher(
    base_path: Path, model, tokenizer, ewc_records, config: TrainingConfig, device, result: TrainingResult
) -> dict[str, torch.Tensor]:
    """The champion's Fisher over its full weights, computed before any LoRA wrapping."""
    from deepfeed.core.train.ewc import load_or_compute_fisher

    if not ewc_records:
        raise TrainingError("ewc_lambda > 0 but no records of the champion's training data were given for the Fisher")

    def fisher_batches():
        examples = encode_examples(tokenizer, ewc_records[: config.fisher_samples], config)
        return [{k: v.to(device) for k, v in collate([e], tokenizer.pad_token_id).items()} for e in examples]

    fisher, path, _ = load_or_compute_fisher(
        Path(base_path), model, fisher_batches, {"samples": str(config.fisher_samples)}
    )
    result.fisher_file = str(path)
    return {k: v.to(device) for k, v in fisher.items()}


def _ewc_penalty(model, fisher: dict[str, torch.Tensor], config: TrainingConfig):
    from deepfeed.core.train.ewc import EwcPenalty, LoraEwcPenalty

    # With LoRA the base weights stay at the champion's, so the penalty falls on the
    # adapters' delta of the effective weights.
    penalty = LoraEwcPenalty if config.method in ("lora", "qlora") else EwcPenalty
    try:
        return penalty.from_model(model, fisher, config.ewc_lambda)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def _teacher_cache(
    teacher_path: Path,
    cache_dir: Path | None,
    examples,
    tokenizer,
    config: TrainingConfig,
    device,
    result: TrainingResult,
    vocab_size: int,
    teacher_dtype: torch.dtype = torch.float32,
):
    """Open the cache of the teacher's logits over `examples`, building it on rank 0 first."""
    from deepfeed.core.train import teacher_cache

    if cache_dir is None:
        raise TrainingError("teacher_cache is on but no teacher cache folder was given")
    rank, world = _world()
    size = teacher_cache.cache_bytes(examples, vocab_size, config.teacher_cache_top_k)
    if size > teacher_cache.FULL_LOGITS_MAX_BYTES and not 0 < config.teacher_cache_top_k < vocab_size:
        raise TrainingError(
            f"teacher_cache_top_k=0 would store {size / 2**30:.1f} GiB of full logits (vocabulary {vocab_size}); "
            "set teacher_cache_top_k (e.g. 64) to keep the top k per token"
        )

    def build(folder: Path) -> Path:
        teacher = _load_teacher(teacher_path, device, vocab_size, teacher_dtype)
        try:
            return teacher_cache.build_cache(
                teacher,
                examples,
                folder,
                config.teacher_cache_top_k,
                tokenizer.pad_token_id,
                config.batch_size,
                device,
                {"teacher": str(teacher_path)},
            )
        finally:
            del teacher

    budget = int(config.teacher_cache_budget_gb * 2**30)
    try:
        if rank == 0:
            cache, built = teacher_cache.open_or_build(
                cache_dir, teacher_path, examples, config.teacher_cache_top_k, build, budget
            )
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:  # opens what rank 0 built; pruning is rank 0's
            cache, built = teacher_cache.open_or_build(
                cache_dir, teacher_path, examples, config.teacher_cache_top_k, build
            )
    except (OSError, ValueError) as exc:
        raise TrainingError(f"teacher logit cache in {cache_dir}: {exc}") from exc
    result.teacher_cache, result.teacher_cache_built = str(cache.path.parent), built
    return cache


def _load_teacher(teacher_path: Path, device, vocab_size: int, dtype: torch.dtype = torch.float32):
    teacher = load_model(teacher_path, dtype).to(device).eval().requires_grad_(False)
    if teacher.config.vocab_size != vocab_size:
        raise TrainingError(
            f"teacher {teacher_path} has vocabulary {teacher.config.vocab_size}, the student {vocab_size}: "
            "distillation needs the same tokenizer"
        )
    return teacher


@dataclass
class TrainingRun:
    """Everything one `fine_tune` run holds between its steps (nanoGPT's loop globals)."""

    config: TrainingConfig
    base_path: Path
    checkpoint_dir: Path | None
    tokenizer: Any
    model: Any  # the model itself (adapters, FSDP shards): what evaluation and saving use
    trained: Any  # what the step runs: the model, or its DistributedDataParallel wrapper
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sampler: BatchSampler
    elastic: ElasticScale | None
    examples: list[Example]
    evals: list[Example]
    token_terms: list[TokenTerm]
    ewc: EwcTerm | None
    state: checkpointing.TrainingState
    result: TrainingResult
    device: torch.device
    layout: TrainingLayout
    autocast_dtype: torch.dtype | None
    rank: int
    world: int
    fsdp: bool
    # Bytes of parameters, gradients and AdamW state after the last step (gradients still there).
    held: dict[str, int] | None = None


def fine_tune(
    base_path: Path,
    records: list[dict[str, Any]],
    output_dir: Path,
    config: TrainingConfig,
    on_step: Callable[[int, float, float], None] | None = None,
    *,
    teacher_path: Path | None = None,
    ewc_records: list[dict[str, Any]] | None = None,
    eval_records: list[dict[str, Any]] | None = None,
    checkpoint_dir: Path | None = None,
    teacher_cache_dir: Path | None = None,
) -> TrainingResult:
    """Train from `base_path` and save a plain HF checkpoint to `output_dir`.

    teacher_path: distil from this checkpoint (distill_alpha < 1).
    ewc_records: the champion's training data, for its Fisher (ewc_lambda > 0); the
        champion is `base_path` itself, and its Fisher is stored next to it.
    eval_records: a replay / held-out sample for the eval loss and the elastic schedule.
    checkpoint_dir: resumable checkpoints; an existing one is resumed from.
    teacher_cache_dir: root of the teacher logit caches (config.teacher_cache).
    """
    run = setup_run(
        base_path,
        records,
        config,
        teacher_path=teacher_path,
        ewc_records=ewc_records,
        eval_records=eval_records,
        checkpoint_dir=checkpoint_dir,
        teacher_cache_dir=teacher_cache_dir,
    )
    if run.evals and run.state.step == 0:
        run.result.initial_eval_loss = evaluate(run)
    started = time.perf_counter()
    for step in range(run.state.step, config.max_steps):
        loss, lr = train_step(run, step)
        done = step + 1
        if run.evals and _eval_due(config, done):
            record_eval(run, done)
        if on_step:
            on_step(step, loss, lr)
        if checkpoint_dir and _checkpoint_due(config, done):
            save_checkpoint(run, done)
    run.result.seconds = time.perf_counter() - started
    return finish(run, output_dir)


def _eval_due(config: TrainingConfig, done: int) -> bool:
    """Every `eval_every` steps, and after the last one."""
    return bool(config.eval_every and done % config.eval_every == 0) or done == config.max_steps


def _checkpoint_due(config: TrainingConfig, done: int) -> bool:
    """Every `checkpoint_every` steps, but not after the last (the final model is saved instead)."""
    return bool(config.checkpoint_every) and done % config.checkpoint_every == 0 and done < config.max_steps


def setup_run(
    base_path: Path,
    records: list[dict[str, Any]],
    config: TrainingConfig,
    *,
    teacher_path: Path | None = None,
    ewc_records: list[dict[str, Any]] | None = None,
    eval_records: list[dict[str, Any]] | None = None,
    checkpoint_dir: Path | None = None,
    teacher_cache_dir: Path | None = None,
) -> TrainingRun:
    """Model, data, loss terms, optimizer and schedule of a run, resumed from the last
    checkpoint in `checkpoint_dir` if there is one. The order matters: the seeds come
    first, the teacher cache and EWC's Fisher see the base before the adapters exist, and
    the optimizer is built over the (possibly sharded) trainable parameters."""
    distill = _validate(config)
    if not records:
        raise TrainingError("no training records: the augmented corpus has no train split")
    rank, world = _world()
    if config.batch_size % world:
        raise TrainingError(f"batch_size={config.batch_size} must be a multiple of the {world} processes")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device, layout = _select_device_and_precision(config)
    autocast_dtype = TORCH_DTYPES[layout.compute] if layout.compute else None
    tokenizer = load_tokenizer(base_path)
    model = load_for_training(base_path, layout, device)
    result = TrainingResult(device=device.type, precision=layout.compute or "fp32", base_dtype=layout.base)

    examples = encode_examples(tokenizer, records, config)
    if not examples:
        raise TrainingError("every training record was empty after tokenization")
    if config.packing:
        examples = pack_examples(examples, config.max_length)
    evals = encode_examples(tokenizer, eval_records or [], config)[: config.eval_samples]
    token_terms = _token_terms(
        config, distill, teacher_path, teacher_cache_dir, examples, tokenizer, device, result, model, autocast_dtype
    )
    fisher = (
        _ewc_fisher(base_path, model, tokenizer, ewc_records, config, device, result) if config.ewc_lambda > 0 else None
    )

    model = _wrap_for_training(model, config)
    ewc = EwcTerm(_ewc_penalty(model, fisher, config)) if fisher is not None else None
    fsdp = world > 1 and config.sharding == "fsdp"
    if fsdp:
        shard_model(model)
    result.sharding = config.sharding if world > 1 else "none"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config)
    result.trainable_parameters = sum(p.numel() for p in params)
    result.total_parameters = num_parameters(model)
    result.examples = len(examples)
    sampler = BatchSampler([len(e.input_ids) for e in examples], config.batch_size, config.seed)
    elastic = (
        ElasticScale(config.elastic_factor, config.elastic_tolerance, config.elastic_min_scale)
        if config.elastic
        else None
    )
    state = checkpointing.TrainingState(config=config_dict(config))
    found = checkpointing.checkpoints(checkpoint_dir) if checkpoint_dir else []
    if found:
        state = _resume(found[-1], model, optimizer, config, sampler, elastic)
        result.resumed_from_step = state.step
    result.losses, result.learning_rates, result.tokens = state.losses, state.learning_rates, state.tokens
    result.adversarial_losses = state.adversarial_losses
    # A mixture-of-experts layer leaves the experts no token was routed to without a
    # gradient, which DDP must be told to expect.
    moe = getattr(model.config, "n_routed_experts", None) is not None
    if world > 1 and not fsdp:
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=moe)
    else:
        trained = model  # fully_shard works in place: the model itself runs sharded
    # fp16's 5 exponent bits flush small gradients to zero: scale the loss (bf16 has
    # fp32's range and needs no scaler).
    scaler = torch.amp.GradScaler(device.type) if layout.compute == "fp16" else None
    return TrainingRun(
        config=config,
        base_path=base_path,
        checkpoint_dir=checkpoint_dir,
        tokenizer=tokenizer,
        model=model,
        trained=trained,
        params=params,
        optimizer=optimizer,
        scaler=scaler,
        sampler=sampler,
        elastic=elastic,
        examples=examples,
        evals=evals,
        token_terms=token_terms,
        ewc=ewc,
        state=state,
        result=result,
        device=device,
        layout=layout,
        autocast_dtype=autocast_dtype,
        rank=rank,
        world=world,
        fsdp=fsdp,
    )


def _token_terms(
    config: TrainingConfig,
    distill: DistillationConfig,
    teacher_path: Path | None,
    teacher_cache_dir: Path | None,
    examples: list[Example],
    tokenizer,
    device: torch.device,
    result: TrainingResult,
    model,
    autocast_dtype: torch.dtype | None,
) -> list[TokenTerm]:
    """The token loss terms the configuration asks for, in the order they are summed."""
    if config.distill_alpha >= 1.0:
        terms: list[TokenTerm] = [LabelCrossEntropy()]
    else:
        if teacher_path is None:
            raise TrainingError("distill_alpha < 1 but no teacher checkpoint was given")
        # A frozen teacher is held like a frozen base: in the compute dtype.
        teacher_dtype = autocast_dtype or torch.float32
        vocab_size = model.config.vocab_size
        if config.teacher_cache:
            cache = _teacher_cache(
                teacher_path, teacher_cache_dir, examples, tokenizer, config, device, result, vocab_size, teacher_dtype
            )
            kl: TokenTerm = CachedDistillationKL(cache, 1 - distill.alpha, distill.temperature)
        else:
            teacher = _load_teacher(teacher_path, device, vocab_size, teacher_dtype)
            kl = DistillationKL(teacher, 1 - distill.alpha, distill.temperature)
        terms = [LabelCrossEntropy(distill.alpha), kl]
    if config.fgsm_epsilon:
        terms.append(AdversarialCrossEntropy(config.fgsm_weight))
    return terms


def forward_pass(run: TrainingRun, example_ids: list[int]) -> ForwardPass:
    """The student's logits on these examples (and, with FGSM on, the adversarial CE)."""
    local = [run.examples[i] for i in example_ids]
    batch = {k: v.to(run.device) for k, v in collate(local, run.tokenizer.pad_token_id).items()}
    if run.config.fgsm_epsilon:
        logits, adversarial = _clean_and_adversarial(run.model, run.trained, batch, run.config.fgsm_epsilon)
        return ForwardPass(logits, batch, example_ids, adversarial)
    logits = run.trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return ForwardPass(logits, batch, example_ids)


def train_step(run: TrainingRun, step: int) -> tuple[float, float]:
    """One optimizer step: learning rate, batch, loss terms, backward, clipped update.
    Returns (the loss reported for this step, the learning rate it used)."""
    config, result = run.config, run.result
    step_started = time.perf_counter()
    lr = cosine_with_floor(step, config) * (run.elastic.scale if run.elastic else 1.0)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    local_ids = run.sampler.next()[run.rank :: run.world]
    with _autocast(run.device, run.autocast_dtype):
        forward = forward_pass(run, local_ids)
        numerator = token_loss_sum(run.token_terms, forward)["total"]
    tokens = labelled_tokens(forward.labels)
    adversarial = forward.adversarial_ce if forward.adversarial_ce is not None else torch.zeros(())
    # Normalising by the global token count (DDP then averages over ranks) makes
    # N processes compute the same gradient as one process with the whole batch.
    input_tokens = float(forward.batch["attention_mask"].sum())
    global_tokens, global_numerator, global_inputs, global_adversarial = _all_sum(
        [float(tokens), float(numerator.detach()), input_tokens, float(adversarial.detach())]
    )
    loss = numerator * run.world / max(global_tokens, 1.0)
    reported = global_numerator / max(global_tokens, 1.0)
    if config.fgsm_epsilon:
        result.adversarial_losses.append(global_adversarial / max(global_tokens, 1.0))
    if run.ewc is not None:
        penalty = run.ewc(run.model)
        loss = loss + penalty
        reported += float(penalty.detach())
    if not math.isfinite(reported):
        raise TrainingError(_nan_message(reported, step, run.checkpoint_dir))
    _backward_and_update(run, loss)
    if step == config.max_steps - 1:  # gradients are still there to count
        run.held = rank_state_bytes(run.model, run.optimizer)
    run.optimizer.zero_grad(set_to_none=True)
    step_tokens = int(global_inputs)  # throughput counts every non-padding input token
    result.losses.append(reported)
    result.learning_rates.append(lr)
    result.tokens += step_tokens
    result.tokens_per_second_series.append(step_tokens / max(time.perf_counter() - step_started, 1e-9))
    result.peak_memory_mb_series.append(peak_memory_mb(run.device))
    return reported, lr


def _backward_and_update(run: TrainingRun, loss: torch.Tensor) -> None:
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, run.config.max_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.params, run.config.max_grad_norm)
        run.optimizer.step()


def evaluate(run: TrainingRun) -> float:
    """Mean token loss of the model on the run's eval (replay / held-out) examples."""
    return mean_token_loss(
        run.model, run.evals, run.tokenizer.pad_token_id, run.config.batch_size, run.device, run.autocast_dtype
    )


def record_eval(run: TrainingRun, done: int) -> None:
    """The eval loss after `done` steps, which the elastic schedule also watches."""
    eval_loss = evaluate(run)
    run.result.eval_losses.append((done, eval_loss))
    if run.elastic:
        run.elastic.observe(eval_loss)


def save_checkpoint(run: TrainingRun, done: int) -> None:
    """A resumable checkpoint after `done` steps (rank 0 writes, every rank waits)."""
    state, result = run.state, run.result
    state.step, state.sampler, state.tokens = done, run.sampler.state(), result.tokens
    state.schedule = run.elastic.state() if run.elastic else {}
    state.losses, state.learning_rates = result.losses, result.learning_rates
    state.adversarial_losses = result.adversarial_losses
    if run.rank == 0:
        try:
            checkpointing.save_checkpoint(
                run.checkpoint_dir, run.model, run.optimizer, state, run.config.keep_checkpoints
            )
        except checkpointing.CheckpointError as exc:
            raise TrainingError(f"{exc}; {_last_good(run.checkpoint_dir)}") from exc
    if run.world > 1:
        torch.distributed.barrier()


def finish(run: TrainingRun, output_dir: Path) -> TrainingResult:
    """Gather the per-rank memory figures, unshard, and save the plain model on rank 0."""
    config, result = run.config, run.result
    result.elastic_reductions = run.elastic.reductions if run.elastic else 0
    if run.state.step < config.max_steps:  # a run resumed at its end took no step
        result.rank_state_bytes = _gather_objects(run.held)
    model = run.model
    if run.fsdp:
        model = _unsharded_copy(model, run.base_path, run.layout, config)  # collective: every rank takes part
    if run.rank == 0:
        _save_final(model, run.tokenizer, output_dir, config, run.base_path)
    return result


def _clean_and_adversarial(model, trained, batch: dict[str, torch.Tensor], epsilon: float):
    """Clean logits and the summed CE at FGSM-perturbed embeddings, in one forward pass.

    The FGSM direction comes from a probe pass on the unwrapped model that asks autograd
    for the embedding gradient only (no weight gradients accumulate). Clean and perturbed
    rows then go through the training model as one doubled batch, so under DDP there is
    still one forward and one backward per step.
    """
    from deepfeed.core.augment.fgsm import adversarial_embeddings

    embeds, perturbed = adversarial_embeddings(model, batch, epsilon)
    rows = batch["input_ids"].shape[0]
    mask = batch["attention_mask"]
    logits = trained(inputs_embeds=torch.cat([embeds, perturbed]), attention_mask=torch.cat([mask, mask])).logits
    adversarial, _ = token_ce_sum(logits[rows:], batch["labels"])
    return logits[:rows], adversarial


def _resume(path: Path, model, optimizer, config: TrainingConfig, sampler: BatchSampler, elastic: ElasticScale | None):
    state = checkpointing.load_checkpoint(path, model, optimizer)
    saved = {k: v for k, v in state.config.items() if k not in _RESUME_NEUTRAL}
    wanted = {k: v for k, v in config_dict(config).items() if k not in _RESUME_NEUTRAL}
    changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if changed:
        raise TrainingError(
            f"checkpoint {path} was made with a different configuration ({', '.join(changed)}); "
            "remove it or restore the configuration"
        )
    sampler.load(state.sampler)
    if elastic and state.schedule:
        elastic.load(state.schedule)
    return state


def _last_good(checkpoint_dir: Path | None) -> str:
    found = checkpointing.checkpoints(checkpoint_dir) if checkpoint_dir else []
    return f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written"


def _nan_message(value: float, step: int, checkpoint_dir: Path | None) -> str:
    return f"loss became {value} at step {step}; training stopped and no model was saved; {_last_good(checkpoint_dir)}"


def _save_final(model, tokenizer, output_dir: Path, config: TrainingConfig, base_path: Path) -> None:
    if not checkpointing.all_finite(model):
        raise TrainingError("the trained weights are not finite; no model was saved")
    if config.method == "qlora":
        model = _merge_onto_16bit_base(model, base_path, config)
    elif config.method == "lora":
        model = model.merge_and_unload()
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


def _merge_onto_16bit_base(model, base_path: Path, config: TrainingConfig):
    """QLoRA's adapters merged into the original bf16 weights (on the CPU), not into the
    NF4 ones: merging into a 4-bit layer re-quantises the sum and loses the update."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    adapters = {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(model).items()}
    merged = _apply_lora(load_model(base_path, torch.bfloat16), config)
    set_peft_model_state_dict(merged, adapters)
    return merged.merge_and_unload()


def config_dict(config: TrainingConfig) -> dict[str, Any]:
    return asdict(config)
