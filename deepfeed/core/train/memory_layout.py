"""How the trainer holds a model in memory, by method and precision.

The one definition that ``deepfeed.core.train.training`` loads models by and that the
hardware planner (``deepfeed.tools.planner``) budgets training rows with, so the planner's
fit table describes exactly what ``fine_tune`` allocates. It lives in core because the
trainer needs it; the planner, an operator tool above core, imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


class LayoutError(ValueError):
    """A training method or precision the trainer has no memory layout for."""


@dataclass(frozen=True)
class TrainingLayout:
    """How the trainer holds a model in memory: the one definition that
    ``deepfeed.core.train.training`` loads models by and that the planner's training rows use,
    so the fit table describes exactly what ``fine_tune`` allocates.

    base: storage of the weights that are not trained (all weights for full fine-tuning
        are trained, so there it is the master copy): fp32 | bf16 | fp16 | nf4.
    trained: dtype of the trained parameters (full: the master weights; LoRA: the
        adapters), of their gradients and of AdamW's two moments.
    compute: autocast dtype of the forward pass (None: the weights' own dtype).
    """

    method: str  # full | lora | qlora
    base: str
    trained: str
    compute: str | None

    @property
    def trained_bytes(self) -> float:
        """Bytes per trained parameter: the weight, its gradient, AdamW's m and v."""
        return 4 * DTYPE_BYTES[self.trained]

    @property
    def activation_unit(self) -> float:
        # Activations come in the compute dtype; without autocast the weights are fp32.
        return DTYPE_BYTES[self.compute] if self.compute else 4.0


TRAINING_METHODS = ("full", "lora", "qlora")
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")


def training_layout(method: str, precision: str) -> TrainingLayout:
    """The trainer's memory layout for a method and a (resolved) precision.

    Full fine-tuning keeps fp32 master weights whatever the precision: AdamW updates of
    ~1e-5 relative size vanish in a 16-bit weight (bf16 keeps 8 bits of mantissa), so
    16-bit precision there means 16-bit autocast compute, the mixed precision of the
    ZeRO paper (its 2+2+12 bytes per parameter add up to the same 16 as 4+4+8 here).
    LoRA stores the frozen base in the training precision and the adapters, their
    gradients and AdamW state in fp32 (peft's default on a 16-bit base). QLoRA stores the
    decoder Linears in NF4 with double quantisation, the rest in bf16, fp32 adapters.
    """
    if method not in TRAINING_METHODS:
        raise LayoutError(f"method={method!r}: expected one of {', '.join(TRAINING_METHODS)}")
    if precision not in TRAINING_PRECISIONS:
        raise LayoutError(f"precision={precision!r}: expected one of {', '.join(TRAINING_PRECISIONS)}")
    compute = None if precision == "fp32" else precision
    if method == "full":
        return TrainingLayout("full", "fp32", "fp32", compute)
    if method == "lora":
        return TrainingLayout("lora", precision, "fp32", compute)
    if precision == "fp32":
        raise LayoutError("QLoRA computes in 16 bit: use precision bf16 (or fp16 on GPUs without bf16)")
    return TrainingLayout("qlora", "nf4", "fp32", compute)
