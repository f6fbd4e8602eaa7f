"""A checkpoint made an MLflow model in place loads through the real MLflow registry."""

import shutil

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from deepfeed.core.platform.mlflow_model import is_mlflow_model, write_pyfunc_model
from deepfeed.serve.engine import TorchGenerator

WORDS = ("Hypertension", "res")


@pytest.fixture
def checkpoint(tiny_llama, tmp_path):
    """The tiny model with an output head that can only say two words: an untrained tiny
    model answers whitespace, which would make any comparison of answers vacuous."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "artifacts" / "finetuned_model" / "v1" / "checkpoint"
    shutil.copytree(tiny_llama, folder)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.config.tie_word_embeddings = False
    head = torch.zeros_like(model.get_input_embeddings().weight)
    direction = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(0))
    first, second = tokenizer.convert_tokens_to_ids([f"\u0120{w}" for w in WORDS])
    head[first], head[second] = direction, -direction  # one of the two always scores above 0
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(folder)
    return folder


def test_registered_checkpoint_loads_by_alias_and_generates(checkpoint, tmp_path, monkeypatch):
    assert not is_mlflow_model(str(checkpoint))
    write_pyfunc_model(checkpoint)
    assert is_mlflow_model(str(checkpoint))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("deepfeed")
    version = client.create_model_version("deepfeed", source=str(checkpoint))
    client.set_registered_model_alias("deepfeed", "champion", version.version)

    model = mlflow.pyfunc.load_model("models:/deepfeed@champion")
    prompts = ["What is a fever?", "hello"]
    texts = model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 6})
    # The same greedy answer as deepfeed's own server gives for that checkpoint.
    server = TorchGenerator(checkpoint)
    assert texts == [server.generate(p, 6).text for p in prompts]
    assert all(t and set(t.split()) <= set(WORDS) for t in texts), texts


def test_the_model_folder_moves_with_the_home(checkpoint, tmp_path):
    write_pyfunc_model(checkpoint)
    shutil.move(str(tmp_path / "artifacts"), str(tmp_path / "moved-home"))
    folder = tmp_path / "moved-home" / "finetuned_model" / "v1" / "checkpoint"
    model = mlflow.pyfunc.load_model(str(folder))
    texts = model.predict({"prompt": ["hello"]}, params={"max_new_tokens": 3})
    assert texts == [TorchGenerator(folder).generate("hello", 3).text] and texts[0]


def test_a_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_pyfunc_model(tmp_path)
