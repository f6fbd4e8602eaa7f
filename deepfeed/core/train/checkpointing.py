"""Resumable training state: weights, optimizer, schedule, RNG and data position.

A checkpoint is a folder `step-<N>` written under a temporary name and renamed when
complete, so a run killed at any instant (SIGKILL included) leaves only whole
checkpoints behind, and resuming from the newest one replays exactly the steps that
were lost. Weights go to safetensors; the rest (optimizer moments, RNG states, counters)
to a torch file loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"
WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
INFO = "info.json"


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue identically."""

    step: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    schedule: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    tokens: int = 0
    adversarial_losses: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() yields a tied weight once, which safetensors requires.
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not Path(folder).is_dir():
        return []
    found = [p for p in Path(folder).iterdir() if p.name.startswith(PREFIX) and (p / INFO).exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    keep: int = 2,
) -> Path:
    """Write `step-<N>` atomically; refuse weights that are no longer finite."""
    if not all_finite(model):
        raise CheckpointError(f"weights are not finite at step {state.step}; not checkpointing a broken model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{state.step}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=folder))
    save_file(trainable_state(model), str(staging / WEIGHTS))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "sampler": state.sampler,
            "schedule": state.schedule,
            "losses": state.losses,
            "learning_rates": state.learning_rates,
            "tokens": state.tokens,
            "adversarial_losses": state.adversarial_losses,
        },
        staging / STATE,
    )
    # info.json last: its presence marks the folder complete even on filesystems where
    # the rename below is not atomic.
    (staging / INFO).write_text(json.dumps({"step": state.step, "config": state.config}, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore weights, optimizer and RNG in place; return the counters to continue from."""
    path = Path(path)
    info = json.loads((path / INFO).read_text())
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise CheckpointError(f"checkpoint {path} holds parameters this model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    saved = torch.load(path / STATE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    _restore_rng(saved["rng"])
    return TrainingState(
        step=info["step"],
        sampler=saved["sampler"],
        schedule=saved["schedule"],
        losses=list(saved["losses"]),
        learning_rates=list(saved["learning_rates"]),
        tokens=int(saved["tokens"]),
        adversarial_losses=list(saved.get("adversarial_losses", [])),  # absent from checkpoints before FGSM training
        config=info["config"],
    )
