"""How long loading the code location takes, against a bare `import dagster` in the same run.

Every `dagster` command, the webserver, the daemon and each run process import
deepfeed.definitions first. Each measurement is a fresh interpreter (imports are cached
per process); the median of --repeat runs is printed, and which heavy libraries the
definitions pulled in.

    PYTHONPATH=$PWD python benchmarks/bench_definitions_import.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

HEAVY = ("torch", "transformers", "sentence_transformers", "scipy", "sklearn", "matplotlib", "mlflow", "pandas")
PROBE = """
import json, sys, time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(module: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for module in ("dagster", "deepfeed.definitions"):
        runs = [measure(module) for _ in range(args.repeat)]
        rows[module] = (statistics.median(r["seconds"] for r in runs), runs[-1]["heavy"])
    base = rows["dagster"][0]
    for module, (seconds, heavy) in rows.items():
        print(
            f"{module:<22} {seconds:6.2f} s  (+{seconds - base:5.2f} s over import dagster)  "
            f"loads: {', '.join(heavy) or '-'}"
        )


if __name__ == "__main__":
    main()
