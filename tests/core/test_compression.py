import numpy as np
import pytest
import torch

from deepfeed.core.compression import (
    CompressionConfig,
    OnnxExportError,
    check_onnx_parity,
    compress_checkpoint,
    load_int8_torch,
    onnx_session,
    prune_model,
    triton_config,
)
from deepfeed.core.modeling import load_model


def test_pruning_keeps_85_percent_and_is_permanent(tiny_llama):
    model = load_model(tiny_llama)
    sparsity = prune_model(model, CompressionConfig())
    assert sparsity and all(abs(s - 0.15) < 0.01 for s in sparsity.values())
    assert not any(name.endswith("weight_orig") for name, _ in model.named_parameters())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_deepseek"])
def test_all_artifacts_are_built_and_agree_with_torch(fixture, request, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    summary = compress_checkpoint(checkpoint, tmp_path, CompressionConfig())
    assert summary["errors"] == {}
    assert set(summary["paths"]) == {"pruned", "torch_int8", "onnx_fp32", "onnx_int8", "triton"}
    assert summary["sizes_mb"]["onnx_int8"] < summary["sizes_mb"]["onnx_fp32"]

    pruned = load_model(tmp_path / "pruned").eval()
    ids = torch.randint(0, pruned.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = pruned(input_ids=ids, attention_mask=mask).logits.numpy()
        int8 = load_int8_torch(tmp_path / "pruned", tmp_path / "torch_int8", CompressionConfig())
        got_int8 = int8(input_ids=ids, attention_mask=mask).logits.numpy()
    got_onnx = onnx_session(tmp_path / "onnx" / "model.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(got_onnx - expected).max() < 1e-3
    assert np.abs(got_int8 - expected).max() < 0.5  # quantization error, not garbage
    config = (tmp_path / "triton" / "deepfeed" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in config and f"dims: [ -1, {pruned.config.vocab_size} ]" in config
    assert (tmp_path / "triton" / "deepfeed" / "1" / "model.onnx").exists()


def test_parity_check_rejects_a_wrong_graph(tiny_llama, tiny_deepseek, tmp_path):
    """A graph from another model must not pass as this model's export."""
    from deepfeed.core.compression import export_onnx

    path = export_onnx(load_model(tiny_llama), tmp_path / "m.onnx", 17)
    other = load_model(tiny_llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    with pytest.raises(OnnxExportError, match="disagrees with torch"):
        check_onnx_parity(other, path)


def test_triton_config_shape():
    text = triton_config("m", 100, 32, has_attention_mask=False)
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]' in text
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ -1, 100 ]' in text
    assert "dynamic_batching" in text
