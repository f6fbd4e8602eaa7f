"""Load test of `deepfeed serve` on loopback, bounded in requests and time.

Starts the real server (uvicorn child process) twice on the same registered model, once
per runtime: torch fp32 (the baseline) and the int8 ONNX Runtime decoder of its
compressed_model artifact (the default). Concurrent clients send /generate requests and
post feedback for some answers. Prints, per runtime: p50/p95 latency, requests/s, and the
ratios int8 ONNX / torch measured in this run; and checks count in = count stored for
inference-log lines and feedback records (exit status 1 if anything was lost).

    .venv/bin/python benchmarks/bench_serving.py [--model smollm2|tiny] [--requests 200]
        [--concurrency 8] [--max-seconds 120] [--new-tokens 16] [--work /tmp/deepfeed-serving-bench]

--model smollm2 (default) serves the embedded default SmolLM2-135M-Instruct; tiny a
random tiny Llama (smoke run). The compressed artifact is built once into --work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "What is hypertension?",
    "How do I reset my password?",
    "What is the capital of France?",
    "Can you recommend a book about science?",
    "什么是高血压？",
    "今天天气怎么样？",
    "How much water should I drink each day?",
    "Explain why local deployment keeps data on site.",
]
API_KEY = "bench-annotator"


def prepare(work: Path, model: str) -> tuple[Path, Path]:
    """<work>/artifacts/finetuned_model/bench/checkpoint + a compressed_model built from it."""
    from deepfeed.core.compress.compression import CompressionConfig, compress_checkpoint

    checkpoint = work / "artifacts" / "finetuned_model" / "bench" / "checkpoint"
    compressed = work / "artifacts" / "compressed_model" / "bench-c"
    if not (compressed / "manifest.json").exists():
        shutil.rmtree(work / "artifacts", ignore_errors=True)
        if model == "smollm2":
            from deepfeed.core.platform.home import ensure_smollm2

            shutil.copytree(ensure_smollm2(), checkpoint)
        else:
            from deepfeed.tools.tiny_models import build_tiny_checkpoint

            checkpoint.parent.mkdir(parents=True)
            build_tiny_checkpoint(checkpoint, PROMPTS * 8, "llama")
        started = time.perf_counter()
        compress_checkpoint(checkpoint, compressed, CompressionConfig())
        (compressed / "manifest.json").write_text(json.dumps({"counts": {"source_version": "bench"}}))
        print(f"built compressed artifact in {time.perf_counter() - started:.0f} s")
    return checkpoint, compressed


def registry(home: Path, checkpoint: Path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("deepfeed")
    version = client.create_model_version("deepfeed", source=str(checkpoint)).version
    client.set_registered_model_alias("deepfeed", "champion", version)
    return uri


def write_policy(home: Path) -> Path:
    from deepfeed.core.platform.access import hash_key

    path = home / "access_policy.json"
    path.write_text(
        json.dumps(
            {
                "roles": {"annotator": {"permissions": ["feedback:submit"], "classifications": ["public"]}},
                "keys": [{"sha256": hash_key(API_KEY), "principal": "bench", "role": "annotator"}],
                "classifications": {"public": ["*"]},
            }
        )
    )
    return path


def load(url: str, requests: int, concurrency: int, max_seconds: float, new_tokens: int) -> dict:
    import httpx

    deadline = time.monotonic() + max_seconds
    latencies, failures, feedback_acked = [], 0, 0

    def one(i: int):
        if time.monotonic() > deadline:
            return None
        with httpx.Client(base_url=url, timeout=120) as http:
            started = time.perf_counter()
            r = http.post(
                "/generate",
                json={"user_id": f"user{i % 50}", "prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": new_tokens},
            )
            latency = time.perf_counter() - started
            if r.status_code != 200:
                return ("fail", latency, 0)
            acked = 0
            if i % 4 == 0:  # a quarter of the answers get rated
                f = http.post(
                    "/feedback",
                    headers={"X-API-Key": API_KEY},
                    json={
                        "prompt": PROMPTS[i % len(PROMPTS)],
                        "answer": r.json()["answer"] or "-",
                        "rating": 1,
                        "user_id": f"user{i % 50}",
                        "model_version": r.json()["model_version"],
                        "classification": "public",
                    },
                )
                acked = int(f.status_code == 200)
            return ("ok", latency, acked)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(one, range(requests)) if r is not None]
    wall = time.perf_counter() - started
    for status, latency, acked in results:
        if status == "ok":
            latencies.append(latency)
        else:
            failures += 1
        feedback_acked += acked
    latencies.sort()
    return {
        "sent": len(results),
        "ok": len(latencies),
        "failed": failures,
        "feedback_acked": feedback_acked,
        "wall_s": wall,
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": 1000 * latencies[max(0, int(0.95 * len(latencies)) - 1)] if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per runtime; later requests are not sent")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "deepfeed-serving-bench"))
    args = parser.parse_args()

    from deepfeed.core.loop.feedback import FeedbackStore
    from deepfeed.core.loop.inference_log import InferenceLog
    from deepfeed.serve.app import ServeSettings
    from deepfeed.serve.process import ServerProcess

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    work = Path(args.work)
    checkpoint, _ = prepare(work, args.model)
    rows, lost = {}, []
    for runtime in ("torch", "onnx_int8"):
        home = work / f"home-{runtime}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        settings = ServeSettings(
            tracking_uri=registry(home, checkpoint),
            runtime=runtime,
            max_new_tokens=args.new_tokens,
            poll_seconds=0,
            policy_path=write_policy(home),
            home=home,
        )
        with ServerProcess(settings) as server:
            import httpx

            served = httpx.get(f"{server.url}/health").json()["runtimes"]["champion"]
            load(server.url, min(8, args.requests), min(2, args.concurrency), 60, args.new_tokens)  # warm-up
            warm_lines = InferenceLog(home / "inference_log").count()
            warm_feedback = len(FeedbackStore(home / "feedback").all_records())
            row = load(server.url, args.requests, args.concurrency, args.max_seconds, args.new_tokens)
        row["runtime"] = served
        row["log_lines"] = InferenceLog(home / "inference_log").count() - warm_lines
        row["feedback_stored"] = len(FeedbackStore(home / "feedback").all_records()) - warm_feedback
        if row["log_lines"] != row["ok"] or row["feedback_stored"] != row["feedback_acked"]:
            lost.append(runtime)
        rows[runtime] = row

    print(
        f"\nloopback load test: {args.model}, {args.concurrency} concurrent clients, {args.new_tokens} new tokens, "
        f"<= {args.requests} requests / {args.max_seconds:g} s per runtime, {os.cpu_count()} CPUs"
    )
    print(
        f"{'runtime':<12}{'served':<11}{'sent':>6}{'ok':>6}{'fail':>6}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'log in/stored':>15}{'fb acked/stored':>17}"
    )
    for name, r in rows.items():
        print(
            f"{name:<12}{r['runtime']:<11}{r['sent']:>6}{r['ok']:>6}{r['failed']:>6}{r['rps']:>8.2f}{r['p50_ms']:>9.0f}"
            f"{r['p95_ms']:>9.0f}{r['ok']:>7}/{r['log_lines']:<7}{r['feedback_acked']:>8}/{r['feedback_stored']:<8}"
        )
    base, int8 = rows["torch"], rows["onnx_int8"]
    print(
        f"\nratios int8 ONNX / torch fp32 (same run): throughput x{int8['rps'] / base['rps']:.2f}, "
        f"p50 latency x{int8['p50_ms'] / base['p50_ms']:.2f}, p95 latency x{int8['p95_ms'] / base['p95_ms']:.2f}"
    )
    print("count in = count stored:", "yes" if not lost else f"NO for {lost}")
    return 1 if lost or any(r["failed"] for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
