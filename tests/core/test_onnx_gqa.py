"""The GenAI builder's KV-cache decoder: written, checked, and decoded in place like torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfeed.core.compress.compression import kv_graph_writer
from deepfeed.core.compress.onnx_gqa import (
    LOGIT_POSITIONS,
    SharedCacheDecoder,
    export_gqa_decoder,
    shares_cache_buffer,
)
from deepfeed.core.compress.onnx_graph import LogitsOnly, OnnxExportError, onnx_session
from deepfeed.core.compress.onnx_kv import (
    check_decoder_parity,
    export_decoder_with_past,
    onnx_greedy_generate,
    onnx_kv_logits,
)
from deepfeed.core.train.modeling import load_model
from tests.core.test_compression import _diverse, torch_greedy_tokens


@pytest.fixture(scope="module")
def builder_graph(tiny_llama, tmp_path_factory):
    """(torch model, its checkpoint folder, the builder's fp32 graph)."""
    folder = tmp_path_factory.mktemp("gqa")
    model = _diverse(load_model(tiny_llama).eval())
    model.save_pretrained(folder / "checkpoint", safe_serialization=True)
    export_gqa_decoder(folder / "checkpoint", folder / "decoder.onnx")
    return model, folder / "checkpoint", folder / "decoder.onnx"


def _left_padded(model, pads=(0, 3, 5), width=9, seed=1):
    ids = torch.randint(3, model.config.vocab_size, (len(pads), width), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        ids[row, :pad], mask[row, :pad] = model.config.pad_token_id, 0
    return ids, mask


def test_builder_graph_generates_what_torch_generates_from_prompts_of_different_lengths(builder_graph):
    model, _, path = builder_graph
    session = onnx_session(path)
    assert shares_cache_buffer(session)
    ids, mask = _left_padded(model)
    expected = torch_greedy_tokens(model, ids, mask, 12)
    got = onnx_greedy_generate(session, ids.numpy(), mask.numpy(), max_new_tokens=12)
    assert len(set(got[0].tolist())) > 2, "degenerate greedy path: the comparison would prove little"
    np.testing.assert_array_equal(got, expected.numpy())
    # The shortest prompt alone gets the same answer as inside the batch.
    alone = onnx_greedy_generate(session, ids[2:, 5:].numpy(), mask[2:, 5:].numpy(), max_new_tokens=12)
    np.testing.assert_array_equal(alone[0], got[2])


def test_scoring_logits_match_torch_at_every_unpadded_position(builder_graph):
    model, _, path = builder_graph
    ids, mask = _left_padded(model, seed=2)
    got = onnx_kv_logits(onnx_session(path))(ids, mask).numpy()
    with torch.no_grad():
        expected = LogitsOnly(model)(ids, mask).numpy()
    keep = mask.bool().numpy()
    np.testing.assert_allclose(got[keep], expected[keep], atol=1e-3 * max(1.0, np.abs(expected[keep]).max()))
    assert not got[~keep].any()  # padding gets no logits
    # Right padding, as perplexity scoring pads: the same logits at the same tokens.
    right_ids, right_mask = torch.flip(ids, [1]), torch.flip(mask, [1])
    right_ids = torch.stack([torch.cat([r[m.bool()].flip(0), r[~m.bool()]]) for r, m in zip(right_ids, right_mask)])
    right_mask = torch.sort(mask, dim=1, descending=True).values
    right = onnx_kv_logits(onnx_session(path))(right_ids, right_mask).numpy()
    for row in range(ids.shape[0]):
        np.testing.assert_allclose(right[row][right_mask[row].bool().numpy()], got[row][keep[row]], atol=1e-4)


def test_parity_check_passes_the_graph_and_rejects_one_of_other_weights(builder_graph, tmp_path):
    model, checkpoint, path = builder_graph
    assert check_decoder_parity(model, path) < 1e-3 * 50
    other = _diverse(load_model(checkpoint).eval())  # weights x4 again: a different model
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    export_gqa_decoder(tmp_path / "other", tmp_path / "other.onnx")
    with pytest.raises(OnnxExportError, match="disagrees with torch"):
        check_decoder_parity(model, tmp_path / "other.onnx")


def _without_logit_positions(path, target):
    """The graph as export_gqa_decoder wrote it before logit_positions existed."""
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    gather = next(n for n in graph.node if n.op_type == "GatherElements")
    lm_head = next(n for n in graph.node if "logits" in n.output)
    lm_head.input[0] = gather.input[0]
    for node in [n for n in graph.node if n.name.startswith("/lm_head/chosen_positions")]:
        graph.node.remove(node)
    graph.input.remove(next(i for i in graph.input if i.name == LOGIT_POSITIONS))
    onnx.save(graph_model, str(target), save_as_external_data=True, location=target.name + ".data")
    return target


def test_the_prompt_step_projects_only_the_positions_asked_for(builder_graph, tmp_path):
    model, _, path = builder_graph
    session = onnx_session(path)
    ids, mask = _left_padded(model, seed=3)
    every = onnx_kv_logits(session)(ids, mask).numpy()
    decoder = SharedCacheDecoder(session, batch=ids.shape[0], capacity=ids.shape[1])
    last = decoder.step(ids.numpy(), mask.numpy())
    # lm_head ran on one position per row, not on the whole prompt.
    assert decoder.binding.get_outputs()[0].shape() == [ids.shape[0], 1, model.config.vocab_size]
    np.testing.assert_allclose(last, every[:, -1], atol=1e-4)
    # A graph written before logit_positions existed returns every position; the decoder
    # picks the same ones out, so artifacts already served keep working.
    old = onnx_session(_without_logit_positions(path, tmp_path / "old.onnx"))
    assert LOGIT_POSITIONS not in {i.name for i in old.get_inputs()}
    np.testing.assert_allclose(onnx_kv_logits(old)(ids, mask).numpy(), every, atol=1e-5)
    np.testing.assert_array_equal(
        onnx_greedy_generate(old, ids.numpy(), mask.numpy(), max_new_tokens=8),
        onnx_greedy_generate(session, ids.numpy(), mask.numpy(), max_new_tokens=8),
    )


def test_cache_capacity_is_a_clear_error(builder_graph):
    _, _, path = builder_graph
    decoder = SharedCacheDecoder(onnx_session(path), batch=1, capacity=4)
    decoder.step(np.array([[5, 6, 7]]), np.ones((1, 3), dtype=np.int64))
    decoder.step(np.array([[8]]), np.ones((1, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="cache holds 4 tokens"):
        decoder.step(np.array([[9]]), np.ones((1, 5), dtype=np.int64))


def test_builder_and_torch_graphs_count_the_same_flops(builder_graph, tmp_path):
    from deepfeed.core.train.flops import onnx_flops_per_token

    model, _, path = builder_graph
    export_decoder_with_past(model, tmp_path / "torch.onnx", 17)
    fused, unfused = onnx_flops_per_token(path, 16), onnx_flops_per_token(tmp_path / "torch.onnx", 16)
    # All but the rotary angles, which the builder's graph reads from a table instead of
    # multiplying positions by inverse frequencies (head_dim FLOPs per token).
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for key in ("prefill_flops_per_token", "decode_flops_per_token"):
        assert unfused[key] - fused[key] == pytest.approx(head_dim, abs=1e-6)


def test_the_kv_graph_writer_follows_the_setting_and_the_architecture():
    assert kv_graph_writer("auto", "LlamaForCausalLM") == "genai_builder"
    assert kv_graph_writer("auto", "Qwen2ForCausalLM") == "genai_builder"
    assert kv_graph_writer("auto", "DeepseekV3ForCausalLM") == "torch_export"
    assert kv_graph_writer("torch_export", "LlamaForCausalLM") == "torch_export"
    with pytest.raises(ValueError, match="kv_graph='magic'"):
        kv_graph_writer("magic", "LlamaForCausalLM")
