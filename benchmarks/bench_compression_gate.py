"""The compression gate before and after its speed-ups, on the same input in one run.

Runs `gate_compressed_artifacts` over the same compressed SmolLM2 artifacts and held-out
records once per `answers_by` mode in --order, the modes taking turns --rounds times (the
machine is shared: interleaving spreads other jobs' load over both arms):
"reference" (logits-only ONNX graphs check the fp32 checkpoint's answers as drafts),
"twin" (they check the answers of their KV-cache twin, exported from the same weights)
and "redraft" (the default: twin drafts, and where the graph chooses otherwise the twin
drafts the rest from the graph's own prefix, checked again in one pass). Prints where
the time goes (fp32 reference, each artifact: load / perplexity / answers) and fails
unless every mode reaches the same verdict for every artifact and for the gate.

    .venv/bin/python benchmarks/bench_compression_gate.py [--work /tmp/deepfeed-compression-bench]
        [--keep 0.85] [--records 48] [--answers 24] [--threads 2] [--order twin,redraft] [--rounds 1]

Artifacts are built into --work with keep fraction --keep (reused when compression.json exists).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/deepfeed-compression-bench")
    parser.add_argument("--keep", type=float, default=0.85, help="keep fraction of a fresh build")
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--answers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--order", default="twin,redraft", help="answers_by modes, in turn; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=1, help="times each mode runs, taking turns")
    args = parser.parse_args()

    import json

    import torch
    from bench_compression import held_out_records

    from deepfeed.core.compress.compression import CompressionConfig, compress_checkpoint, write_json
    from deepfeed.core.compress.gate import gate_compressed_artifacts
    from deepfeed.core.platform.home import ensure_smollm2

    torch.set_num_threads(args.threads)
    checkpoint = ensure_smollm2()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "compression.json").exists():
        write_json(
            work / "compression.json",
            compress_checkpoint(checkpoint, work, CompressionConfig(keep_fraction=args.keep), log=print),
        )
    keep = json.loads((work / "compression.json").read_text())["config"]["keep_fraction"]
    records = held_out_records(args.records)
    modes = args.order.split(",")
    reports, seconds = {}, {m: [] for m in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            started = time.perf_counter()
            report = gate_compressed_artifacts(checkpoint, work, records, max_answers=args.answers, answers_by=mode)
            seconds[mode].append(time.perf_counter() - started)
            reports.setdefault(mode, report)
            print(
                f"\n## round {round_ + 1}, answers_by={mode}: {seconds[mode][-1]:.1f} s "
                f"(fp32 reference {report.reference_seconds:.1f} s)"
            )
            for a in report.artifacts:
                stages = ", ".join(f"{k} {v:.1f}" for k, v in a.stage_seconds.items())
                print(
                    f"  {a.name:14s} {a.seconds:7.1f} s ({stages})  passed={a.passed}  ppl {a.perplexity:.4f}  "
                    f"F1 change {a.f1_relative_change}  same answers {a.identical_answers}/{report.answered}"
                )
    base = modes[0]
    print(f"\nkeep {keep}, {len(records)} records, {reports[base].answered} answers, {args.threads} threads")
    for mode in modes:
        best = min(seconds[mode])
        print(
            f"  {mode:9s} gate {best:6.1f} s (best of {len(seconds[mode])}: {[round(x, 1) for x in seconds[mode]]}), "
            f"{min(seconds[base]) / best:.2f}x {base}"
        )
    verdicts = {m: ([(a.name, a.passed) for a in r.artifacts], r.passed) for m, r in reports.items()}
    print("verdicts:", verdicts[base])
    for mode in modes[1:]:
        differing = {
            a.name: (a.identical_answers, b.identical_answers)
            for a, b in zip(reports[base].artifacts, reports[mode].artifacts)
            if a.identical_answers != b.identical_answers
        }
        print(f"answers identical to fp32 ({base}, {mode}) where they differ:", differing or "none")
        if verdicts[mode] != verdicts[base]:
            raise SystemExit(f"verdicts differ: {base} {verdicts[base]} vs {mode} {verdicts[mode]}")
    print("same verdicts in every mode: True")


if __name__ == "__main__":
    main()
