"""How long loading the code location takes, against a bare `import dagster` and, with
--baseline, against another checkout of deepfeed measured in the same run.

Every `dagster` command, the webserver, the daemon and each run process import
deepfeed.definitions first. Each measurement is a fresh interpreter (imports are cached
per process) whose sys.path starts with the tree being measured; the trees are measured
in turn, round by round, so a change in the machine's load hits all of them alike. The
median of --repeat rounds is printed, the ratio to the baseline, and which heavy
libraries the definitions pulled in.

    PYTHONPATH=$PWD python benchmarks/bench_definitions_import.py --repeat 5 --baseline /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "sentence_transformers", "scipy", "sklearn", "matplotlib", "mlflow", "pandas")
PROBE = """
import json, sys, time
sys.path.insert(0, {tree!r})
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
loaded_from = getattr(sys.modules[{module!r}], "__file__", "")
print(json.dumps({{"seconds": elapsed, "file": loaded_from, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""
THIS_TREE = Path(__file__).resolve().parents[1]


def measure(module: str, tree: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY, tree=str(tree))],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="another deepfeed checkout to compare with")
    args = parser.parse_args()
    cases = {
        "import dagster": ("dagster", THIS_TREE),
        "deepfeed.definitions (this tree)": ("deepfeed.definitions", THIS_TREE),
    }
    if args.baseline is not None:
        cases["deepfeed.definitions (baseline)"] = ("deepfeed.definitions", args.baseline.resolve())
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, (module, tree) in cases.items():
            runs[name].append(measure(module, tree))
    medians = {name: statistics.median(r["seconds"] for r in rows) for name, rows in runs.items()}
    base = medians["import dagster"]
    for name, rows in runs.items():
        where = Path(rows[-1]["file"]).parent.parent if name != "import dagster" else ""
        print(
            f"{name:<33} {medians[name]:6.2f} s  (+{medians[name] - base:5.2f} s over import dagster)  "
            f"loads: {', '.join(rows[-1]['heavy']) or '-'}  {where}"
        )
    if args.baseline is not None:
        ratio = medians["deepfeed.definitions (this tree)"] / medians["deepfeed.definitions (baseline)"]
        print(f"this tree / baseline: {ratio:.2f}  ({args.repeat} rounds, medians)")


if __name__ == "__main__":
    main()
