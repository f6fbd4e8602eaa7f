"""Resource efficiency: FLOPs per token (prefill and decode apart), peak memory, size.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on real forward passes,
so attention, MoE routing and whatever the architecture does are counted as run (an
estimate from the parameter count would miss them). A quantized model's int8 kernels
are not counted by FlopCounterMode: its FLOPs come out as those of its float parts only,
which is why the report takes FLOPs from the fp32 checkpoint.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import torch


def _count_cpu_attention() -> None:
    """FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU
    one that SDPA dispatches to, so attention would count as zero on CPU. Register the
    same formula torch uses for the others (full, not causal-halved, like theirs)."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@torch.no_grad()
def flops_per_token(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per token of a prefill over `input_ids` (batch, seq) and of one
    decode step that reuses its KV cache."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    attention = torch.ones_like(input_ids)
    with FlopCounterMode(display=False) as prefill:
        out = model(input_ids=input_ids, attention_mask=attention, use_cache=True)
    next_token = out.logits[:, -1:].argmax(-1)
    cache = out.past_key_values
    with FlopCounterMode(display=False) as decode:
        model(
            input_ids=next_token,
            attention_mask=torch.ones((input_ids.shape[0], input_ids.shape[1] + 1), dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
        )
    batch, length = input_ids.shape
    return {
        "prefill_flops_per_token": prefill.get_total_flops() / (batch * length),
        "decode_flops_per_token": decode.get_total_flops() / batch,
        "flops_context_tokens": length,
    }


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every `interval` seconds.

    On CPU torch allocations go through malloc, so RSS is the only honest view; a
    sampling thread catches the peak that the start and end values would miss. On
    CUDA the allocator's own peak counter is exact and is used instead.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._process = psutil.Process()
        self._base = self._process.memory_info().rss
        self._peak = self._base
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20
        if torch.cuda.is_available():
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20


def folder_size_mb(path: Path, pattern: str = "*") -> float:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) / 2**20


class Stopwatch:
    """Named stage timings, logged as each stage completes: wall seconds, and the CPU
    seconds of this process, which still mean something on a shared, busy machine."""

    def __init__(self, log=None):
        self.stages: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._log = log

    @contextlib.contextmanager
    def stage(self, name: str):
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            self.stages[name] = self.stages.get(name, 0.0) + seconds
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu
            if self._log:
                self._log(f"stage {name}: {seconds:.1f}s (CPU {cpu:.1f}s)")
