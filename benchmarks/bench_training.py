"""Training speed and memory on the embedded default model (SmolLM2-135M-Instruct).

Prints, each ratio against a baseline measured in this same run:
- tokens/s of deepfeed's training path (`fine_tune`, full fine-tuning, AdamW, cosine)
  and of a plain Hugging Face `Trainer` on the same model, records, tokenization, batch
  size, steps and schedule; ratio deepfeed / Trainer (target >= 1.0);
- peak resident memory of a training run with and without gradient checkpointing (each
  in a fresh process, so one run's peak cannot hide the other's); ratio with / without
  (the article claims -33%, i.e. 0.67).

    .venv/bin/python benchmarks/bench_training.py [--model DIR] [--steps 6] [--batch 4]
        [--length 64] [--memory-batch 4] [--memory-length 256] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def demo_records(limit: int) -> list[dict]:
    from deepfeed.core.demo_corpus import ensure_demo_corpus
    from deepfeed.core.ingest import ingest_folder
    from deepfeed.settings import demo_corpus_dir

    records = [r for r in ingest_folder(ensure_demo_corpus(demo_corpus_dir())).records if r.get("kind") == "pair" and r.get("lang") == "en"]
    return records[:limit]


def deepfeed_run(model: Path, records, args) -> dict:
    from deepfeed.core.training import TrainingConfig, fine_tune

    config = TrainingConfig(method="full", max_steps=args.steps, batch_size=args.batch, max_length=args.length,
                            learning_rate=2e-5, warmup_steps=1, precision="fp32")
    with tempfile.TemporaryDirectory() as out:
        result = fine_tune(model, records, Path(out) / "ckpt", config)
    return {"tokens": result.tokens, "seconds": result.seconds, "tokens_per_second": result.tokens_per_second, "final_loss": result.losses[-1]}


def trainer_run(model_dir: Path, records, args) -> dict:
    """A plain HF Trainer: the same batches in the same order, AdamW and cosine schedule."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    from deepfeed.core.modeling import collate, encode_record, load_model, load_tokenizer
    from deepfeed.core.training import BatchSampler

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    examples = [encode_record(tokenizer, r, args.length) for r in records]
    examples = [e for e in examples if any(label != -100 for label in e.labels)]
    # deepfeed's batch order (seed 0), laid out flat for a sequential sampler, so both
    # paths train on exactly the same batches and pay for the same padding.
    sampler = BatchSampler([len(e.input_ids) for e in examples], args.batch, seed=0)
    examples = [examples[i] for _ in range(args.steps) for i in sampler.next()]

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *unused):
            return SequentialSampler(self.train_dataset)
    batch_tokens: list[int] = []

    def collator(batch):
        out = collate(batch, tokenizer.pad_token_id)
        batch_tokens.append(int(out["attention_mask"].sum()))
        return out

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=2e-5,
            warmup_steps=1, lr_scheduler_type="cosine", optim="adamw_torch", max_grad_norm=1.0, weight_decay=0.0,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=0,
        )
        trainer = SameOrderTrainer(model=model, args=training_args, train_dataset=examples, data_collator=collator)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    # accelerate's data loader fetches one batch ahead: only the first `steps` were trained on.
    tokens = sum(batch_tokens[: args.steps])
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "final_loss": output.training_loss}


def memory_probe(model: Path, records, args, checkpointing: bool) -> None:
    """Runs in its own process; prints the process's peak RSS as JSON."""
    from deepfeed.core.training import TrainingConfig, fine_tune

    config = TrainingConfig(method="full", max_steps=2, batch_size=args.memory_batch, max_length=args.memory_length,
                            gradient_checkpointing=checkpointing, packing=True, warmup_steps=0, precision="fp32")
    with tempfile.TemporaryDirectory() as out:
        result = fine_tune(model, records, Path(out) / "ckpt", config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "seconds": result.seconds, "tokens": result.tokens}))


def probe_in_subprocess(args, checkpointing: bool) -> dict:
    command = [sys.executable, __file__, "--probe", "on" if checkpointing else "off", "--model", str(args.model),
               "--memory-batch", str(args.memory_batch), "--memory-length", str(args.memory_length), "--records", str(args.records)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="HF checkpoint folder (default: SmolLM2-135M-Instruct from the offline cache)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=4)
    parser.add_argument("--memory-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-memory", action="store_true", help="only the tokens/s comparison")
    parser.add_argument("--probe", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model:
        from deepfeed.core.offline import ensure_smollm2

        args.model = ensure_smollm2()
    args.model = Path(args.model)
    records = demo_records(args.records)
    if args.probe:
        memory_probe(args.model, records, args, args.probe == "on")
        return

    print(f"model {args.model.name}; {len(records)} records; batch {args.batch} x {args.length} tokens; {args.steps} steps; "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} threads")
    hf = trainer_run(args.model, records, args)
    ours = deepfeed_run(args.model, records, args)
    print(f"HF Trainer : {hf['tokens_per_second']:8.1f} tokens/s ({hf['tokens']} tokens in {hf['seconds']:.1f} s, loss {hf['final_loss']:.3f})")
    print(f"deepfeed   : {ours['tokens_per_second']:8.1f} tokens/s ({ours['tokens']} tokens in {ours['seconds']:.1f} s, loss {ours['final_loss']:.3f})")
    print(f"ratio deepfeed / Trainer tokens/s: {ours['tokens_per_second'] / hf['tokens_per_second']:.3f}  (target >= 1.0)")

    if args.skip_memory:
        return
    without = probe_in_subprocess(args, checkpointing=False)
    with_gc = probe_in_subprocess(args, checkpointing=True)
    print(f"peak RSS, batch {args.memory_batch} x {args.memory_length} packed tokens, 2 full steps: "
          f"without gradient checkpointing {without['peak_rss_mb']:.0f} MB ({without['seconds']:.1f} s), "
          f"with {with_gc['peak_rss_mb']:.0f} MB ({with_gc['seconds']:.1f} s)")
    print(f"ratio with / without gradient checkpointing peak RSS: {with_gc['peak_rss_mb'] / without['peak_rss_mb']:.3f}  "
          f"(article: 0.67); time ratio {with_gc['seconds'] / without['seconds']:.2f}")


if __name__ == "__main__":
    main()
