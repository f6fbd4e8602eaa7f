import json

import numpy as np
import pytest
import torch

from deepfeed.core.compress.compression import (
    CompressionConfig,
    CompressionInputError,
    check_onnx_parity,
    compress_checkpoint,
    load_int8_torch,
    overall_sparsity,
    prune_model,
    triton_config,
    write_json,
)
from deepfeed.core.compress.gate import gate_compressed_artifacts
from deepfeed.core.compress.onnx_graph import OnnxExportError, onnx_session
from deepfeed.core.compress.triton import validate_triton_repository
from deepfeed.core.train.modeling import load_model
from tests.conftest import PAIRS

RECORDS = [{"kind": "pair", "prompt": p, "response": r} for p, r in PAIRS]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, request):
    """compress_checkpoint once per tiny architecture, shared by the tests of this module."""
    built = {}

    def get(fixture):
        if fixture not in built:
            checkpoint = request.getfixturevalue(fixture)
            folder = tmp_path_factory.mktemp(f"compressed_{fixture}")
            summary = compress_checkpoint(checkpoint, folder, CompressionConfig())
            write_json(folder / "compression.json", summary)
            built[fixture] = (checkpoint, folder, summary)
        return built[fixture]

    return get


@pytest.mark.parametrize("method", ["l1_unstructured", "global_l1_unstructured"])
def test_pruning_keeps_85_percent_and_is_permanent(tiny_llama, method):
    model = load_model(tiny_llama)
    sparsity = prune_model(model, CompressionConfig(prune_method=method))
    if method == "l1_unstructured":
        assert sparsity and all(abs(s - 0.15) < 0.01 for s in sparsity.values())
    else:  # one threshold for all layers: per layer it varies, overall it is 15%
        assert len(set(round(s, 3) for s in sparsity.values())) > 1
    assert abs(overall_sparsity(model) - 0.15) < 0.005
    assert not any(name.endswith("weight_orig") for name, _ in model.named_parameters())


def test_bad_prune_method_names_the_field(tiny_llama):
    with pytest.raises(ValueError, match="prune_method='magic'"):
        prune_model(load_model(tiny_llama), CompressionConfig(prune_method="magic"))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_deepseek"])
def test_all_artifacts_are_built_and_agree_with_torch(fixture, compressed):
    _, folder, summary = compressed(fixture)
    assert summary["errors"] == {}
    assert set(summary["paths"]) == {
        "pruned",
        "torch_int8",
        "onnx_fp32",
        "onnx_int8",
        "onnx_kv_fp32",
        "onnx_kv_int8",
        "triton",
    }
    sizes = summary["sizes_mb"]
    assert sizes["onnx_int8"] < sizes["onnx_fp32"] / 2 and sizes["torch_int8"] < sizes["pruned_fp32"] / 2
    assert summary["details"]["onnx_kv_fp32_max_error"] < 1e-3

    pruned = load_model(folder / "pruned").eval()
    ids = torch.randint(0, pruned.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = pruned(input_ids=ids, attention_mask=mask).logits.numpy()
        int8 = load_int8_torch(folder / "pruned", folder / "torch_int8", CompressionConfig())
        got_int8 = int8(input_ids=ids, attention_mask=mask).logits.numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got_onnx = onnx_session(folder / "onnx" / "model.onnx").run(None, feeds)[0]
    got_onnx_int8 = onnx_session(folder / "onnx" / "model_int8.onnx").run(None, feeds)[0]
    scale = np.abs(expected).max()
    assert np.abs(got_onnx - expected).max() < 1e-3
    # weight-only int8: rounding error of the weights, a few percent of the logit range
    assert np.abs(got_int8 - expected).max() < 0.05 * scale
    assert np.abs(got_onnx_int8 - expected).max() < 0.05 * scale
    config = (folder / "triton" / "deepfeed" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in config and f"dims: [ -1, {pruned.config.vocab_size} ]" in config
    assert (folder / "triton" / "deepfeed" / "1" / "model.onnx").exists()


def test_int8_artifacts_store_one_table_for_tied_embeddings(compressed, tmp_path):
    import onnx

    from deepfeed.core.compress.onnx_int8 import (
        VOCABULARY_BLOCK_SIZE,
        quantize_onnx_weight_only,
        unpadded_block_size,
    )

    _, folder, summary = compressed("tiny_llama")
    state = torch.load(folder / "torch_int8" / "model_int8.pt", weights_only=True)
    embed, head = state["model.embed_tokens.weight_int8"], state["lm_head.weight_int8"]
    assert embed.dtype == torch.int8 and embed.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    graph = onnx.load(str(folder / "onnx" / "model_int8.onnx")).graph
    initializers = {i.name: i for i in graph.initializer}
    # No fp32 weight matrix is left: every MatMul with a weight became MatMulNBits, and
    # the embedding lookup gathers the uint8 rows of lm_head's table.
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers]
    lookup = next(n for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    lm_head = next(
        n
        for n in graph.node
        if n.op_type == "MatMulNBits" and initializers[n.input[1]].dims[0] == summary["vocab_size"]
    )
    assert lookup.input[0] == lm_head.input[1] and initializers[lookup.input[0]].data_type == onnx.TensorProto.UINT8
    # The vocabulary table keeps small blocks; the layers take the largest that pads none.
    blocks = {
        n.name: {a.name: a.i for a in n.attribute}["block_size"] for n in graph.node if n.op_type == "MatMulNBits"
    }
    assert blocks.pop(lm_head.name) == VOCABULARY_BLOCK_SIZE
    fp32 = onnx.load(str(folder / "onnx" / "model.onnx")).graph
    assert set(blocks.values()) == {unpadded_block_size(fp32, {i.name: i for i in fp32.initializer}, 128)}
    # A setting below 32 applies to the vocabulary table too.
    small = quantize_onnx_weight_only(folder / "onnx" / "model.onnx", tmp_path / "small.onnx", block_size=16)
    assert (small["block_size"], small["vocabulary_block_size"]) == (16, 16)


@pytest.mark.parametrize(
    ("input_sizes", "expected"),
    [((576, 1536), 64), ((3584, 18944), 128), ((1536, 8960), 128), ((40,), 16)],
)
def test_int8_blocks_are_the_largest_that_pad_no_layer(input_sizes, expected):
    from onnx import helper, numpy_helper

    from deepfeed.core.compress.onnx_int8 import unpadded_block_size

    weights = [numpy_helper.from_array(np.zeros((k, 8), np.float32), f"w{i}") for i, k in enumerate(input_sizes)]
    nodes = [helper.make_node("MatMul", ["x", w.name], [f"y{i}"]) for i, w in enumerate(weights)]
    graph = helper.make_graph(nodes, "g", [], [], initializer=weights)
    assert unpadded_block_size(graph, {w.name: w for w in weights}, 128) == expected


def test_settings_saved_with_the_int8_artifact_win_on_load(compressed, tmp_path):
    """report.py loads with default settings; an artifact built otherwise still loads."""
    checkpoint, folder, _ = compressed("tiny_llama")
    from deepfeed.core.compress.compression import quantize_int8, save_int8_torch

    config = CompressionConfig(keep_lm_head_fp32=True, fp32_layers=("model.layers.0.mlp.down_proj",))
    model = load_model(checkpoint).eval()
    save_int8_torch(quantize_int8(model, config), tmp_path / "int8", config)
    loaded = load_int8_torch(checkpoint, tmp_path / "int8", CompressionConfig())
    assert isinstance(loaded.lm_head, torch.nn.Linear) and isinstance(
        loaded.model.layers[0].mlp.down_proj, torch.nn.Linear
    )
    assert not isinstance(loaded.model.layers[0].mlp.up_proj, torch.nn.Linear)


def test_parity_check_rejects_a_wrong_graph(tiny_llama, tmp_path):
    """A graph from another model must not pass as this model's export."""
    from deepfeed.core.compress.compression import export_onnx

    path = export_onnx(load_model(tiny_llama), tmp_path / "m.onnx", 17)
    other = load_model(tiny_llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    with pytest.raises(OnnxExportError, match="disagrees with torch"):
        check_onnx_parity(other, path)


def test_kv_parity_check_still_rejects_a_wrong_graph_when_the_logits_are_large(tiny_llama, tmp_path):
    """The bar scales with the largest logit (summation noise does: a fine-tuned model's
    reach 36); a graph of other weights is still off by far more than that."""
    from deepfeed.core.compress.onnx_kv import check_decoder_parity, export_decoder_with_past

    model = load_model(tiny_llama).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # large logits, as after fine-tuning
    path = tmp_path / "kv.onnx"
    export_decoder_with_past(model, path, 17)
    assert check_decoder_parity(model, path) < 1e-3
    other = load_model(tiny_llama).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
        other.lm_head.weight.mul_(200.0)
    with pytest.raises(OnnxExportError, match="disagrees with torch"):
        check_decoder_parity(other, path)


def test_triton_config_shape():
    text = triton_config("m", 100, 32, has_attention_mask=False)
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]' in text
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ -1, 100 ]' in text
    assert "dynamic_batching" in text and "KIND_CPU" in text
    assert "kind: KIND_GPU" in triton_config("m", 100, 32, has_attention_mask=False, instance_kind="KIND_GPU")


def test_triton_repository_is_checked_against_the_onnx_graph(compressed, tmp_path):
    import shutil

    from deepfeed.core.compress.triton import TritonRepositoryError

    _, folder, summary = compressed("tiny_llama")
    valid = validate_triton_repository(folder / "triton" / "deepfeed")
    assert valid["max_batch_size"] == 32 and valid["outputs"] == {"logits": [-1, summary["vocab_size"]]}
    assert valid["instance_kinds"] == ["KIND_CPU"] and valid["dynamic_batching"]

    broken = tmp_path / "deepfeed"
    shutil.copytree(folder / "triton" / "deepfeed", broken)
    text = (broken / "config.pbtxt").read_text()
    cases = [
        (
            text.replace(f"-1, {summary['vocab_size']} ]", f"-1, {summary['vocab_size'] + 1} ]"),
            "output 'logits': config dims",
        ),
        (
            text.replace('name: "attention_mask" data_type: TYPE_INT64', 'name: "attention_mask" data_type: TYPE_FP32'),
            "config TYPE_FP32, ONNX TYPE_INT64",
        ),
        (text.replace('"input_ids"', '"tokens"'), "input 'tokens' is not an input of the ONNX model"),
        (text.replace("max_batch_size", "max_batch"), "not a valid Triton ModelConfig"),
    ]
    for config, message in cases:
        (broken / "config.pbtxt").write_text(config)
        with pytest.raises(TritonRepositoryError, match=message):
            validate_triton_repository(broken)


def _diverse(model):
    """Random tiny models tend to repeat one token; larger weights make greedy paths vary."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def torch_greedy_tokens(model, ids, mask, new_tokens: int):
    """The new tokens of torch's greedy generate with the KV cache, the reference every graph must match."""
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=model.config.pad_token_id,
        )[:, ids.shape[1] :]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_deepseek"])
def test_kv_cache_greedy_generation_is_token_identical_to_torch(fixture, request, tmp_path):
    from deepfeed.core.compress.onnx_kv import export_decoder_with_past, onnx_greedy_generate

    model = _diverse(load_model(request.getfixturevalue(fixture)).eval())
    export_decoder_with_past(model, tmp_path / "decoder.onnx", 17)
    session = onnx_session(tmp_path / "decoder.onnx")
    ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = model.config.pad_token_id, 0  # left padding, as in batched generation
    expected = torch_greedy_tokens(model, ids, mask, 12)
    got = onnx_greedy_generate(session, ids.numpy(), mask.numpy(), max_new_tokens=12)
    assert len(set(got[0].tolist())) > 2, "degenerate greedy path: the comparison would prove little"
    np.testing.assert_array_equal(got, expected.numpy())

    # A cached step feeds one token and returns a cache one longer than the prefix.
    names = [o.name for o in session.get_outputs()]
    from deepfeed.core.compress.onnx_kv import layout_from_session

    layout = layout_from_session(session)
    past = layout.empty(1, length=5)
    outputs = session.run(
        None,
        {
            "input_ids": np.array([[7]]),
            "attention_mask": np.ones((1, 6), dtype=np.int64),
            **past,
            **layout.logits_switch(),
        },
    )
    assert outputs[0].shape[:2] == (1, 1) and outputs[names.index("present.0.key")].shape[2] == 6

    # Every position's logits unless asked for the last only (scoring needs them all,
    # generation only the last), with the same values and the same cache either way.
    from deepfeed.core.compress.onnx_kv import kv_step

    assert layout.last_logits_switch
    prompt, prompt_mask = ids.numpy(), mask.numpy()
    every, cache = kv_step(session, layout, prompt, prompt_mask, None)
    last, last_cache = kv_step(session, layout, prompt, prompt_mask, None, last_only=True)
    assert every.shape[1] == 7 and last.shape[1] == 1
    np.testing.assert_allclose(last[:, 0], every[:, -1], atol=1e-5)
    np.testing.assert_allclose(last_cache[0].numpy(), cache[0].numpy(), atol=1e-6)


def test_quality_gate_passes_good_artifacts_and_names_a_bad_one(compressed):
    import shutil

    from deepfeed.core.compress.compression import export_onnx

    checkpoint, folder, _ = compressed("tiny_llama")
    report = gate_compressed_artifacts(checkpoint, folder, RECORDS)
    assert report.passed, report.failures()
    assert {a.name for a in report.artifacts} == {
        "pruned",
        "torch_int8",
        "onnx_fp32",
        "onnx_int8",
        "onnx_kv_fp32",
        "onnx_kv_int8",
    }
    assert all(abs(a.relative_change) < 0.03 and a.size_ratio for a in report.artifacts)
    assert "| torch_int8 |" in report.markdown()
    assert report.keep_fraction == 0.85 and "keep 85% of the decoder's Linear weights" in report.markdown()

    # An onnx_int8 file that is not this model's: the gate fails and says by how much.
    other = _diverse(load_model(checkpoint).eval())
    broken = folder.parent / (folder.name + "_broken")
    shutil.copytree(folder, broken)
    export_onnx(other, broken / "onnx" / "model_int8.onnx", 17)
    report = gate_compressed_artifacts(checkpoint, broken, RECORDS)
    assert not report.passed
    (failure,) = report.failures()
    assert failure.startswith("onnx_int8: perplexity") and "limit +3%" in failure


def test_quality_gate_scores_greedy_answers_against_fp32_and_fails_a_worse_artifact(tiny_llama, tmp_path):
    """References are the fp32 checkpoint's own greedy answers, so fp32 scores F1 1 and a
    faithful artifact (the same weights, torch and ONNX with KV cache) answers the same;
    the KV decoder of another model fails the task gate with its numbers."""
    from deepfeed.core.compress.compression import export_onnx
    from deepfeed.core.compress.onnx_kv import export_decoder_with_past
    from deepfeed.core.evaluate.evaluation import EvaluationConfig, generate_torch
    from deepfeed.core.train.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    model = _diverse(load_model(tiny_llama).eval())
    checkpoint = tmp_path / "fp32"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    folder = tmp_path / "compressed"
    model.save_pretrained(folder / "pruned")  # pruning nothing: the same answers, exactly
    export_decoder_with_past(model, folder / "onnx" / "kv.onnx", 17)
    export_onnx(model, folder / "onnx" / "logits.onnx", 17)  # logits only: answers checked from fp32's drafts
    export_decoder_with_past(_diverse(_diverse(load_model(tiny_llama).eval())), folder / "onnx" / "other_kv.onnx", 17)
    paths = {"pruned": "pruned", "onnx_kv_fp32": "onnx/kv.onnx", "onnx_fp32": "onnx/logits.onnx"}
    (folder / "compression.json").write_text(json.dumps({"paths": paths, "sizes_mb": {}, "errors": {}}))

    config = EvaluationConfig(max_new_tokens=8, bootstrap_samples=200)
    own = generate_torch(model, tokenizer, [p for p, _ in PAIRS], config).answers
    records = [{"kind": "pair", "prompt": p, "response": a, "lang": "en"} for (p, _), a in zip(PAIRS, own) if a.strip()]
    assert len(records) >= 4

    report = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config)
    assert report.answered == len(records) and report.reference_token_f1 == pytest.approx(1.0)
    assert {a.name for a in report.artifacts} == set(paths)
    for a in report.artifacts:
        assert a.task_passed and a.f1_relative_change == 0 and a.identical_answers == len(records), a
    assert report.passed, report.failures()
    assert "paired 95% CI" in report.markdown().splitlines()[2]

    (folder / "compression.json").write_text(
        json.dumps({"paths": {**paths, "onnx_kv_int8": "onnx/other_kv.onnx"}, "sizes_mb": {}, "errors": {}})
    )
    report = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config)
    bad = report.artifacts[-1]
    assert bad.name == "onnx_kv_int8" and bad.task_passed is False and bad.f1_change_ci_high < -0.03
    (failure,) = report.failures()
    assert (
        failure.startswith("onnx_kv_int8: ")
        and f"token F1 {bad.token_f1:.4g} vs fp32 1 on {len(records)} answers" in failure
    )
    assert "whole interval below the limit" in failure

    # task_gate="off" scores perplexity only
    off = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config, task_gate="off")
    assert off.answered == 0 and all(a.token_f1 is None and a.task_passed is None for a in off.artifacts)
    # no QA record to answer: the task metric is unmeasured, which fails closed unless task_gate="off"
    texts = [{"kind": "text", "text": f"{p} {r}", "lang": "en"} for p, r in PAIRS]
    unmeasured = gate_compressed_artifacts(checkpoint, folder, texts, eval_config=config)
    assert not unmeasured.passed and all(a.task_passed is False for a in unmeasured.artifacts)
    assert "token F1 not measured ((no held-out QA record to answer" in unmeasured.failures()[0]
    with pytest.raises(ValueError, match="task_gate"):
        gate_compressed_artifacts(checkpoint, folder, records, task_gate="loose")


def test_logits_only_graphs_reach_the_same_answers_from_their_kv_twin_s_drafts(tiny_llama, tmp_path):
    """A logits-only graph's answers drafted from its KV-cache twin (same weights), also
    redrafted by the twin where they differ, or from fp32's answers: the same answers and
    verdicts, for a faithful and a broken pair; the report keeps the build order though
    the twins are scored first."""
    from deepfeed.core.compress.compression import export_onnx
    from deepfeed.core.compress.onnx_kv import export_decoder_with_past
    from deepfeed.core.evaluate.evaluation import EvaluationConfig, generate_torch
    from deepfeed.core.train.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    model = _diverse(load_model(tiny_llama).eval())
    other = _diverse(_diverse(load_model(tiny_llama).eval()))
    checkpoint = tmp_path / "fp32"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    folder = tmp_path / "compressed"
    export_onnx(model, folder / "onnx" / "logits.onnx", 17)
    export_decoder_with_past(model, folder / "onnx" / "kv.onnx", 17)
    export_onnx(other, folder / "onnx" / "other_logits.onnx", 17)
    export_decoder_with_past(other, folder / "onnx" / "other_kv.onnx", 17)
    paths = {
        "onnx_fp32": "onnx/logits.onnx",
        "onnx_int8": "onnx/other_logits.onnx",
        "onnx_kv_fp32": "onnx/kv.onnx",
        "onnx_kv_int8": "onnx/other_kv.onnx",
    }
    (folder / "compression.json").write_text(json.dumps({"paths": paths, "sizes_mb": {}, "errors": {}}))
    config = EvaluationConfig(max_new_tokens=8, bootstrap_samples=200)
    own = generate_torch(model, tokenizer, [p for p, _ in PAIRS], config).answers
    records = [{"kind": "pair", "prompt": p, "response": a, "lang": "en"} for (p, _), a in zip(PAIRS, own) if a.strip()]

    reference = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config, answers_by="reference")
    twin = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config, answers_by="twin")
    redraft = gate_compressed_artifacts(checkpoint, folder, records, eval_config=config)  # the default
    for other in (twin, redraft):
        assert [a.name for a in other.artifacts] == list(paths)
        for a, b in zip(reference.artifacts, other.artifacts):
            assert (a.name, a.passed, a.task_passed, a.identical_answers, a.token_f1) == (
                b.name,
                b.passed,
                b.task_passed,
                b.identical_answers,
                b.token_f1,
            )
        assert [a.passed for a in other.artifacts] == [True, False, True, False]
    assert set(redraft.artifacts[0].stage_seconds) == {"load", "perplexity", "answers"}
    with pytest.raises(ValueError, match="answers_by"):
        gate_compressed_artifacts(checkpoint, folder, records, answers_by="guess")


def test_paired_f1_change_separates_noise_from_a_real_drop():
    from deepfeed.core.evaluate.paired import paired_relative_change

    reference = np.array([1.0, 0.5, 0.0, 0.8] * 6)  # 24 answers, mean 0.575
    assert paired_relative_change(reference, reference, 500, 0) == (0.0, 0.0, 0.0)
    one_flip = reference.copy()
    one_flip[1] = 0.0  # one answer of 24 turns wrong: -3.6%, a point gate at 3% would fail
    change, low, high = paired_relative_change(reference, one_flip, 1000, 0)
    assert change == pytest.approx(-0.5 / 24 / 0.575) and change < -0.03 and high >= -0.03
    worse = reference * 0.5  # every answer half as good
    change, low, high = paired_relative_change(reference, worse, 1000, 0)
    assert change == pytest.approx(-0.5) and high < -0.03
    assert paired_relative_change(np.zeros(5), np.ones(5), 100, 0) == (None, None, None)


def test_bad_checkpoints_are_named(tiny_llama, tmp_path):
    import shutil

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_llama, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    no_config = tmp_path / "no_config"
    shutil.copytree(tiny_llama, no_config)
    (no_config / "config.json").unlink()
    for path, reason in [
        (no_weights, "no weight files"),
        (no_config, "no config.json"),
        (tmp_path / "missing", "does not exist"),
    ]:
        with pytest.raises(
            CompressionInputError, match=f"compressed_model: cannot read the fine-tuned checkpoint: .*{reason}"
        ):
            compress_checkpoint(path, tmp_path / "out", CompressionConfig())


def test_an_architecture_the_exporter_cannot_handle_leaves_the_torch_artifacts(tmp_path):
    """Mixtral's sparse MoE routing loops over the experts a batch hits; the tracer
    freezes that loop, so the graph breaks on other inputs and is rejected."""
    from transformers import AutoModelForCausalLM, MixtralConfig

    from deepfeed.tools.tiny_models import build_tokenizer
    from tests.conftest import tiny_corpus_texts

    tokenizer = build_tokenizer(tiny_corpus_texts())
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["MixtralForCausalLM"],
    )
    checkpoint = tmp_path / "mixtral"
    AutoModelForCausalLM.from_config(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    summary = compress_checkpoint(checkpoint, tmp_path / "out", CompressionConfig())
    assert set(summary["paths"]) == {"pruned", "torch_int8"}
    assert summary["errors"]["onnx_fp32"].startswith(
        "MixtralForCausalLM: OnnxExportError: ONNX graph of model.onnx fails on inputs shaped unlike the trace example"
    )
    assert summary["errors"]["onnx_int8"] == "skipped: onnx_fp32 not built"
    assert summary["errors"]["triton"] == "skipped: onnx_int8 not built"
    assert (tmp_path / "out" / "torch_int8" / "model_int8.pt").exists()
    write_json(tmp_path / "out" / "compression.json", summary)
    report = gate_compressed_artifacts(checkpoint, tmp_path / "out", RECORDS)
    assert {a.name for a in report.artifacts} == {"pruned", "torch_int8"} and "onnx_fp32" in report.not_built
    assert json.loads((tmp_path / "out" / "compression.json").read_text())["errors"]["onnx_fp32"]


def test_provider_selection_prefers_cuda_and_falls_back_to_cpu():
    import onnxruntime as ort

    from deepfeed.core.compress.onnx_graph import select_providers

    assert select_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(["TensorrtExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="none of"):
        select_providers(["AzureExecutionProvider"])
    # what this machine's onnxruntime offers is what a session gets
    assert select_providers(ort.get_available_providers())[-1] == "CPUExecutionProvider"


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_onnx_sessions_run_on_the_cuda_provider_and_agree_with_cpu(tiny_llama, tmp_path):
    import onnxruntime as ort

    from deepfeed.core.compress.compression import check_onnx_parity, export_onnx, onnx_session

    model = load_model(tiny_llama).eval()
    path = export_onnx(model, tmp_path / "model.onnx", 17)
    session = onnx_session(path)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert check_onnx_parity(model, path) < 1e-3  # the parity check runs on the CUDA session too
    ids = np.ones((1, 5), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, feeds)[0] - cpu.run(None, feeds)[0]).max() < 1e-3
