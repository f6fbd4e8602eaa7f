"""Elastic weight consolidation (Kirkpatrick et al., 2017) against catastrophic forgetting.

The diagonal Fisher information of the champion on its own training data says how much
each weight mattered for what the model already knows; the incremental stream then pays
λ/2 · Σ F_i (θ_i − θ*_i)² for moving those weights. The Fisher is computed once per
champion and stored as safetensors next to the champion's checkpoint folder
(`<checkpoint>.ewc_fisher.safetensors`), so later incremental runs only load it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

FISHER_SUFFIX = ".ewc_fisher.safetensors"


def fisher_path(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.parent / f"{checkpoint.name}{FISHER_SUFFIX}"


def diagonal_fisher(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: the mean of squared per-batch gradients of the LM loss.

    Pass batches of one example each for the per-example Fisher of the textbook; larger
    batches trade fidelity for speed on big models.
    """
    if not batches:
        raise ValueError("the Fisher information needs at least one batch of the champion's training data")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic model
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, param in named:
            if param.grad is not None:
                fisher[name] += param.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / len(batches) for n, f in fisher.items()}


def save_fisher(path: Path, fisher: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write atomically: a half-written Fisher would silently weaken EWC forever."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({n: t.contiguous() for n, t in fisher.items()}, tmp, metadata=metadata or {})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_or_compute_fisher(
    checkpoint: Path,
    model: torch.nn.Module,
    batches_factory: Callable[[], Sequence[dict[str, torch.Tensor]]],
    metadata: dict[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """(fisher, file, computed_now). `model` must hold the checkpoint's weights."""
    path = fisher_path(checkpoint)
    if path.exists():
        return load_file(str(path)), path, False
    fisher = diagonal_fisher(model, batches_factory())
    save_fisher(path, fisher, metadata)
    return fisher, path, True


@dataclass
class EwcPenalty:
    """λ/2 · Σ F_i (θ_i − θ*_i)² over the parameters that have a Fisher entry."""

    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    strength: float  # λ

    @classmethod
    def from_model(cls, model: torch.nn.Module, fisher: dict[str, torch.Tensor], strength: float) -> "EwcPenalty":
        params = dict(model.named_parameters())
        missing = sorted(set(fisher) - set(params))
        if missing:
            raise ValueError(f"the EWC Fisher names parameters the model does not have: {missing[:3]}")
        anchor = {n: params[n].detach().clone() for n in fisher}
        return cls(fisher=fisher, anchor=anchor, strength=strength)

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for name, weight in self.fisher.items():
            param = params[name]
            term = (weight.to(param.device) * (param - self.anchor[name].to(param.device)) ** 2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.strength * total


@dataclass
class LoraEwcPenalty:
    """EWC when training LoRA adapters (peft) over frozen base weights.

    The effective weight of an adapted module is W* + ΔW with ΔW = B·A·scale, and the
    frozen W* is the champion's weight, so θ − θ* is exactly ΔW: the penalty is
    λ/2 · Σ F ⊙ ΔW² with the Fisher computed over the base weights before the adapters
    were added. Modules without adapters are frozen and contribute nothing. ΔW is
    materialised per module per step (one weight-sized temporary at a time), which is
    cheap next to the forward pass for the models LoRA is used on here.
    """

    fisher: dict[str, torch.Tensor]  # by the adapted module's name in the peft model
    strength: float

    @classmethod
    def from_model(cls, model: torch.nn.Module, fisher: dict[str, torch.Tensor], strength: float) -> "LoraEwcPenalty":
        matched = {}
        for name, module in model.named_modules():
            if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
                continue
            # peft names the wrapped model's modules "base_model.model.<original name>".
            key = f"{name.removeprefix('base_model.model.')}.weight"
            if key not in fisher:
                raise ValueError(f"the EWC Fisher has no entry for the LoRA-adapted weight {key}")
            matched[name] = fisher[key]
        if not matched:
            raise ValueError("the model has no LoRA-adapted module: use EwcPenalty for full fine-tuning")
        return cls(fisher=matched, strength=strength)

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        modules = dict(model.named_modules())
        total = None
        for name, weight in self.fisher.items():
            module = modules[name]
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                delta = module.get_delta_weight(adapter)
                term = (weight.to(delta.device) * delta.float() ** 2).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.strength * total
