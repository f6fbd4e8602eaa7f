"""Evaluation on tiny real checkpoints: perplexity, generation, FLOPs, the candidates
report with bad input, and the rendered report."""

import json
import math

import pytest
import torch

from deepfeed.core.evaluate.evaluation import (
    EMPTY_GENERATION,
    NO_PROMPT,
    NO_REFERENCE,
    EvaluationConfig,
    Generation,
    _greedy_logits,
    generate_logits,
    generate_logits_from_draft,
    generate_torch,
    perplexity,
    score_answers,
    torch_logits,
)
from deepfeed.core.evaluate.report import FAIL, render_html, write_report
from deepfeed.core.evaluate.safety import ToxicityScorer
from deepfeed.core.evaluate.scoring import EvaluationRequest, run_evaluation
from deepfeed.core.train.flops import flops_per_token
from deepfeed.core.train.modeling import load_model, load_tokenizer, prompt_ids
from tests.conftest import PAIRS

RECORDS = [
    {
        "record_id": str(i),
        "kind": "pair",
        "prompt": p,
        "response": r,
        "text": None,
        "lang": "zh" if "？" in p else "en",
        "tags": [],
        "meta": None,
    }
    for i, (p, r) in enumerate(PAIRS)
]
FAST = EvaluationConfig(max_new_tokens=5, batch_size=3, generation_batch_size=4, bootstrap_samples=50)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)


def test_perplexity_of_a_random_model_is_near_the_vocabulary_size(llama):
    model, tokenizer = llama
    result = perplexity(torch_logits(model), tokenizer, RECORDS, EvaluationConfig(batch_size=3))
    assert 0.5 * len(tokenizer) < result["perplexity"] < 2 * len(tokenizer)
    # batch size must not change the answer (padding is masked out)
    again = perplexity(torch_logits(model), tokenizer, RECORDS, EvaluationConfig(batch_size=8))
    assert again["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)


def test_logits_only_decoding_gives_the_same_answers_as_generate(tiny_llama):
    model, tokenizer = load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)
    with torch.no_grad():  # a fresh tiny model answers newlines only; larger random weights answer words
        torch.manual_seed(0)
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.3)
    prompts = [r["prompt"] for r in RECORDS]
    cached = generate_torch(model, tokenizer, prompts, FAST)
    recomputed = generate_logits(torch_logits(model), tokenizer, prompts, FAST)
    assert cached.answers == recomputed.answers and any(cached.answers)
    assert cached.new_tokens == recomputed.new_tokens <= len(prompts) * FAST.max_new_tokens
    assert cached.token_ids == recomputed.token_ids

    # Checking drafts gives the artifact's own greedy answers whatever the drafts: right,
    # wrong from the first token, cut short, or empty.
    other = [list(reversed(t)) for t in cached.token_ids]
    cut = [t[:2] for t in cached.token_ids]
    for drafts in (cached.token_ids, other, cut, [[] for _ in prompts]):
        checked = generate_logits_from_draft(torch_logits(model), tokenizer, prompts, drafts, FAST)
        assert checked.token_ids == cached.token_ids and checked.answers == cached.answers

    # Rows that differ from their draft are redrafted and checked again: by the model's
    # own continuation (what a KV-cache twin drafts), by a wrong one, or by nothing; the
    # answers stay the artifact's own, each round confirming at least one token.
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rounds = []

    def own(rows, budget):
        rounds.append(len(rows))
        return _greedy_logits(torch_logits(model), rows, budget, eos, pad)

    for redraft in (own, lambda rows, budget: [[5, 6, 7]] * len(rows), lambda rows, budget: [[] for _ in rows]):
        checked = generate_logits_from_draft(torch_logits(model), tokenizer, prompts, other, FAST, redraft)
        assert checked.token_ids == cached.token_ids and checked.answers == cached.answers
    assert rounds and len(rounds) <= 2  # the own continuation is right the first time


def test_flops_per_token_counts_every_linear_layer_and_attention(llama):
    model, tokenizer = llama
    ids = torch.tensor([prompt_ids(tokenizer, "What is the capital of France?")])
    flops = flops_per_token(model, ids)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    # 2 FLOPs per weight per token for the projections, plus attention over the context
    assert 2 * linear < flops["prefill_flops_per_token"] < 2 * linear * 1.5
    assert 2 * linear < flops["decode_flops_per_token"] < 2 * linear * 1.5
    assert flops["flops_context_tokens"] == ids.shape[1]


def test_answers_are_scored_with_exclusions_counted():
    records = [
        {
            "record_id": "a",
            "prompt": "q1",
            "response": "The capital of France is Paris.",
            "lang": "en",
            "meta": json.dumps({"label": "geography"}),
        },
        {"record_id": "b", "prompt": "q2", "response": "", "lang": "en", "meta": None},
        {"record_id": "c", "prompt": "q3", "response": "高血压是血压持续升高的疾病。", "lang": "zh", "meta": None},
    ]
    generation = Generation(
        ["Paris is the capital of France, geography.", "", "高血压是疾病"], new_tokens=12, seconds=2.0
    )
    scores = score_answers(records, generation, FAST, ToxicityScorer())
    assert scores.exclusions == {NO_REFERENCE: 1, EMPTY_GENERATION: 1}
    assert scores.metrics["referenced"] == 2 and 0 < scores.metrics["token_f1"] < 1
    assert scores.metrics["label_f1_micro"] == 1.0 and scores.metrics["toxicity_pass_rate"] == 1.0
    assert scores.metrics["tokens_per_second"] == 6.0 and scores.metrics["latency_ms_per_answer"] == pytest.approx(
        2000 / 3
    )
    assert [s["token_f1"] is None for s in scores.samples] == [False, True, False]


def test_candidates_with_broken_artifacts_and_champion_still_report(tiny_llama, tmp_path):
    records = RECORDS + [
        {
            "record_id": "t",
            "kind": "text",
            "prompt": None,
            "response": None,
            "text": "A plain note about blood pressure.",
            "lang": "en",
            "tags": [],
            "meta": None,
        }
    ]
    broken = tmp_path / "compressed"
    (broken / "onnx").mkdir(parents=True)
    (broken / "compression.json").write_text(
        json.dumps({"paths": {"torch_int8": "torch_int8", "pruned": "pruned", "onnx_int8": "onnx/model_int8.onnx"}})
    )
    (broken / "onnx" / "model_int8.onnx").write_bytes(b"not a model")
    outcome = run_evaluation(
        EvaluationRequest(
            tiny_llama,
            records,
            FAST,
            compressed_dir=broken,
            champion_checkpoint=tmp_path / "no-champion",
            log=lambda m: None,
            artifacts=("torch_int8", "onnx_int8", "onnx_kv_int8"),
        )
    )
    names = [c.name for c in outcome.candidates]
    assert names == ["base", "champion", "challenger", "torch_int8", "onnx_int8", "onnx_kv_int8"]
    challenger = outcome.by_name("challenger")
    assert challenger.error is None and challenger.metrics["generated"] == len(RECORDS)
    assert challenger.exclusions[NO_PROMPT] == 1
    assert {
        "perplexity",
        "token_f1",
        "bleu4",
        "bleu4_ci_low",
        "chrf",
        "toxicity_pass_rate",
        "prefill_flops_per_token",
        "size_mb",
        "peak_memory_mb",
    } <= set(challenger.metrics)
    assert all(outcome.by_name(n).error for n in ("torch_int8", "onnx_int8", "champion"))
    assert outcome.by_name("onnx_kv_int8").error.startswith("not built")
    # an unloadable champion fails the gate closed, naming it
    assert (
        not outcome.gate.passed
        and outcome.gate.failed[0].name == "champion"
        and "could not be re-scored" in outcome.gate.failed[0].detail
    )
    assert any(t.startswith("challenger: generate") for t in outcome.timings)

    files = write_report(tmp_path / "report", outcome, {"data hash": "abc123"}, 0.03, training_losses=[3.0, 2.5, 2.1])
    markdown = files["markdown"].read_text()
    assert "KEEP the champion" in markdown and "❌ **champion**: could not be re-scored" in markdown
    assert "Did feeding help? Not measured: the base model was not scored (no base checkpoint given)" in markdown
    assert "abc123" in markdown and "| challenger | no prompt (plain-text record): perplexity only | 1 |" in markdown
    assert {"plot:Training loss", "plot:Answer quality with confidence intervals", "plot:Latency vs size"} <= set(files)
    page = files["html"].read_text()
    assert "Keep the champion" in page and page.count("data:image/png;base64,") == len(
        [k for k in files if k.startswith("plot:")]
    )
    summary = json.loads(files["metrics"].read_text())
    assert summary["gate"]["passed"] is False and summary["candidates"][2]["name"] == "challenger"


def test_empty_eval_set_and_unloadable_challenger(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="evaluation set is empty"):
        run_evaluation(EvaluationRequest(tiny_llama, [], FAST))
    outcome = run_evaluation(EvaluationRequest(tmp_path / "missing", RECORDS, FAST, log=lambda m: None))
    assert outcome.by_name("challenger").error and not outcome.gate.passed
    assert "could not be evaluated" in outcome.gate.reasons[0]


def test_headline_colours_a_drop_over_the_gate_red(tiny_llama):
    from deepfeed.core.evaluate.evaluation import generation_records
    from deepfeed.core.evaluate.scoring import paired_comparisons

    outcome = run_evaluation(
        EvaluationRequest(
            tiny_llama, RECORDS, FAST, champion_checkpoint=tiny_llama, log=lambda m: None, compression_passed=True
        )
    )
    assert outcome.gate.passed  # the same model against itself loses nothing
    same = outcome.comparison("challenger", "champion")["perplexity"]
    assert same.difference == 0 and same.relative_low == same.relative_high == 0
    # Every record's NLL up by log(1.05) per token: perplexity +5% on every resample.
    challenger = outcome.by_name("challenger")
    per = challenger.per_record
    per["nll"] = [None if n is None else n + math.log(1.05) * t for n, t in zip(per["nll"], per["tokens"])]
    challenger.metrics["perplexity"] *= 1.05
    outcome.comparisons = paired_comparisons(
        outcome.candidates, generation_records(RECORDS, FAST.max_generation_records)[0], FAST
    )
    worse = outcome.comparison("challenger", "champion")["perplexity"]
    assert worse.relative_high == pytest.approx(-0.05, abs=1e-3)
    page = render_html(outcome, {}, {}, 0.03)
    assert f'style="color:{FAIL}"' in page and "(+5.0%)" in page


def test_generation_by_length_returns_answers_in_prompt_order(llama):
    _, tokenizer = llama
    prompts = ["a much longer prompt than the others by far", "short", "medium length one"]
    seen = []

    def echo(batch):
        seen.extend(batch)
        return Generation([p.upper() for p in batch], len(batch), 1.0)

    from deepfeed.core.evaluate.evaluation import by_length

    result = by_length(tokenizer, prompts, echo)
    assert seen == ["short", "medium length one", prompts[0]]
    assert result.answers == [p.upper() for p in prompts] and result.new_tokens == 3


def test_flops_per_token_for_every_artifact_kind(tiny_llama, tmp_path):
    """torch int8 (FlopCounterMode with the int8 matmul registered) and the ONNX graphs
    (matrix products under shape inference) count what the fp32 model counts; the
    logits-only graphs decode by re-running the whole sequence, and say so in FLOPs."""
    from deepfeed.core.compress.compression import CompressionConfig, compress_checkpoint, write_json
    from deepfeed.core.evaluate.scoring import DESCRIPTIONS

    summary = compress_checkpoint(tiny_llama, tmp_path / "compressed", CompressionConfig())
    write_json(tmp_path / "compressed" / "compression.json", summary)
    outcome = run_evaluation(
        EvaluationRequest(
            tiny_llama,
            RECORDS[:4],
            FAST,
            compressed_dir=tmp_path / "compressed",
            log=lambda m: None,
            artifacts=tuple(DESCRIPTIONS),
            generate_compressed=False,
        )
    )
    fp32 = outcome.by_name("challenger").metrics
    context = fp32["flops_context_tokens"]
    assert fp32["prefill_flops_per_token"] > 0 and fp32["decode_flops_per_token"] > 0
    config = json.loads((tiny_llama / "config.json").read_text())
    assert summary["details"]["onnx_kv_graph"] == "genai_builder"
    for name in DESCRIPTIONS:
        c = outcome.by_name(name)
        assert c.error is None and not c.notes, (name, c.error, c.notes)
        # The builder's KV graph reads rotary angles from a table instead of computing
        # positions x inverse frequencies, a product of head_dim FLOPs per token torch counts.
        rotary = config["hidden_size"] // config["num_attention_heads"] if name.startswith("onnx_kv") else 0
        expected_prefill = fp32["prefill_flops_per_token"] - rotary
        assert c.metrics["prefill_flops_per_token"] == pytest.approx(expected_prefill, rel=1e-6), name
        if name in ("onnx_fp32", "onnx_int8"):
            assert c.metrics["decode_flops_per_token"] > context * fp32["decode_flops_per_token"] * 0.9, name
        else:
            expected_decode = fp32["decode_flops_per_token"] - rotary
            assert c.metrics["decode_flops_per_token"] == pytest.approx(expected_decode, rel=1e-6), name


def test_onnx_flops_of_a_one_matmul_graph_with_symbolic_dims(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from deepfeed.core.train.flops import onnx_flops_per_token

    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["batch", "sequence", 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], [0.0] * 32)
    graph = helper.make_graph([helper.make_node("MatMul", ["input_ids", "w"], ["logits"])], "g", [x], [y], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    flops = onnx_flops_per_token(path, 5)
    assert flops["prefill_flops_per_token"] == 2 * 8 * 4 and flops["decode_flops_per_token"] == 6 * 2 * 8 * 4


def test_champion_scores_are_reused_only_for_the_same_version_records_and_settings(tiny_llama, tmp_path):
    from deepfeed.core.evaluate.score_cache import eval_set_hash, find_scores, save_scores, score_cache_key
    from deepfeed.core.platform.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    first = run_evaluation(EvaluationRequest(tiny_llama, RECORDS, FAST, log=lambda m: None))
    eval_hash = eval_set_hash(RECORDS)
    key = score_cache_key("3", str(tiny_llama), eval_hash, FAST)
    save_scores(store, key, first.by_name("challenger"), first.samples, {"evaluated_at": "2026-11-29T22:00:00+00:00"})

    assert find_scores(store, score_cache_key("4", str(tiny_llama), eval_hash, FAST)) is None
    assert find_scores(store, score_cache_key("3", str(tiny_llama), eval_set_hash(RECORDS[:-1]), FAST)) is None
    assert (
        find_scores(
            store,
            score_cache_key(
                "3", str(tiny_llama), eval_hash, EvaluationConfig(max_new_tokens=6, batch_size=3, bootstrap_samples=50)
            ),
        )
        is None
    )
    cached = find_scores(store, key)
    assert cached["result"]["metrics"] == first.by_name("challenger").metrics
    assert [s["answer"] for s in cached["samples"]] == [s["answer"] for s in first.samples]

    # The champion is not loaded (its path does not exist) and the gate still compares.
    outcome = run_evaluation(
        EvaluationRequest(
            tiny_llama,
            RECORDS,
            FAST,
            champion_checkpoint=tmp_path / "not-loaded",
            log=lambda m: None,
            champion_scores=cached,
            compression_passed=True,
        )
    )
    champion = outcome.by_name("champion")
    assert champion.error is None and champion.metrics == cached["result"]["metrics"]
    assert "2026-11-29T22:00:00" in champion.notes["re-scoring"]
    assert not any(t.startswith("champion") for t in outcome.timings)
    assert outcome.gate.passed  # the same model as its cached self
    page = render_html(outcome, {}, {}, 0.03)
    assert "scores (speed and memory measured then) are reused" in page


def test_artifact_size_counts_the_weight_files_of_every_kind(tmp_path):
    from deepfeed.core.train.flops import PeakMemory, weights_size_mb

    int8 = tmp_path / "torch_int8"  # the torch int8 artifact holds a .pt state dict, no safetensors
    int8.mkdir()
    (int8 / "model_int8.pt").write_bytes(b"\0" * 2**20)
    (int8 / "config.json").write_text("{}" * 1000)
    assert weights_size_mb(int8) == 1.0
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"\0" * 2**19)
    assert weights_size_mb(graph) == 0.5
    # The peak is measured above a baseline that freed memory was trimmed from.
    with PeakMemory() as memory:
        block = bytearray(64 * 2**20)
        block[::4096] = b"\1" * len(block[::4096])  # touch every page
    del block
    assert memory.peak_mb >= 48
