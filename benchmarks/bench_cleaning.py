"""Cleaning throughput: the streaming, batched pipeline against a pandas `apply` baseline.

    .venv/bin/python benchmarks/bench_cleaning.py                    # 1,000,000 records
    .venv/bin/python benchmarks/bench_cleaning.py --records 20000    # a quick check

A generated corpus of short records (mixed zh/en, with seeded exact and near
duplicates, noise and PII) is written to Parquet. Each measurement runs in a fresh
child process, so its peak RSS is its own:

* pipeline: Arrow record batches streamed from the file through ``clean_stream``
  (the stateless steps in ``--workers`` processes, deduplication in order in the main
  one) and written with a ``ParquetWriter``; N and 2N records for the scaling ratio,
  and N again in one process;
* baseline: the same steps written the straightforward way — the whole file into a
  DataFrame, one ``apply`` per step and record (the same normalize/scrub/glossary/
  language/quality functions called per record), ``drop_duplicates`` for exact
  duplicates and a datasketch ``MinHash`` + ``MinHashLSH`` per record for near
  duplicates. It runs on ``--baseline-records`` (default: min(N, 50,000)) records and is
  compared by records per second, because the full run would take hours on two cores.

* asset path (``--asset-path``): what the clean_corpus asset runs,
  ``clean_pipeline.clean_sources``: the same stream plus the staging file, the audit
  spool (audit entries on, as in the asset), k-anonymity/long-tail/ε-DP between two
  passes and the second pass that writes records.parquet; N and 2N records. Coverage
  embeddings are off (rare tags only): the MiniLM encoder on 1,000,000 records would
  take hours on two cores and measure the encoder, not the streaming.

Printed: records/s, peak RSS, speed-up over the baseline (target >= 5x) and the time
ratio of 2N to N records (target <= 2.2).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EN = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Can you recommend a book about history?",
    "How much water should I drink every day?",
    "Where is the nearest pharmacy open late?",
    "What does this error mean?",
    "The patient has high blood pressure and takes medication daily.",
    "Please send the invoice to the billing team.",
]
ZH = [
    "今天天气怎么样？",
    "高血压患者应该注意什么？",
    "请问最近的药店在哪里？",
    "我的订单什么时候发货？",
    "如何重置我的密码？",
    "糖尿病的饮食需要注意哪些问题？",
    "这个错误是什么意思？",
    "请把发票发给财务部门。",
]
ANSWERS_EN = [
    "Open the settings page and choose reset.",
    "Paris is the capital.",
    "Try a history of science.",
    "About two litres.",
    "The one on Main Street is open until ten.",
    "It means the file could not be found.",
]
ANSWERS_ZH = [
    "今天天气晴朗，适合出门。",
    "注意低盐饮食，按时服药。",
    "前面路口右转就是。",
    "预计明天发货。",
    "在设置页面选择重置。",
]
NOISE = [
    "!!!!!!!!!!!!!!!!!!!!!!!!",
    "ok",
    "CafÃ© menu Ã  la carte",
    "$$$ ### @@@ %%% &&& *** $$$ ###",
    "ha ha ha ha ha ha ha ha ha ha ha ha ha ha",
]


def generate(n: int, path: Path, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    schema = pa.schema(
        [(name, pa.string()) for name in ("record_id", "source", "kind", "prompt", "response", "text", "lang", "meta")]
        + [("tags", pa.list_(pa.string()))]
    )
    writer = pq.ParquetWriter(path, schema, compression="zstd")
    recent: list[tuple[str, str]] = []
    for start in range(0, n, 50_000):
        rows = []
        for i in range(start, min(n, start + 50_000)):
            roll = rng.random()
            if roll < 0.05 and recent:  # exact duplicate (up to case and spacing)
                prompt, response = rng.choice(recent)
                prompt = prompt.upper() if rng.random() < 0.5 else prompt + "  "
            elif roll < 0.10 and recent:  # near duplicate: one word changed
                prompt, response = rng.choice(recent)
                response = response.replace(" ", " very ", 1) if " " in response else response + "呢"
            elif roll < 0.13:
                prompt, response = rng.choice(EN), rng.choice(NOISE)
            else:
                zh = rng.random() < 0.4
                prompt = f"{rng.choice(ZH if zh else EN)} #{i}"
                response = f"{rng.choice(ANSWERS_ZH if zh else ANSWERS_EN)} {i * 7919 % 100_003}"
                if rng.random() < 0.05:
                    response += rng.choice(
                        [
                            f" 邮箱 user{i}@example.com",
                            f" call 1391234{i % 10_000:04d}",
                            f" 电话13812{i % 1_000_000:06d}",
                        ]
                    )
                recent.append((prompt, response))
                if len(recent) > 1000:
                    recent.pop(0)
            rows.append(
                {
                    "record_id": f"r{i}",
                    "source": "bench",
                    "kind": "pair",
                    "prompt": prompt,
                    "response": response,
                    "text": None,
                    "lang": None,
                    "meta": "{}",
                    "tags": ["bench"],
                }
            )
        writer.write_table(pa.Table.from_pylist(rows, schema))
    writer.close()


def run_pipeline(path: Path, batch_size: int, workers: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner, clean_stream

    started = time.perf_counter()
    cleaner = CorpusCleaner(CleaningConfig(batch_size=batch_size), run_id="bench", collect_audit=False)
    kept = removed = 0
    writer = None
    out = path.with_suffix(".clean.parquet")
    batches = (batch.to_pylist() for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size))
    for result in clean_stream(batches, cleaner, workers):
        kept, removed = kept + len(result.records), removed + len(result.removed)
        if result.records:
            table = pa.Table.from_pylist(result.records)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
    if writer is not None:
        writer.close()
    return {"seconds": time.perf_counter() - started, "kept": kept, "removed": removed}


def run_asset_path(path: Path, batch_size: int, workers: int) -> dict:
    """clean_sources as the asset calls it (coverage embeddings off, see the module docstring)."""
    from deepfeed.core.data.clean_pipeline import AuditSpool, clean_sources
    from deepfeed.core.data.cleaning import CleaningConfig, CorpusCleaner

    started = time.perf_counter()
    out = path.parent / f"{path.stem}.asset"
    spool = AuditSpool(path.parent / f"{path.stem}.audit.jsonl")
    summary = clean_sources(
        [path],
        out,
        CorpusCleaner(CleaningConfig(batch_size=batch_size), run_id="bench"),
        audit_spool=spool,
        dp_epsilon=0.5,
        workers=workers,
        encoder=None,
    )
    spool.discard()
    return {
        "seconds": time.perf_counter() - started,
        "kept": summary.cleaned,
        "removed": summary.removed,
        "audit_entries": summary.audit_entries,
    }


def run_baseline(path: Path, records: int) -> dict:
    """The straightforward version: one pandas apply per step, per record."""
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    from deepfeed.core.data.cleaning import normalize_text
    from deepfeed.core.data.dedup import exact_key, normalize_for_dedup
    from deepfeed.core.data.glossary import load_glossary
    from deepfeed.core.data.pii import scrub
    from deepfeed.core.data.quality import QualityConfig, check_quality, detect_language

    started = time.perf_counter()
    df = pd.read_parquet(path).head(records)
    glossary = load_glossary()
    quality = QualityConfig(min_length=4, max_length=8000)
    for column in ("prompt", "response"):
        df[column] = df[column].apply(normalize_text)
        df[column] = df[column].apply(lambda t: scrub(t).text if t else t)
        df[column] = df[column].apply(lambda t: glossary.normalize(t)[0] if t else t)
    df = df[df["prompt"].notna() & df["response"].notna()]
    df["body"] = df["prompt"] + "\n" + df["response"]
    df["lang"] = df["body"].apply(detect_language)
    df = df[df["body"].apply(lambda t: check_quality([t], quality)[0] is None)]
    df["key"] = df["body"].apply(exact_key)
    df = df.drop_duplicates("key")
    lsh = MinHashLSH(threshold=0.9, num_perm=128)

    def near_duplicate(row) -> bool:
        text = normalize_for_dedup(row["body"])
        m = MinHash(num_perm=128)
        m.update_batch([text[i : i + 5].encode() for i in range(max(1, len(text) - 4))])
        if any(m.jaccard(found) >= 0.9 for found in lsh.query(m) for found in [signatures[found]]):
            return True
        lsh.insert(row["record_id"], m)
        signatures[row["record_id"]] = m
        return False

    signatures: dict = {}
    df = df[~df.apply(near_duplicate, axis=1)]
    return {"seconds": time.perf_counter() - started, "kept": len(df), "records": records}


def child(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if args.phase == "pipeline":
        result = run_pipeline(path, args.batch_size, args.workers)
    elif args.phase == "asset":
        result = run_asset_path(path, args.batch_size, args.workers)
    else:
        result = run_baseline(path, args.records)
    # Children count too: with workers the pipeline's memory is spread over processes.
    result["peak_rss_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ) / 1024
    print(json.dumps(result))


def measure(phase: str, path: Path, records: int, batch_size: int, workers: int = 1) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--file",
            str(path),
            "--records",
            str(records),
            "--batch-size",
            str(batch_size),
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-records", type=int, default=0, help="records the pandas baseline cleans (default min(N, 50000))"
    )
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for the stateless steps (default: all cores)",
    )
    parser.add_argument(
        "--asset-path",
        action="store_true",
        help="also measure clean_sources, what the clean_corpus asset runs (coverage embeddings off)",
    )
    parser.add_argument("--phase", choices=("pipeline", "asset", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    n = args.records
    base_n = args.baseline_records or min(n, 50_000)
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "n.parquet", Path(tmp) / "2n.parquet"
        generate(n, small, seed=0)
        generate(2 * n, large, seed=1)
        one = measure("pipeline", small, n, args.batch_size, args.workers)
        two = measure("pipeline", large, 2 * n, args.batch_size, args.workers)
        single = measure("pipeline", small, n, args.batch_size, 1) if args.workers > 1 else one
        base = measure("baseline", small, base_n, args.batch_size)
        if args.asset_path:
            asset_one = measure("asset", small, n, args.batch_size, args.workers)
            asset_two = measure("asset", large, 2 * n, args.batch_size, args.workers)
    rate, base_rate = n / one["seconds"], base_n / base["seconds"]
    print(f"records                 : {n:,} (2N: {2 * n:,}; baseline: {base_n:,})")
    print(
        f"pipeline N              : {one['seconds']:.1f} s, {rate:,.0f} records/s, peak RSS "
        f"{one['peak_rss_mib']:.0f} MiB, kept {one['kept']:,}"
    )
    print(
        f"pipeline 2N             : {two['seconds']:.1f} s, {2 * n / two['seconds']:,.0f} records/s, peak RSS "
        f"{two['peak_rss_mib']:.0f} MiB, kept {two['kept']:,}"
    )
    print(
        f"pipeline N, 1 process   : {single['seconds']:.1f} s, {n / single['seconds']:,.0f} records/s, peak "
        f"RSS {single['peak_rss_mib']:.0f} MiB"
    )
    print(
        f"pandas apply baseline   : {base['seconds']:.1f} s, {base_rate:,.0f} records/s, peak RSS "
        f"{base['peak_rss_mib']:.0f} MiB, kept {base['kept']:,}"
    )
    print(
        f"speed-up over baseline  : {rate / base_rate:.2f}x with {args.workers} workers, "
        f"{n / single['seconds'] / base_rate:.2f}x in one process   (target >= 5x)"
    )
    print(f"time 2N / time N        : {two['seconds'] / one['seconds']:.2f}   (target <= 2.2)")
    if args.asset_path:
        asset_rate = n / asset_one["seconds"]
        print(
            f"asset path N            : {asset_one['seconds']:.1f} s, {asset_rate:,.0f} records/s, peak RSS "
            f"{asset_one['peak_rss_mib']:.0f} MiB, kept {asset_one['kept']:,}, audit entries "
            f"{asset_one['audit_entries']:,}"
        )
        print(
            f"asset path 2N           : {asset_two['seconds']:.1f} s, {2 * n / asset_two['seconds']:,.0f} "
            f"records/s, peak RSS {asset_two['peak_rss_mib']:.0f} MiB, kept {asset_two['kept']:,}"
        )
        print(
            f"asset path vs baseline  : {asset_rate / base_rate:.2f}x; time 2N / time N "
            f"{asset_two['seconds'] / asset_one['seconds']:.2f}"
        )
    print(f"load average            : {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
