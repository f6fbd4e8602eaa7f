"""Compression on the embedded default model (SmolLM2-135M-Instruct), measured in one run.

Prints, with every ratio against fp32 torch measured in this same run:
- file size: fp32 checkpoint / torch int8, ONNX fp32 / ONNX int8 (target >= 3.5x);
- load time of each artifact;
- latency of one forward pass over a prompt;
- greedy generation tokens/s, batch 1, KV cache everywhere: torch fp32 `generate`,
  torch int8 `generate`, ONNX Runtime fp32 and int8 with the decoder-with-past graph
  (target >= 2.3x for the best int8 path over fp32 torch), plus ORT int8 without the
  cache (whole prefix recomputed each step) to show what the cache buys;
- perplexity of every artifact on the demo corpus' held-out split against the fp32
  (unpruned) checkpoint, through the same gate the pipeline runs (budget +3%).

    .venv/bin/python benchmarks/bench_compression.py [--work /tmp/deepfeed-compression-bench]
        [--threads 2] [--new-tokens 32] [--repeat 3] [--records 48] [--no-quality] [--no-speed]

Artifacts are built once into --work (delete it to rebuild).

`--int8-table` instead measures the served-int8 decision side by side: torch fp32, torch
weight-only int8 (the torch_int8 artifact), torch dynamic int8 (quantize_dynamic of the
Linear layers, per-channel int8 weights), ORT fp32 and int8 with the KV cache (the cache
kept in ONNX Runtime's own values between steps, as served), at batch 1 and `--batch`;
each cell prints its median with the min-max spread over `--repeat` rounds. Each engine
is timed in a fresh process of its own, as it is served: in one process, torch's OpenMP
worker threads wait actively after torch work and take a core from ONNX Runtime's two
threads (ORT int8 at batch 8 on two threads: about 225 tokens/s alone, 165 after a torch
`generate` in the same process, 230 with OMP_WAIT_POLICY=PASSIVE; docs/training-tiers.md).
`--same-process` times them all in this process instead, taking turns round by round.
Perplexity ratios against fp32 on `--records` held-out records come from the same run.
`--keep 0.85,0.95` adds the perplexity of pruning alone at each keep fraction.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPT = "Explain in two sentences why local deployment keeps enterprise data on site."


def held_out_records(limit: int) -> list[dict]:
    from deepfeed.core.data.cleaning import CleaningConfig, clean_records
    from deepfeed.core.data.demo_corpus import ensure_demo_corpus
    from deepfeed.core.data.ingest import ingest_folder
    from deepfeed.settings import demo_corpus_dir

    records = clean_records(ingest_folder(ensure_demo_corpus(demo_corpus_dir())).records, CleaningConfig()).records
    held_out = [r for r in records if r["split"] == "eval"]
    step = max(1, len(held_out) // limit)
    return held_out[::step][:limit]


def torch_greedy(model, ids, n_new: int, pad_token_id: int, attention_mask=None):
    """Exactly ``n_new`` greedy tokens with the KV cache, as every torch row is timed."""
    import torch

    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_token_id,
        )


def timed(fn, repeat: int = 1):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def build(checkpoint: Path, work: Path):
    import json

    from deepfeed.core.compress.compression import CompressionConfig, compress_checkpoint, write_json

    summary_file = work / "compression.json"
    if summary_file.exists():
        return json.loads(summary_file.read_text()), 0.0
    seconds, summary = timed(lambda: compress_checkpoint(checkpoint, work, CompressionConfig(), log=print))
    write_json(summary_file, summary)
    return summary, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/deepfeed-compression-bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per measurement (median)")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="only sizes and quality")
    parser.add_argument("--int8-table", action="store_true", help="only the side-by-side int8 decision table")
    parser.add_argument("--batch", type=int, default=8, help="batched rows for --int8-table")
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="--int8-table: time every engine in this one process (torch's OpenMP threads then slow ORT)",
    )
    parser.add_argument("--keep", default="", help="comma-separated keep fractions to measure pruning alone")
    args = parser.parse_args()
    if args.int8_table:
        return int8_table(args)

    import numpy as np
    import torch

    from deepfeed.core.compress.compression import file_size_mb, load_int8_torch
    from deepfeed.core.compress.onnx_graph import onnx_session
    from deepfeed.core.compress.onnx_kv import onnx_greedy_generate
    from deepfeed.core.platform.home import ensure_smollm2
    from deepfeed.core.train.modeling import load_model, load_tokenizer, prompt_ids

    torch.set_num_threads(args.threads)
    checkpoint = ensure_smollm2()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary, build_seconds = build(checkpoint, work)
    if summary["errors"]:
        print("not built:", summary["errors"])
    print(f"build: {build_seconds:.1f} s (0 = reused {work})")

    sizes = {
        "torch fp32 checkpoint": file_size_mb(checkpoint, suffix=".safetensors"),
        "torch int8": file_size_mb(work / "torch_int8" / "model_int8.pt"),
        "ORT fp32 (logits)": file_size_mb(work / "onnx" / "model.onnx"),
        "ORT int8 (logits)": file_size_mb(work / "onnx" / "model_int8.onnx"),
        "ORT fp32 (KV)": file_size_mb(work / "onnx" / "decoder_with_past.onnx"),
        "ORT int8 (KV)": file_size_mb(work / "onnx" / "decoder_with_past_int8.onnx"),
    }
    print("\n## size")
    for name, mb in sizes.items():
        print(f"  {name:24s} {mb:9.1f} MB")
    print(
        f"  ratio torch fp32 / torch int8: {sizes['torch fp32 checkpoint'] / sizes['torch int8']:.2f}x  "
        f"(target >= 3.5x)"
    )
    print(f"  ratio ORT fp32 / ORT int8 (logits graph): {sizes['ORT fp32 (logits)'] / sizes['ORT int8 (logits)']:.2f}x")
    print(
        f"  ratio torch fp32 checkpoint / ORT int8 (logits graph): "
        f"{sizes['torch fp32 checkpoint'] / sizes['ORT int8 (logits)']:.2f}x",
        flush=True,
    )

    if not args.no_quality:
        from deepfeed.core.compress.gate import gate_compressed_artifacts

        records = held_out_records(args.records)
        seconds, report = timed(lambda: gate_compressed_artifacts(checkpoint, work, records))
        print(f"\n## quality: perplexity on {len(records)} held-out demo records ({seconds:.0f} s)\n")
        print(report.markdown())
        print(
            f"\n  gate {'PASSED' if report.passed else 'FAILED'}: "
            f"{report.failures() or 'every artifact within budget'}",
            flush=True,
        )
    if args.no_speed:
        return

    tokenizer = load_tokenizer(checkpoint)
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)])
    mask = torch.ones_like(ids)
    n_new = args.new_tokens

    # Load times (best of 2: the first read also warms the page cache for every engine alike).
    loaders = {
        "torch fp32": lambda: load_model(checkpoint).eval(),
        "torch int8": lambda: load_int8_torch(work / "pruned", work / "torch_int8"),
        "ORT fp32": lambda: onnx_session(work / "onnx" / "decoder_with_past.onnx", threads=args.threads),
        "ORT int8": lambda: onnx_session(work / "onnx" / "decoder_with_past_int8.onnx", threads=args.threads),
        "ORT int8 no-cache": lambda: onnx_session(work / "onnx" / "model_int8.onnx", threads=args.threads),
    }
    engines, load_seconds = {}, {}
    for name, load in loaders.items():
        timed(load)  # warm the page cache
        load_seconds[name], engines[name] = timed(load)
        print(f"loaded {name}: {load_seconds[name]:.2f} s", flush=True)

    def torch_forward(model):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def torch_generate(model):
        out = torch_greedy(model, ids, n_new, tokenizer.pad_token_id, mask)
        return out[0, ids.shape[1] :].tolist()

    def ort_forward(session):
        from deepfeed.core.compress.onnx_kv import layout_from_session

        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        if any(i.name.startswith("past_key_values") for i in session.get_inputs()):
            layout = layout_from_session(session)
            feeds |= layout.empty(1) | layout.logits_switch()
        return session.run(["logits"], feeds)[0]

    def ort_generate(session):
        return onnx_greedy_generate(session, ids.numpy(), mask.numpy(), n_new)[0].tolist()

    def ort_generate_no_cache(session):
        sequence = ids.numpy()
        for _ in range(n_new):
            logits = session.run(["logits"], {"input_ids": sequence, "attention_mask": np.ones_like(sequence)})[0]
            sequence = np.concatenate([sequence, logits[:, -1:].argmax(-1)], axis=1)
        return sequence[0, ids.shape[1] :].tolist()

    forward = {
        "torch fp32": torch_forward,
        "torch int8": torch_forward,
        "ORT fp32": ort_forward,
        "ORT int8": ort_forward,
        "ORT int8 no-cache": ort_forward,
    }
    generate = {
        "torch fp32": torch_generate,
        "torch int8": torch_generate,
        "ORT fp32": ort_generate,
        "ORT int8": ort_generate,
        "ORT int8 no-cache": ort_generate_no_cache,
    }
    forward_seconds, generate_seconds, tokens = {}, {}, {}
    for name, engine in engines.items():
        forward[name](engine)  # warm-up
        forward_seconds[name], _ = timed(lambda name=name, engine=engine: forward[name](engine), repeat=args.repeat)
        generate_seconds[name], tokens[name] = timed(
            lambda name=name, engine=engine: generate[name](engine), repeat=args.repeat
        )
        print(
            f"measured {name}: forward {forward_seconds[name] * 1e3:.0f} ms, "
            f"{n_new / generate_seconds[name]:.1f} tokens/s",
            flush=True,
        )

    print(f"\nSmolLM2-135M, {args.threads} threads, prompt {ids.shape[1]} tokens, {n_new} new tokens, batch 1")
    base_forward, base_generate = forward_seconds["torch fp32"], generate_seconds["torch fp32"]
    print("\n## speed (median; ratios against torch fp32 in this run)")
    print(
        f"  {'engine':20s} {'load s':>8s} {'forward ms':>11s} {'x':>6s} {'tokens/s':>9s} {'x':>6s}  same "
        f"tokens as torch fp32 (unpruned: the others run the pruned model)"
    )
    for name in engines:
        tps = n_new / generate_seconds[name]
        print(
            f"  {name:20s} {load_seconds[name]:8.2f} {forward_seconds[name] * 1e3:11.1f} "
            f"{base_forward / forward_seconds[name]:5.2f}x "
            f"{tps:9.1f} {base_generate / generate_seconds[name]:5.2f}x  {tokens[name] == tokens['torch fp32']}"
        )
    int8_paths = [n for n in engines if "int8" in n]
    best = max(int8_paths, key=lambda n: base_generate / generate_seconds[n])
    print(
        f"\n  best int8 generation path: {best}, {base_generate / generate_seconds[best]:.2f}x torch fp32 "
        f"(target >= 2.3x)"
    )
    print(
        f"  KV cache: ORT int8 {generate_seconds['ORT int8 no-cache'] / generate_seconds['ORT int8']:.2f}x "
        f"faster than recomputing the prefix"
    )


# The KV graphs compressed_model writes (the GenAI builder's for Llama/Qwen2 checkpoints),
# and the int8 graph torch's exporter writes from the same pruned model: the served path
# before the builder, timed beside it.
ORT_ENGINES = {
    "ORT fp32 KV": "decoder_with_past.onnx",
    "ORT int8 KV (served)": "decoder_with_past_int8.onnx",
    "ORT int8 KV, torch export": "torch_export_int8.onnx",
}


def build_torch_export_twin(work: Path) -> None:
    from deepfeed.core.compress.onnx_int8 import quantize_onnx_weight_only
    from deepfeed.core.compress.onnx_kv import export_decoder_with_past
    from deepfeed.core.train.modeling import load_model

    target = work / "onnx" / ORT_ENGINES["ORT int8 KV, torch export"]
    if target.exists():
        return
    export_decoder_with_past(load_model(work / "pruned").eval(), work / "onnx" / "torch_export.onnx", 17)
    quantize_onnx_weight_only(work / "onnx" / "torch_export.onnx", target)


def int8_table(args) -> None:
    """tokens/s of every int8 candidate next to fp32, batch 1 and batched, and its
    perplexity ratio, all from this one run."""
    import copy

    import numpy as np
    import torch

    from deepfeed.core.compress.compression import (
        CompressionConfig,
        load_int8_torch,
        prune_model,
        quantize_int8,
    )
    from deepfeed.core.compress.onnx_graph import onnx_session
    from deepfeed.core.compress.onnx_kv import onnx_greedy_generate, onnx_kv_logits
    from deepfeed.core.evaluate.evaluation import EvaluationConfig, perplexity, torch_logits
    from deepfeed.core.platform.home import ensure_smollm2
    from deepfeed.core.train.modeling import load_model, load_tokenizer, prompt_ids

    torch.set_num_threads(args.threads)
    checkpoint = ensure_smollm2()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary, _ = build(checkpoint, work)
    tokenizer = load_tokenizer(checkpoint)
    fp32 = load_model(checkpoint).eval()
    pruned = load_model(work / "pruned").eval()
    dynamic = quantize_int8(pruned, CompressionConfig(quantization="dynamic", quantize_per_channel=True))
    build_torch_export_twin(work)
    sessions = {name: onnx_session(work / "onnx" / file, threads=args.threads) for name, file in ORT_ENGINES.items()}
    torch_models = {
        "torch fp32": fp32,
        "torch int8 weight-only": load_int8_torch(work / "pruned", work / "torch_int8"),
        "torch int8 dynamic": dynamic,
    }
    del pruned

    prompt = prompt_ids(tokenizer, PROMPT)
    n_new = args.new_tokens

    pad = tokenizer.pad_token_id
    engines = {name: (lambda ids, m=m: torch_greedy(m, ids, n_new, pad)) for name, m in torch_models.items()}
    for name in ORT_ENGINES:
        engines[name] = lambda ids, s=sessions[name]: onnx_greedy_generate(
            s, ids.numpy(), np.ones_like(ids.numpy()), n_new
        )

    speed: dict[tuple[str, int], list[float]] = {}
    if args.same_process:
        for batch in (1, args.batch):
            ids = torch.tensor([prompt] * batch)
            for run in engines.values():
                run(ids)  # warm-up
            for _ in range(args.repeat):
                for name, run in engines.items():
                    seconds, _ = timed(lambda run=run, ids=ids: run(ids))
                    speed.setdefault((name, batch), []).append(batch * n_new / seconds)
            print(f"batch {batch} measured", flush=True)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        for name in engines:
            # A fresh process per engine: nothing else has run in it (see the module docstring).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rates = pool.submit(
                    time_engine, name, str(work), args.threads, prompt, n_new, (1, args.batch), args.repeat
                ).result()
            for batch, values in rates.items():
                speed[(name, batch)] = values
            print(f"{name} measured in its own process", flush=True)

    records = held_out_records(args.records)
    config = EvaluationConfig()
    logits = {name: torch_logits(m) for name, m in torch_models.items()}
    logits |= {name: onnx_kv_logits(s) for name, s in sessions.items()}
    ppl = {name: perplexity(fn, tokenizer, records, config)["perplexity"] for name, fn in logits.items()}

    where = "all engines in one process" if args.same_process else "each engine in its own process"
    print(
        f"\nSmolLM2-135M, {args.threads} threads, prompt {len(prompt)} tokens, {n_new} new tokens, "
        f"{args.repeat} rounds, {where}; perplexity on {len(records)} held-out records; int8 rows run the pruned "
        f"(keep {summary['config']['keep_fraction']}) model"
    )
    print(
        f"\n| engine | tokens/s batch 1 (min-max) | x fp32 | tokens/s batch {args.batch} (min-max) | x fp32 "
        "| perplexity | x fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in engines:
        cells = []
        for batch in (1, args.batch):
            values = speed[(name, batch)]
            base = statistics.median(speed[("torch fp32", batch)])
            cells.append(
                f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) | "
                f"{statistics.median(values) / base:.2f}x"
            )
        print(f"| {name} | {' | '.join(cells)} | {ppl[name]:.3f} | {ppl[name] / ppl['torch fp32']:.3f} |")

    for keep in [float(k) for k in args.keep.split(",") if k.strip()]:
        model = copy.deepcopy(fp32)
        prune_model(model, CompressionConfig(keep_fraction=keep))
        value = perplexity(torch_logits(model), tokenizer, records, config)["perplexity"]
        print(f"pruning alone, keep {keep:.2f}: perplexity {value:.3f}, x{value / ppl['torch fp32']:.3f} fp32")


def time_engine(
    name: str, work: str, threads: int, prompt: list[int], n_new: int, batches: tuple[int, ...], repeat: int
) -> dict[int, list[float]]:
    """tokens/s of one engine over ``repeat`` rounds per batch size, loaded as it is served
    (run in a fresh process: an ONNX Runtime engine does no torch work at all)."""
    import numpy as np
    import torch

    from deepfeed.core.platform.home import ensure_smollm2

    torch.set_num_threads(threads)
    work_dir = Path(work)
    if name.startswith("ORT"):
        from deepfeed.core.compress.onnx_graph import onnx_session
        from deepfeed.core.compress.onnx_kv import onnx_greedy_generate

        session = onnx_session(work_dir / "onnx" / ORT_ENGINES[name], threads=threads)

        def run(rows):
            ids = np.array(rows, dtype=np.int64)
            onnx_greedy_generate(session, ids, np.ones_like(ids), n_new)

    else:
        from deepfeed.core.compress.compression import CompressionConfig, load_int8_torch, quantize_int8
        from deepfeed.core.train.modeling import load_model, load_tokenizer

        checkpoint = ensure_smollm2()
        pad = load_tokenizer(checkpoint).pad_token_id
        if name == "torch fp32":
            model = load_model(checkpoint).eval()
        elif name == "torch int8 weight-only":
            model = load_int8_torch(work_dir / "pruned", work_dir / "torch_int8")
        else:
            model = quantize_int8(
                load_model(work_dir / "pruned").eval(),
                CompressionConfig(quantization="dynamic", quantize_per_channel=True),
            )

        def run(rows):
            torch_greedy(model, torch.tensor(rows), n_new, pad)

    out: dict[int, list[float]] = {}
    for batch in batches:
        rows = [prompt] * batch
        run(rows)  # warm-up
        out[batch] = [batch * n_new / timed(lambda rows=rows: run(rows))[0] for _ in range(repeat)]
    return out


if __name__ == "__main__":
    main()
