"""Loading the code location imports no deep-learning stack: every `dagster` command, the
webserver, the daemon and each run process pay for what deepfeed.definitions imports.
(How long it takes is measured by benchmarks/bench_definitions_import.py, not timed here.)"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_LOAD = ("torch", "transformers", "peft", "onnx", "onnxruntime", "matplotlib", "mlflow", "scipy", "datasketch")
PROBE = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
import deepfeed.definitions
defs = deepfeed.definitions.defs
jobs = [job.name for job in defs.jobs]
print(json.dumps({{"loaded": [m for m in {NOT_AT_LOAD!r} if m in sys.modules], "file": deepfeed.__file__,
                   "assets": len(list(defs.assets)), "jobs": jobs}}))
"""


def test_definitions_load_without_torch_transformers_or_mlflow():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(ROOT))  # this tree, not an installed copy
    assert result["assets"] > 5 and "full_chain_job" in result["jobs"]  # the definitions really loaded
    assert result["loaded"] == [], f"imported at definitions load: {result['loaded']}"
