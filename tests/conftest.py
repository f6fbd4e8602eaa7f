"""Shared fixtures: a tiny corpus with bad records in it, tiny real checkpoints, and an
isolated deepfeed/Dagster/MLflow home per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

PAIRS = [
    ("What is hypertension?", "Hypertension is high blood pressure. It raises the risk of stroke."),
    ("How do I reset my password?", "Open the settings page. Choose security and press reset."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Can you recommend a book?", "Try a history of science. It is a good read."),
    ("What does a bank card number look like?", "It has sixteen digits. The last one is a check digit."),
    ("什么是高血压？", "高血压是血压持续升高的疾病。它会增加中风的风险。"),
    ("今天天气怎么样？", "今天天气晴朗。适合出门散步。"),
    ("How much water should I drink?", "About two litres a day. More when it is hot."),
]


def tiny_corpus_texts() -> list[str]:
    return [f"{p} {r}" for p, r in PAIRS] * 4


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from deepfeed.tools.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), tiny_corpus_texts(), "llama")


@pytest.fixture(scope="session")
def tiny_deepseek(tmp_path_factory) -> Path:
    from deepfeed.tools.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_deepseek"), tiny_corpus_texts(), "deepseek_v3")


def write_corpus(folder: Path, copies: int = 6) -> Path:
    """Good records in three formats, plus bad ones the ingest must quarantine."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(copies):
        for p, r in PAIRS:
            lines.append(
                json.dumps(
                    {"prompt": f"{p} ({i})", "response": r, "tags": ["demo"], "lang": "zh" if "？" in p else "en"},
                    ensure_ascii=False,
                )
            )
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"prompt": "a question without answer"}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "notes.csv").write_text(
        "text,category\nA plain note about blood pressure.,health\nbad,row,extra\nAnother note.,health\n",
        encoding="utf-8",
    )
    (folder / "doc.md").write_text(
        "# Title\n\nA paragraph of text. It has two sentences.\n\nAnother paragraph.\n", encoding="utf-8"
    )
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    return folder


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def deepfeed_env(tmp_path, monkeypatch) -> Path:
    """A private DEEPFEED_HOME (artifacts, MLflow, caches) and DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DEEPFEED_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DEEPFEED_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("DEEPFEED_RAW_STORE", raising=False)
    monkeypatch.delenv("DEEPFEED_RAW_STORE_KEY", raising=False)
    # Offline resources are built from installed packages once and shared across tests.
    monkeypatch.setenv("DEEPFEED_CACHE", str(REPO / ".deepfeed" / "cache"))
    return home
