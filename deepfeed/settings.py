"""Locations of the embedded default, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from deepfeed.core.platform.home import deepfeed_home


def default_artifact_root() -> str:
    return os.environ.get("DEEPFEED_ARTIFACT_ROOT", str(deepfeed_home() / "artifacts"))


def default_mlflow_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{deepfeed_home() / 'mlflow.db'}")


def default_mlflow_artifact_location() -> str:
    return os.environ.get("DEEPFEED_MLFLOW_ARTIFACTS", str(deepfeed_home() / "mlartifacts"))


def default_corpus_path() -> str:
    return os.environ.get("DEEPFEED_CORPUS", "")


def default_base_model_path() -> str:
    return os.environ.get("DEEPFEED_BASE_MODEL", "")


def demo_corpus_dir() -> Path:
    return deepfeed_home() / "demo_corpus"
