"""Training speed and memory on the embedded default model (SmolLM2-135M-Instruct).

Prints, each ratio against a baseline measured in this same run:
- tokens/s of deepfeed's training path (`fine_tune`, full fine-tuning, AdamW, cosine)
  and of a plain Hugging Face `Trainer` on the same model, records, tokenization,
  batches (same order), steps, schedule, fp32 and thread count, and the same fused
  AdamW (the Trainer's default optimizer on torch >= 2.8). Each timed step spans
  fetching its batch to the end of its optimizer step on both paths; the first step
  (allocation of the AdamW state, first-call overheads) is excluded. The two paths run
  interleaved `--repeats` times, alternating which goes first, and the medians and the
  median of the paired per-round ratios are printed (target >= 1.0);
- memory of a training step with and without gradient checkpointing, each setting in
  a fresh process: the whole-process peak RSS, and the step's own peak above the
  resident memory between steps (activations, gradients and autograd temporaries;
  Linux's VmHWM is reset between steps through /proc/self/clear_refs, and glibc's mmap
  threshold is fixed so freed tensors leave the resident set). The gradients of the
  full model are the same in both settings; the difference is the activations.

    .venv/bin/python benchmarks/bench_training.py [--model DIR] [--steps 6] [--batch 4]
        [--length 64] [--repeats 3] [--memory-batch 2] [--memory-length 512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def demo_records(limit: int) -> list[dict]:
    from deepfeed.core.data.demo_corpus import ensure_demo_corpus
    from deepfeed.core.data.ingest import ingest_folder
    from deepfeed.settings import demo_corpus_dir

    records = [
        r
        for r in ingest_folder(ensure_demo_corpus(demo_corpus_dir())).records
        if r.get("kind") == "pair" and r.get("lang") == "en"
    ]
    return records[:limit]


def deepfeed_run(model: Path, records, args) -> dict:
    from deepfeed.core.train.training import TrainingConfig, fine_tune

    config = TrainingConfig(
        method="full",
        max_steps=args.steps,
        batch_size=args.batch,
        max_length=args.length,
        learning_rate=2e-5,
        warmup_steps=1,
        precision="fp32",
        log_every=args.steps,
    )
    with tempfile.TemporaryDirectory() as out:
        result = fine_tune(model, records, Path(out) / "ckpt", config)
    all_tokens = step_tokens(model, records, args)
    if sum(all_tokens) != result.tokens:
        raise RuntimeError(f"deepfeed counted {result.tokens} tokens, the batches hold {sum(all_tokens)}")
    # tokens_per_second_series holds each step's tokens / its seconds: recover the seconds.
    tokens = all_tokens[1:]
    seconds = sum(t / r for t, r in zip(tokens, result.tokens_per_second_series[1:]))
    return {
        "tokens": sum(tokens),
        "seconds": seconds,
        "tokens_per_second": sum(tokens) / seconds,
        "mean_loss": statistics.mean(result.losses),
    }


def step_tokens(model_dir: Path, records, args) -> list[int]:
    """Non-padding input tokens of each step's batch, in deepfeed's order (seed 0)."""
    return [sum(len(e.input_ids) for e in batch) for batch in same_batches(model_dir, records, args)]


def same_batches(model_dir: Path, records, args):
    from deepfeed.core.train.modeling import encode_record, load_tokenizer
    from deepfeed.core.train.training import BatchSampler

    tokenizer = load_tokenizer(model_dir)
    examples = [encode_record(tokenizer, r, args.length) for r in records]
    examples = [e for e in examples if any(label != -100 for label in e.labels)]
    sampler = BatchSampler([len(e.input_ids) for e in examples], args.batch, seed=0)
    return [[examples[i] for i in sampler.next()] for _ in range(args.steps)]


def trainer_run(model_dir: Path, records, args) -> dict:
    """A plain HF Trainer: the same batches in the same order, AdamW and cosine schedule."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from deepfeed.core.train.modeling import collate, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    batches = same_batches(model_dir, records, args)
    # Laid out flat for a sequential sampler, so both paths train on exactly the same
    # batches and pay for the same padding.
    examples = [e for batch in batches for e in batch]

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *unused):
            return SequentialSampler(self.train_dataset)

    class StepClock(TrainerCallback):
        """End of one optimizer step to the end of the next: fetching and collating the
        batch, forward, backward, clipping, AdamW and the scheduler, as deepfeed's step
        clock counts them."""

        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, *unused, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, *unused, **kwargs):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=2e-5,
            warmup_steps=1,
            lr_scheduler_type="cosine",
            optim="adamw_torch_fused",
            max_grad_norm=1.0,
            weight_decay=0.0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
            seed=0,
        )
        trainer = SameOrderTrainer(
            model=model,
            args=training_args,
            train_dataset=examples,
            data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
            callbacks=[clock],
        )
        output = trainer.train()
    durations = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    if len(durations) != args.steps:
        raise RuntimeError(f"the Trainer ran {len(durations)} steps, expected {args.steps}")
    tokens = [sum(len(e.input_ids) for e in batch) for batch in batches][1:]
    seconds = sum(durations[1:])
    return {
        "tokens": sum(tokens),
        "seconds": seconds,
        "tokens_per_second": sum(tokens) / seconds,
        "mean_loss": output.training_loss,
    }


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_probe(model: Path, records, args, checkpointing: bool) -> None:
    """Runs in its own process; prints JSON: whole-process peak RSS and, per step after
    the first, the peak RSS above the resident memory at the end of the step before."""
    import torch

    from deepfeed.core.train.training import TrainingConfig, fine_tune

    steps: list[dict] = []
    state = {"process_peak_kb": 0, "baseline_kb": 0, "ended": 0.0}

    def on_step(step: int, loss: float, lr: float) -> None:
        now = time.perf_counter()
        peak = _status_kb("VmHWM")
        state["process_peak_kb"] = max(state["process_peak_kb"], peak)
        if step > 0:
            steps.append(
                {
                    "step": step,
                    "peak_above_baseline_mb": (peak - state["baseline_kb"]) / 1024,
                    "seconds": now - state["ended"],
                }
            )
        state["baseline_kb"] = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM from the current RSS
        state["ended"] = time.perf_counter()

    config = TrainingConfig(
        method="full",
        max_steps=args.memory_steps,
        batch_size=args.memory_batch,
        max_length=args.memory_length,
        gradient_checkpointing=checkpointing,
        packing=True,
        warmup_steps=0,
        precision="fp32",
    )
    with tempfile.TemporaryDirectory() as out:
        result = fine_tune(model, records, Path(out) / "ckpt", config, on_step=on_step)
    from deepfeed.core.train.modeling import load_model

    gradient_mb = sum(p.numel() * p.element_size() for p in load_model(model).parameters()) / 2**20
    print(
        json.dumps(
            {
                "process_peak_mb": state["process_peak_kb"] / 1024,
                "step_peak_mb": statistics.median(s["peak_above_baseline_mb"] for s in steps),
                "steps": steps,
                "gradient_mb": gradient_mb,
                "tokens": result.tokens,
                "step_seconds": statistics.median(s["seconds"] for s in steps),
                "threads": torch.get_num_threads(),
            }
        )
    )


def probe_in_subprocess(args, checkpointing: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--probe",
        "on" if checkpointing else "off",
        "--model",
        str(args.model),
        "--memory-batch",
        str(args.memory_batch),
        "--memory-length",
        str(args.memory_length),
        "--memory-steps",
        str(args.memory_steps),
        "--records",
        str(args.records),
        "--threads",
        str(args.threads),
    ]
    # A fixed mmap threshold returns every large freed tensor to the OS at once (glibc's
    # dynamic threshold would keep them in the heap and inflate the baseline).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="", help="HF checkpoint folder (default: SmolLM2-135M-Instruct from the offline cache)"
    )
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first is not timed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=2)
    parser.add_argument("--memory-length", type=int, default=512)
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory probe; the first is the baseline")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both paths (0: torch's default)")
    parser.add_argument("--skip-memory", action="store_true", help="only the tokens/s comparison")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory comparison")
    parser.add_argument("--probe", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model:
        from deepfeed.core.platform.home import ensure_smollm2

        args.model = ensure_smollm2()
    args.model = Path(args.model)
    records = demo_records(args.records)
    if args.probe:
        memory_probe(args.model, records, args, args.probe == "on")
        return

    print(
        f"model {args.model.name}; {len(records)} records; {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads; load average at start {os.getloadavg()[0]:.2f}"
    )
    if not args.skip_speed:
        print(
            f"speed: batch {args.batch} x <= {args.length} tokens, {args.steps} steps per run (first not timed), fp32, "
            f"{args.repeats} interleaved repeats"
        )
        runs: dict[str, list[dict]] = {"trainer": [], "deepfeed": []}
        for round_ in range(args.repeats):
            order = ["trainer", "deepfeed"] if round_ % 2 == 0 else ["deepfeed", "trainer"]
            for name in order:
                runs[name].append((trainer_run if name == "trainer" else deepfeed_run)(args.model, records, args))
            hf, ours = runs["trainer"][-1], runs["deepfeed"][-1]
            print(
                f"  round {round_ + 1} ({order[0]} first): Trainer {hf['tokens_per_second']:7.1f}  deepfeed "
                f"{ours['tokens_per_second']:7.1f} tokens/s  ratio "
                f"{ours['tokens_per_second'] / hf['tokens_per_second']:.3f}  "
                f"(mean train loss {hf['mean_loss']:.3f} / {ours['mean_loss']:.3f}; load {os.getloadavg()[0]:.2f})"
            )
        hf = statistics.median(r["tokens_per_second"] for r in runs["trainer"])
        ours = statistics.median(r["tokens_per_second"] for r in runs["deepfeed"])
        ratios = [o["tokens_per_second"] / h["tokens_per_second"] for o, h in zip(runs["deepfeed"], runs["trainer"])]
        paired = statistics.median(ratios)
        print(f"HF Trainer : median {hf:8.1f} tokens/s")
        print(f"deepfeed   : median {ours:8.1f} tokens/s")
        print(
            f"ratio deepfeed / Trainer: {ours / hf:.3f} of the medians, {paired:.3f} median of the paired rounds "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 1.0)"
        )

    if args.skip_memory:
        return
    without = probe_in_subprocess(args, checkpointing=False)
    with_gc = probe_in_subprocess(args, checkpointing=True)
    print(
        f"memory: batch {args.memory_batch} x {args.memory_length} packed tokens, full fine-tuning, fp32, "
        f"median of {args.memory_steps - 1} steps after the first"
    )
    for name, probe in (("without", without), ("with", with_gc)):
        print(
            f"  {name:7s} gradient checkpointing: step peak above baseline {probe['step_peak_mb']:7.0f} MB "
            f"(of which parameter gradients {probe['gradient_mb']:.0f} MB), process peak "
            f"{probe['process_peak_mb']:7.0f} MB, "
            f"{probe['step_seconds']:.1f} s/step"
        )
    activations = [p["step_peak_mb"] - p["gradient_mb"] for p in (without, with_gc)]
    print(
        f"ratio with / without: step peak {with_gc['step_peak_mb'] / without['step_peak_mb']:.3f}, "
        f"step peak less gradients (activations + temporaries) {activations[1] / activations[0]:.3f}, "
        f"process peak {with_gc['process_peak_mb'] / without['process_peak_mb']:.3f} (article: 0.67); "
        f"time ratio {with_gc['step_seconds'] / without['step_seconds']:.2f}; load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
