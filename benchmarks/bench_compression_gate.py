"""The compression gate before and after its speed-up, on the same input in one run.

Runs `gate_compressed_artifacts` twice over the same compressed SmolLM2 artifacts and
held-out records: answers_by="reference" (the logits-only ONNX graphs check the fp32
checkpoint's answers as drafts, the gate's former behaviour) and answers_by="twin" (they
check the answers of their KV-cache twin, exported from the same weights). Prints where
the time goes (fp32 reference, each artifact) and whether the two runs reach the same
decision for every artifact.

    .venv/bin/python benchmarks/bench_compression_gate.py [--work /tmp/deepfeed-compression-bench]
        [--records 48] [--answers 24] [--threads 2]

Artifacts are built by bench_compression.py's build into --work (reused when present).
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
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--answers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--order", default="reference,twin", help="which mode runs first (page cache, load)")
    args = parser.parse_args()

    import torch
    from bench_compression import build, held_out_records

    from deepfeed.core.compress.gate import gate_compressed_artifacts
    from deepfeed.core.platform.home import ensure_smollm2

    torch.set_num_threads(args.threads)
    checkpoint = ensure_smollm2()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build(checkpoint, work)
    records = held_out_records(args.records)
    reports, seconds = {}, {}
    for mode in args.order.split(","):
        started = time.perf_counter()
        reports[mode] = gate_compressed_artifacts(checkpoint, work, records, max_answers=args.answers, answers_by=mode)
        seconds[mode] = time.perf_counter() - started
        report = reports[mode]
        print(f"\n## answers_by={mode}: {seconds[mode]:.1f} s (fp32 reference {report.reference_seconds:.1f} s)")
        for a in report.artifacts:
            print(
                f"  {a.name:14s} {a.seconds:7.1f} s  passed={a.passed}  ppl {a.perplexity}  F1 change "
                f"{a.f1_relative_change}  same answers {a.identical_answers}/{report.answered}"
            )
    decode, draft = reports["reference"], reports["twin"]
    same = {a.name: (a.passed, b.passed) for a, b in zip(decode.artifacts, draft.artifacts)}
    print(
        f"\n{len(records)} records, {decode.answered} answers; reference {seconds['reference']:.1f} s, "
        f"twin {seconds['twin']:.1f} s: {seconds['reference'] / seconds['twin']:.2f}x faster"
    )
    print(
        f"artifact time only: reference {sum(a.seconds for a in decode.artifacts):.1f} s, "
        f"twin {sum(a.seconds for a in draft.artifacts):.1f} s"
    )
    print("same decisions:", all(x == y for x, y in same.values()), same, "gate", decode.passed, draft.passed)
    differing = {
        a.name: (a.identical_answers, b.identical_answers)
        for a, b in zip(decode.artifacts, draft.artifacts)
        if a.identical_answers != b.identical_answers
    }
    print("answers identical to fp32 (reference, twin) where they differ:", differing or "none")


if __name__ == "__main__":
    main()
