"""Does feeding data help? Base model vs full retrain vs an incremental round (with and
without EWC), on held-out data of a new domain and on held-out old data.

The data is the demo corpus (chatterbot dialogs) through the real ingest and cleaning
code. One topic (`--new-domain`, default trivia) plays the company's new data; the other
topics are the old data the champion was trained on. Each side keeps `--eval-records`
records out of every training run. Models, all trained with core/training.fine_tune:

- base      : the base model as shipped;
- champion  : base fine-tuned on the old data (the model serving before the new data);
- full      : base fine-tuned on old + new data (the monthly full retrain);
- incr      : champion + one incremental round on the new data with replay of old data
              (core/incremental.plan_replay, elastic learning rate), EWC off;
- incr+ewc  : the same round with the EWC penalty towards the champion (core/ewc.py).

Printed per model: held-out perplexity and token F1 of greedy answers on the new domain,
each with the paired difference against the base model and its 95% bootstrap interval,
and old-data perplexity with the forgetting ratio against the champion (ppl / ppl of the
champion - 1, paired bootstrap interval; goal <= 5% after an incremental round with EWC).

    .venv/bin/python benchmarks/learning_outcome.py [--model DIR] [--steps 30] [--incr-steps 10]
        [--eval-records 48] [--generate 24] [--json out.json]
    .venv/bin/python benchmarks/learning_outcome.py --tiny     # a tiny random model: checks the wiring
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("base", "champion", "full", "incr", "incr+ewc")


def demo_records(folder: Path, langs: set[str]) -> list[dict[str, Any]]:
    """The demo corpus as the pipeline cleans it (train and eval splits alike: the
    benchmark makes its own domain split below)."""
    from deepfeed.core.data.cleaning import CleaningConfig, clean_records
    from deepfeed.core.data.demo_corpus import write_demo_corpus
    from deepfeed.core.data.ingest import ingest_folder

    write_demo_corpus(folder)
    cleaned = clean_records(ingest_folder(folder).records, CleaningConfig())
    return [r for r in cleaned.records if r.get("kind") == "pair" and r.get("lang") in langs]


def split_domains(records: list[dict[str, Any]], new_domain: str, eval_records: int, seed: int) -> dict[str, list]:
    new = [r for r in records if new_domain in (r.get("tags") or [])]
    old = [r for r in records if new_domain not in (r.get("tags") or [])]
    if len(new) <= eval_records or len(old) <= eval_records:
        raise SystemExit(
            f"domain '{new_domain}' has {len(new)} records and the rest {len(old)}: "
            f"both need more than --eval-records={eval_records}"
        )
    out = {}
    for name, part in (("new", new), ("old", old)):
        part = sorted(part, key=lambda r: r["record_id"])
        random.Random(seed).shuffle(part)
        out[f"{name}_eval"], out[f"{name}_train"] = part[:eval_records], part[eval_records:]
    return out


def train_all(base: Path, data: dict[str, list], work: Path, args) -> tuple[dict[str, Path], dict[str, Any]]:
    from deepfeed.core.evaluate.learning_outcome import loss_windows
    from deepfeed.core.train.incremental import plan_replay
    from deepfeed.core.train.training import TrainingConfig, fine_tune

    # The demo's fine-tune settings (cli.DEMO_SIZES) for the champion and the full retrain;
    # the incremental asset's defaults (full fine-tuning at 3e-5, elastic, EWC 1e4) for the rounds.
    retrain = TrainingConfig(
        method="lora",
        max_steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=3,
        max_length=args.max_length,
        seed=args.seed,
    )
    incremental = TrainingConfig(
        method="full",
        max_steps=args.incr_steps,
        batch_size=args.batch,
        learning_rate=3e-5,
        warmup_steps=0,
        max_length=args.max_length,
        seed=args.seed,
        elastic=True,
        eval_every=5,
        eval_samples=16,
        fisher_samples=args.fisher_samples,
    )
    plan = plan_replay(data["new_train"], data["old_train"], replay_ratio=0.5, eval_samples=16, seed=args.seed)
    paths, training = {"base": base}, {}

    def run(name: str, start: Path, records, config, **kwargs):
        started = time.perf_counter()
        folder = work / name.replace("+", "_")  # transformers warns about a '+' in a checkpoint folder's name
        result = fine_tune(start, records, folder, config, **kwargs)
        windows = loss_windows(result.losses)
        seconds = round(time.perf_counter() - started, 1)
        training[name] = {
            "records": len(records),
            "steps": len(result.losses),
            "seconds": seconds,
            "loss_first": windows.first,
            "loss_last": windows.last,
            "window": windows.window,
        }
        print(
            f"  trained {name:<9} {len(records)} records, {len(result.losses)} steps: loss "
            f"{windows.first:.3f} -> {windows.last:.3f} (first/last {windows.window}), {seconds} s",
            flush=True,
        )
        paths[name] = folder

    run("champion", base, data["old_train"], retrain)
    run("full", base, data["old_train"] + data["new_train"], retrain)
    run("incr", paths["champion"], plan.train, replace(incremental, ewc_lambda=0.0), eval_records=plan.replay_eval)
    run(
        "incr+ewc",
        paths["champion"],
        plan.train,
        replace(incremental, ewc_lambda=args.ewc_lambda),
        eval_records=plan.replay_eval,
        ewc_records=data["old_train"],
    )
    return paths, training


def score_all(paths: dict[str, Path], data: dict[str, list], args) -> dict[str, dict[str, Any]]:
    import numpy as np
    import torch

    from deepfeed.core.evaluate.evaluation import EvaluationConfig, generate_torch, generation_records
    from deepfeed.core.evaluate.learning_outcome import record_losses
    from deepfeed.core.evaluate.textmetrics import token_prf
    from deepfeed.core.train.modeling import load_model, load_tokenizer

    prompts, _ = generation_records(data["new_eval"], args.generate)
    config = EvaluationConfig(max_length=args.max_length, max_new_tokens=args.max_new_tokens)
    scores = {}
    for name in MODELS:
        started = time.perf_counter()
        tokenizer, model = load_tokenizer(paths[name]), load_model(paths[name]).eval()
        with torch.no_grad():
            answers = generate_torch(model, tokenizer, [r["prompt"] for r in prompts], config).answers
        scores[name] = {
            "new": record_losses(model, tokenizer, data["new_eval"], args.max_length),
            "old": record_losses(model, tokenizer, data["old_eval"], args.max_length),
            "f1": np.array([token_prf(a, r["response"], r.get("lang"))[2] for a, r in zip(answers, prompts)]),
        }
        print(f"  scored  {name:<9} {time.perf_counter() - started:.0f} s", flush=True)
        del model
    return scores


def outcome_table(scores: dict[str, dict[str, Any]], samples: int = 2000) -> tuple[list[dict[str, Any]], str]:
    from deepfeed.core.evaluate.learning_outcome import paired_difference, perplexity_ratio

    rows, lines = (
        [],
        [
            "| model | new-domain ppl | vs base [95% CI] | new-domain token F1 | vs base [95% CI] "
            "| old-data ppl | vs champion [95% CI] |",
            "|---|---|---|---|---|---|---|",
        ],
    )
    base, champion = scores["base"], scores["champion"]
    for name in MODELS:
        s = scores[name]
        ppl = perplexity_ratio(base["new"], s["new"], samples)
        f1 = paired_difference(base["f1"], s["f1"], samples)
        forgetting = perplexity_ratio(champion["old"], s["old"], samples)
        row = {
            "model": name,
            "new_ppl": s["new"].perplexity,
            "new_ppl_vs_base": ppl,
            "new_f1": f1.candidate,
            "new_f1_vs_base": (f1.difference, f1.low, f1.high),
            "old_ppl": s["old"].perplexity,
            "old_ppl_vs_champion": forgetting,
        }
        rows.append(row)
        lines.append(
            f"| {name} | {s['new'].perplexity:.2f} | {_rel(ppl)} | {f1.candidate:.3f} | "
            f"{f1.difference:+.3f} [{f1.low:+.3f}, {f1.high:+.3f}] | {s['old'].perplexity:.2f} | "
            f"{_rel(forgetting)} |"
        )
    return rows, "\n".join(lines)


def _rel(change: tuple[float, float, float]) -> str:
    return f"{change[0]:+.1%} [{change[1]:+.1%}, {change[2]:+.1%}]"


def tiny_base(folder: Path, records: list[dict[str, Any]]) -> Path:
    from deepfeed.tools.tiny_models import build_tiny_checkpoint

    texts = [f"{r['prompt']} {r['response']}" for r in records[:400]]
    return build_tiny_checkpoint(folder, texts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="base checkpoint folder (default: the embedded SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and minimal sizes: checks the wiring")
    parser.add_argument("--new-domain", default="trivia", help="topic tag that plays the new data")
    parser.add_argument("--langs", default="en", help="comma-separated languages of the corpus to use")
    parser.add_argument("--eval-records", type=int, default=48, help="held-out records per side")
    parser.add_argument("--generate", type=int, default=24, help="new-domain held-out prompts answered for token F1")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="steps of the champion and the full retrain")
    parser.add_argument("--incr-steps", type=int, default=10, help="steps of each incremental round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the LoRA retrains")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--ewc-lambda", type=float, default=1e4)
    parser.add_argument("--fisher-samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--workdir", default="", help="keep the trained checkpoints here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.eval_records, args.generate, args.steps, args.incr_steps = 12, 6, 4, 3
        args.batch, args.max_length, args.max_new_tokens, args.fisher_samples = 4, 64, 8, 4

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="learning_outcome_") as tmp:
        work = Path(args.workdir or tmp)
        records = demo_records(work / "corpus", set(args.langs.split(",")))
        data = split_domains(records, args.new_domain, args.eval_records, args.seed)
        if args.tiny:
            base = tiny_base(work / "tiny_base", data["old_train"] + data["new_train"])
        else:
            from deepfeed.core.platform.home import ensure_smollm2

            base = Path(args.model) if args.model else ensure_smollm2()
        print(
            f"base {base}; new domain '{args.new_domain}': "
            f"{len(data['new_train'])} train / {len(data['new_eval'])} held out; "
            f"old: {len(data['old_train'])} train / {len(data['old_eval'])} held out",
            flush=True,
        )
        paths, training = train_all(base, data, work / "models", args)
        scores = score_all(paths, data, args)
    rows, table = outcome_table(scores)
    print("\n" + table)
    ewc = next(r for r in rows if r["model"] == "incr+ewc")["old_ppl_vs_champion"][0]
    print(
        f"\nforgetting after an incremental round with EWC: {ewc:+.1%} old-data perplexity vs the champion "
        f"(goal <= +5%: {'met' if ewc <= 0.05 else 'NOT met'}); total {time.perf_counter() - started:.0f} s"
    )
    result = {"args": vars(args), "training": training, "rows": rows, "table": table, "forgetting_ewc": ewc}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
