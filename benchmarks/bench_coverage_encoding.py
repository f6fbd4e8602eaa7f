"""clean_corpus with its opt-in coverage embeddings against embeddings off (the default).

    PYTHONPATH=$PWD python benchmarks/bench_coverage_encoding.py --records 3000

Runs clean_pipeline.clean_sources, what the clean_corpus asset runs, on a generated corpus
(benchmarks/bench_cleaning.generate: mixed zh/en, duplicates, noise, PII) three ways, each
in a fresh process: embeddings off; the previous encoder (fixed-order batches of 64 in
fp32, kept here as `PreviousMiniLM` for the comparison); and the default
coverage.MiniLMEncoder (what `coverage_embeddings: true` uses). Prints records/s, including
loading the encoder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class PreviousMiniLM:
    """The encoder clean_corpus used before: batches in input order, fp32, torch's threads."""

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        from deepfeed.core.data.coverage import minilm_path

        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.model = AutoModel.from_pretrained(minilm_path()).eval()

    def encode(self, texts, batch_size: int = 64):
        import numpy as np
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)


def run(mode: str, path: Path) -> dict:
    from deepfeed.core.data.clean_pipeline import AuditSpool, clean_sources
    from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner
    from deepfeed.core.data.coverage import MiniLMEncoder

    started = time.perf_counter()
    encoder = {"off": lambda: None, "previous": PreviousMiniLM, "default": MiniLMEncoder}[mode]()
    out = path.parent / f"{path.stem}.{mode}"
    spool = AuditSpool(path.parent / f"{path.stem}.{mode}.audit.jsonl")
    summary = clean_sources(
        [path],
        out,
        CorpusCleaner(CleaningConfig(), run_id="bench"),
        audit_spool=spool,
        dp_epsilon=0.5,
        workers=1,
        encoder=encoder,
    )
    spool.discard()
    return {"seconds": time.perf_counter() - started, "kept": summary.cleaned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--modes", default="off,previous,default")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], Path(args.child[1]))))
        return
    from bench_cleaning import generate

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.parquet"
        generate(args.records, path)
        for mode in args.modes.split(","):
            command = [sys.executable, __file__, "--child", mode, str(path)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rate = args.records / result["seconds"]
            print(
                f"embeddings {mode:<9}: {result['seconds']:6.1f} s  {rate:8,.0f} records/s (kept {result['kept']:,})",
                flush=True,
            )


if __name__ == "__main__":
    main()
