"""Teacher logits computed once and read back by distillation (docs/requirements.md §4: a large teacher).

A live teacher costs a full forward pass per step and its weights stay in memory next to
the student's for the whole run. When the teacher is large, its logits are computed once
over the training examples and stored; every epoch of this run and every later run on the
same teacher and data reads them instead, and the teacher is never loaded again.

Only the positions the KL reads are kept: those that predict a labelled next token (the
same positions `distill.shifted` selects). Per position either the full logits (fp32: a
distillation loss identical to the live teacher's) or, for a large vocabulary, the top-k
logits in fp16 and their token ids; the KL is then taken over the teacher's top-k tokens
with the teacher distribution renormalised over them (the usual sparse-distillation
approximation; it misses the teacher mass outside the top k).

A cache is a folder `<root>/<key>/logits.safetensors` where the key hashes the teacher's
files, the encoded examples (token ids and labels: records, tokenizer, max_length and
packing) and k, so a different teacher or data never reads a stale cache. It is written to
a temporary folder and renamed into place, so a crash leaves no half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepfeed.core.platform.artifacts import hash_folder
from deepfeed.core.train.distill import IGNORE
from deepfeed.core.train.modeling import Example, collate

FILE = "logits.safetensors"


def examples_hash(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([list(example.input_ids), list(example.labels)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def cache_key(teacher_path: Path, examples: Sequence[Example], top_k: int) -> str:
    teacher = hash_folder(Path(teacher_path))
    return f"t{teacher[:16]}-d{examples_hash(examples)[:16]}-k{top_k}"


# Full fp32 logits cost 4·vocab bytes per position (196 KB with a 49k vocabulary): past
# this size a cache must keep only the top k.
FULL_LOGITS_MAX_BYTES = 2 * 2**30


def cache_bytes(examples: Sequence[Example], vocab_size: int, top_k: int) -> int:
    positions = sum(int(_labelled_positions(e).numel()) for e in examples)
    per_position = 6 * top_k if top_k and top_k < vocab_size else 4 * vocab_size  # fp16 + int32 ids, or fp32
    return positions * per_position


def _labelled_positions(example: Example) -> torch.Tensor:
    labels = torch.tensor(example.labels)
    return torch.nonzero(labels[1:] != IGNORE).flatten()


@torch.no_grad()
def build_cache(
    teacher,
    examples: Sequence[Example],
    folder: Path,
    top_k: int,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Run the teacher over `examples` and write the cache file into `folder` atomically."""
    if top_k < 0:
        raise ValueError(f"teacher_cache_top_k={top_k}: must be >= 0 (0 keeps the full logits)")
    values, indices, offsets = [], [], [0]
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        for row, example in enumerate(chunk):
            picked = logits[row, _labelled_positions(example).to(device)]
            if top_k and top_k < picked.shape[-1]:
                top = picked.topk(top_k, dim=-1)
                values.append(top.values.half().cpu())
                indices.append(top.indices.to(torch.int32).cpu())
            else:
                values.append(picked.cpu())
            offsets.append(offsets[-1] + picked.shape[0])
    tensors = {"values": torch.cat(values).contiguous(), "offsets": torch.tensor(offsets, dtype=torch.int64)}
    if indices:
        tensors["indices"] = torch.cat(indices).contiguous()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(tensors, str(staging / FILE), metadata={**(metadata or {}), "examples": str(len(examples))})
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / FILE).exists():  # not another writer who finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


class TeacherLogitCache:
    """Read access to a cache folder: the teacher's logits for a batch of example indices."""

    def __init__(self, folder: Path, expected_examples: int):
        self.path = Path(folder) / FILE
        self._file = safe_open(str(self.path), framework="pt")
        self.offsets = self._file.get_tensor("offsets").tolist()
        if len(self.offsets) != expected_examples + 1:
            raise ValueError(
                f"teacher logit cache {self.path} holds {len(self.offsets) - 1} examples, the run has "
                f"{expected_examples}: delete it"
            )
        self._values = self._file.get_slice("values")
        self.sparse = "indices" in self._file.keys()
        self._indices = self._file.get_slice("indices") if self.sparse else None

    def batch(self, example_ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(values, indices or None), rows in the order `distill.shifted` yields them for
        a batch collated from these examples in this order."""
        spans = [(self.offsets[i], self.offsets[i + 1]) for i in example_ids]
        values = torch.cat([self._values[a:b] for a, b in spans]).to(device)
        if not self.sparse:
            return values, None
        return values, torch.cat([self._indices[a:b] for a, b in spans]).to(device).long()


def open_or_build(
    root: Path,
    teacher_path: Path,
    examples: Sequence[Example],
    top_k: int,
    build: Callable[[Path], Path],
    budget_bytes: int = 0,
) -> tuple[TeacherLogitCache, bool]:
    """(cache, built_now): reuse `<root>/<key>` when it exists, else call build(folder).

    With a budget, the least recently used other caches are then deleted until all of
    them fit it (see `prune`)."""
    folder = Path(root) / cache_key(teacher_path, examples, top_k)
    built = not (folder / FILE).exists()
    if built:
        build(folder)
    os.utime(folder / FILE)  # "recently used" for prune: a reuse counts like a build
    cache = TeacherLogitCache(folder, len(examples))
    if budget_bytes > 0:
        prune(Path(root), budget_bytes, keep=folder)
    return cache, built


def prune(root: Path, budget_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used caches under `root` until the rest fit in
    `budget_bytes`; `keep` (the cache in use) is never deleted, even alone over budget.

    Every run on new data or a new champion writes a new cache, and nothing else ever
    reads an old one, so without a budget they fill the disk. Returns what was deleted.
    """
    caches = [f for f in Path(root).iterdir() if (f / FILE).is_file()] if Path(root).is_dir() else []
    sizes = {f: sum(p.stat().st_size for p in f.iterdir() if p.is_file()) for f in caches}
    total = sum(sizes.values())
    deleted = []
    for folder in sorted(caches, key=lambda f: (f / FILE).stat().st_mtime):
        if total <= budget_bytes:
            break
        if keep is not None and folder.resolve() == Path(keep).resolve():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        deleted.append(folder)
    return deleted
