"""Serving runtimes: the version's compressed ONNX files are found and decode like torch."""

from __future__ import annotations

import json
import shutil

import pytest

from deepfeed.core.compress.compression import CompressionConfig, compress_checkpoint
from deepfeed.serve.engine import OnnxGenerator, TorchGenerator, compressed_onnx_for, load_generator


@pytest.fixture(scope="module")
def artifact_layout(tiny_llama, tmp_path_factory):
    """<root>/finetuned_model/v1/checkpoint and a compressed_model built from it."""
    root = tmp_path_factory.mktemp("artifacts")
    checkpoint = root / "finetuned_model" / "v1" / "checkpoint"
    shutil.copytree(tiny_llama, checkpoint)
    compressed = root / "compressed_model" / "c1"
    compress_checkpoint(checkpoint, compressed, CompressionConfig(triton_model_name="t"))
    (compressed / "manifest.json").write_text(json.dumps({"counts": {"source_version": "v1"}}))
    return checkpoint, compressed


def test_kv_decoder_is_preferred_and_matches_torch(artifact_layout):
    checkpoint, compressed = artifact_layout
    assert compressed_onnx_for(checkpoint) == compressed / "onnx" / "decoder_with_past_int8.onnx"
    torch_gen = TorchGenerator(compressed / "pruned", tokenizer_path=checkpoint)
    prompts = ["What is hypertension?", "今天天气怎么样？"]
    # fp32 graphs of the pruned model: same greedy tokens and confidences as torch.
    for graph in ("decoder_with_past.onnx", "model.onnx"):
        onnx_gen = OnnxGenerator(compressed / "onnx" / graph, checkpoint)
        assert onnx_gen.cached == (graph == "decoder_with_past.onnx")
        for prompt in prompts:
            a, b = onnx_gen.generate(prompt, 6), torch_gen.generate(prompt, 6)
            assert a.text == b.text and a.new_tokens == b.new_tokens
            assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    served = load_generator(checkpoint, "onnx_int8")
    out = served.generate(prompts[0], 4)
    assert served.runtime == "onnx_int8" and 0 < out.confidence <= 1 and out.new_tokens >= 1


def test_fallbacks_and_bad_sources(artifact_layout, tiny_llama, tmp_path):
    checkpoint, _ = artifact_layout
    assert load_generator(checkpoint, "torch").runtime == "torch"
    assert compressed_onnx_for(tiny_llama) is None  # not in an artifact store: torch
    assert load_generator(tiny_llama, "onnx_int8").runtime == "torch"
    with pytest.raises(ValueError, match="runtime"):
        load_generator(checkpoint, "tensorrt")
    from deepfeed.serve.engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="no config.json"):
        load_generator(tmp_path)
