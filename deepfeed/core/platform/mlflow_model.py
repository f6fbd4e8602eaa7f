"""Make a checkpoint folder an MLflow model, in place.

A registered version's `source` is the checkpoint folder in the artifact store; everything
that reads the registry (serving, evaluation, retention) loads that folder. Writing an
`MLmodel` file (pyfunc flavor, `loader_module` = a self-contained loader copied into the
folder, `data: .`) next to the weights makes the same folder what `models:/deepfeed@champion`
resolves to, so `mlflow.pyfunc.load_model` and `mlflow models serve` work without a second
copy of the weights in MLflow's artifact store. docs/mlflow.md explains the trade-off.
"""

from __future__ import annotations

import shutil
from pathlib import Path

LOADER_MODULE = "deepfeed_pyfunc"
MLMODEL = "MLmodel"


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "torch", "transformers", "pandas"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def write_pyfunc_model(checkpoint: str | Path) -> Path:
    """Add MLmodel, code/ and requirements to a saved Hugging Face checkpoint folder."""
    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.utils.environment import _PythonEnv

    from deepfeed.core.platform import mlflow_pyfunc

    folder = Path(checkpoint)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a saved checkpoint (no config.json)")
    code = folder / "code"
    code.mkdir(exist_ok=True)
    shutil.copyfile(mlflow_pyfunc.__file__, code / f"{LOADER_MODULE}.py")
    requirements = _requirements()
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    _PythonEnv(dependencies=["-r requirements.txt"]).to_yaml(folder / "python_env.yaml")
    model = Model(
        signature=ModelSignature(
            inputs=Schema([ColSpec("string", "prompt")]),
            params=ParamSchema([ParamSpec("max_new_tokens", "long", mlflow_pyfunc.DEFAULT_MAX_NEW_TOKENS)]),
        )
    )
    add_to_model(model, loader_module=LOADER_MODULE, data=".", code="code", python_env="python_env.yaml")
    model.save(folder / MLMODEL)
    return folder / MLMODEL


def is_mlflow_model(checkpoint: str) -> bool:
    """True when the folder (local, or any fsspec URL such as s3://) holds an MLmodel."""
    from upath import UPath

    return (UPath(checkpoint) / MLMODEL).exists()
