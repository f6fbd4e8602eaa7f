"""The planner's parameter counts are checked against models transformers builds from the
same config.json; its memory arithmetic against hand-computable cases and autograd's own
saved tensors; its tiers against the required sizing (docs/requirements.md §9)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from deepfeed.tools import planner as P

GiB = 1024**3

TINY = {
    "llama": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "llama-bias-tied-headdim": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=24,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
        vocab_size=100,
    ),
    "qwen2": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=150,
        tie_word_embeddings=False,
    ),
    "qwen2-tied": dict(
        model_type="qwen2",
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=1,
        vocab_size=90,
        tie_word_embeddings=True,
    ),
    "mistral": dict(
        model_type="mistral",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    "qwen3": dict(
        model_type="qwen3",
        hidden_size=64,
        intermediate_size=96,
        head_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=False,
    ),
    "deepseek_v3": dict(
        model_type="deepseek_v3",
        architectures=["DeepseekV3ForCausalLM"],
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=12,
        n_group=2,
        topk_group=1,
        vocab_size=128,
    ),
    "deepseek_v3-noqlora-bias": dict(
        model_type="deepseek_v3",
        hidden_size=48,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=2,
        first_k_dense_replace=2,
        kv_lora_rank=8,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=8,
        v_head_dim=8,
        attention_bias=True,
        n_group=1,
        topk_group=1,
        vocab_size=64,
    ),
}


def _write(tmp_path, cfg: dict):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _hf_model(folder, device="cpu"):
    cfg = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights appear once


@pytest.mark.parametrize("name", sorted(TINY))
def test_param_count_matches_tiny_transformers_model(tmp_path, name):
    folder = _write(tmp_path, TINY[name])
    torch.manual_seed(0)
    model = _hf_model(folder)
    plan = P.plan(folder)
    assert plan.params.total == _numel(model)
    assert plan.to_dict()["params"]["total"] == _numel(model)


@pytest.mark.parametrize("preset", ["7b", "13b", "70b"])
def test_param_count_matches_full_size_presets_on_meta_device(tmp_path, preset):
    cfg, _ = P.load_config(preset)
    folder = _write(tmp_path, cfg)
    model = _hf_model(folder, device="meta")  # shapes only, no memory
    assert P.plan(preset).params.total == _numel(model)


def test_well_known_sizes_of_the_presets():
    billions = {k: P.plan(k).params.total / 1e9 for k in ("7b", "13b", "70b", "v3")}
    assert billions["7b"] == pytest.approx(7.62, abs=0.01)
    assert billions["13b"] == pytest.approx(13.02, abs=0.01)
    assert billions["70b"] == pytest.approx(70.55, abs=0.01)
    # DeepSeek-V3 as transformers 4.57.6 builds it (measured once on the meta device; the
    # full build takes ~20 s): the published 671B, without the MTP layer.
    assert P.plan("v3").params.total == 671_026_404_352
    assert P.plan("v3").params.active / 1e9 == pytest.approx(37.5, abs=0.5)  # "37B activated"


@pytest.mark.parametrize(
    "name,targets",
    [
        ("llama", "all-linear"),
        ("qwen2", ["q_proj", "v_proj"]),
        ("deepseek_v3", "all-linear"),
        ("deepseek_v3", ["kv_b_proj", "down_proj"]),
    ],
)
def test_lora_params_match_peft(tmp_path, name, targets):
    peft = pytest.importorskip("peft")
    folder = _write(tmp_path, TINY[name])
    model = _hf_model(folder)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    shape = P.shape_from_config(TINY[name])
    as_list = [targets] if isinstance(targets, str) else targets
    assert P.lora_params(shape, 4, as_list) == trainable


@pytest.mark.parametrize("name", ["llama", "deepseek_v3"])
def test_kv_cache_formula_matches_transformers_cache(tmp_path, name):
    folder = _write(tmp_path, TINY[name])
    torch.manual_seed(0)
    model = _hf_model(folder).eval()
    seq, batch = 10, 3
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 64, (batch, seq)), use_cache=True)
    cache = out.past_key_values
    cached = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * 4
    shape = P.shape_from_config(TINY[name])
    # transformers keeps full K/V even for MLA; the latent cache is what MLA servers keep.
    assert P.kv_cache_bytes(shape, seq, batch, "fp32", decompressed=True) == cached
    if name == "deepseek_v3":
        cfg = TINY[name]
        latent = 3 * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * seq * batch * 4
        assert P.kv_cache_bytes(shape, seq, batch, "fp32") == latent < cached


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_activation_estimate_matches_autograd_saved_tensors(model_type):
    """The no-checkpointing activation model against what autograd actually keeps for a
    small bf16 model (SDPA); tensors are counted once per storage, parameters excluded."""
    cfg = dict(
        model_type=model_type,
        hidden_size=256,
        intermediate_size=704,
        head_dim=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=300,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**cfg), dtype=torch.bfloat16, attn_implementation="sdpa"
    ).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    batch, seq = 2, 128
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    log_softmax = batch * seq * cfg["vocab_size"] * 4  # the loss's fp32 saved output
    measured = sum(seen.values()) - log_softmax
    shape = P.shape_from_config(cfg)
    estimate = batch * seq * 2 * sum(layer.saved_per_token for layer in shape.layers)
    assert estimate == pytest.approx(measured, rel=0.10)


def test_weight_bytes_per_dtype():
    counts = P.plan("7b").params
    assert P.weight_bytes(counts, "fp32") == 4 * counts.total
    assert P.weight_bytes(counts, "bf16") == P.weight_bytes(counts, "fp16") == 2 * counts.total
    int8, int4 = P.weight_bytes(counts, "int8"), P.weight_bytes(counts, "int4")
    # 16-bit embeddings and lm_head (1.1B of 7.6B) keep int8 well above half of bf16.
    assert 0.5 * 2 * counts.total < int8 < 0.6 * 2 * counts.total
    assert 0.5 * int8 < int4 < 0.7 * int8
    with pytest.raises(P.PlannerError, match="unknown dtype"):
        P.weight_bytes(counts, "fp6")


def test_kv_cache_by_hand_for_gqa_and_mla():
    # Qwen-7B: 28 layers x (K+V) x 4 kv heads x 128 dims x 2 bytes per token.
    p = P.plan("7b", context=4096, batch=2)
    assert p.kv_cache == 28 * 2 * 4 * 128 * 2 * 4096 * 2
    # DeepSeek-V3 MLA: 61 layers x (512 latent + 64 rope) x 2 bytes, ~57x less than full K/V.
    v3 = P.plan("v3", context=1000, batch=1)
    assert v3.kv_cache == 61 * (512 + 64) * 2 * 1000
    assert v3.kv_cache_decompressed == 61 * 128 * (192 + 128) * 2 * 1000


def test_training_memory_accounting():
    shape = P.shape_from_config(P.load_config("7b")[0])
    n = P.count_params(shape).total
    kw = dict(context=2048, batch=1)
    sc = P.SCENARIO_BY_KEY
    full = P.memory(shape, sc["full-mixed-gc"], **kw)
    # ZeRO paper: 2 + 2 + 12 bytes per parameter for mixed-precision AdamW.
    assert full.weights + full.gradients + full.optimizer == 16 * n
    assert P.memory(shape, sc["full-fp32-gc"], **kw).optimizer == 8 * n
    # ZeRO-3 shards states N ways and adds only a bounded gather buffer.
    z8 = P.memory(shape, sc["full-mixed-gc"], n_gpus=8, **kw)
    assert z8.weights + z8.gradients + z8.optimizer == pytest.approx(16 * n / 8)
    assert 0 < z8.buffers <= P.ZERO3_MAX_LIVE_PARAMS * 2
    totals = [P.memory(shape, sc["full-mixed-gc"], n_gpus=g, **kw).total for g in (1, 2, 4, 8)]
    assert totals == sorted(totals, reverse=True)
    # Checkpointing trades activations for compute; LoRA and QLoRA shrink the rest.
    assert (
        P.memory(shape, sc["lora-bf16-gc"], **kw).activations < P.memory(shape, sc["lora-bf16"], **kw).activations / 3
    )
    lora, qlora = P.memory(shape, sc["lora-bf16-gc"], **kw), P.memory(shape, sc["qlora-gc"], **kw)
    assert qlora.total < lora.total < full.total
    assert lora.gradients == 4 * P.lora_params(shape, 16)
    # Without checkpointing activations grow linearly with tokens.
    a1 = P.activation_bytes(shape, 1000, 2, grad_ckpt=False)
    assert P.activation_bytes(shape, 3000, 2, grad_ckpt=False) == pytest.approx(3 * a1)


def test_7b_fits_one_24gb_card_for_bf16_inference_and_lora_with_checkpointing():
    p = P.plan("7b")  # context 4096, batch 1
    rtx4090 = P.Tier(P.CARDS["RTX4090"], 1)
    for key in ("infer-bf16", "lora-bf16-gc", "qlora-gc"):
        tier = p.estimates[key].smallest_tier
        assert tier.count == 1 and tier.card.memory_mib <= 24564, key
        assert p.fits(key, rtx4090)
    # ...but not without checkpointing, and not full fine-tuning.
    assert not p.fits("lora-bf16", rtx4090)
    assert not p.fits("full-mixed-gc", rtx4090)


def test_70b_bf16_inference_needs_several_80gb_cards():
    p = P.plan("70b")
    single = [P.Tier(c, 1) for c in P.CARDS.values() if c.memory_mib <= 81920]
    assert not any(p.fits("infer-bf16", t) for t in single)
    assert not p.fits("infer-bf16", P.Tier(P.CARDS["A100-80"], 1))
    assert p.fits("infer-bf16", P.Tier(P.CARDS["A100-80"], 2))
    assert p.estimates["infer-bf16"].single.weights > 130 * GiB


@pytest.mark.parametrize(
    "preset,label,tier_name,smaller",
    [
        ("7b", "7B", "1x RTX 4090 24GB", None),
        ("13b", "13B", "2x RTX A6000 48GB", "1x RTX 4090 24GB"),
        ("70b", "70B", "8x A100 80GB", "2x RTX A6000 48GB"),
    ],
)
def test_article_tiers_are_reproduced(preset, label, tier_name, smaller):
    """Each size class fits the article's hardware for serving and LoRA fine-tuning, and
    does not fit the hardware of the class below: the "enough" principle."""
    p = P.plan(preset)
    assert p.article[0] == label and p.article[1].name == tier_name
    for key in ("infer-bf16", "lora-bf16-gc", "qlora-gc"):
        assert p.estimates[key].article_fit, key
    if smaller:
        lower = next(t for t in P.TIERS if t.name == smaller)
        assert not p.fits("infer-bf16", lower)
        assert not p.fits("lora-bf16-gc", lower)
    # Full fine-tuning of 70B needs 16 bytes x 70.6B / 8 = 141 GB per GPU: beyond 8x A100.
    if preset == "70b":
        assert not p.estimates["full-mixed-gc"].article_fit


def test_article_tiers_are_in_the_table():
    names = {t.name for t in P.TIERS}
    assert {
        "1x RTX 4090 24GB",
        "2x RTX A6000 48GB",
        "8x A100 80GB",
        "1x L4 24GB",
        "1x A100 40GB",
        "1x H100 80GB",
        "1x H200 141GB",
    } <= names
    assert [t.total_bytes for t in P.TIERS] == sorted(t.total_bytes for t in P.TIERS)


def test_table_and_dict_render():
    p = P.plan("v3", context=2048, batch=2, gpus=4)
    table = p.to_table()
    for sc in P.SCENARIOS:
        assert sc.label in table
    assert "DeepSeek-V3" in table and "active per token" in table and "per GPU x4" in table
    d = json.loads(json.dumps(p.to_dict()))
    assert d["params"]["total"] == 671_026_404_352 and d["context"] == 2048
    assert set(d["estimates"]) == {s.key for s in P.SCENARIOS}
    assert d["article_tier"] is None  # beyond the article's 7B/13B/70B table


def test_config_path_and_file_both_work(tmp_path):
    folder = _write(tmp_path, TINY["qwen2"])
    assert P.plan(folder).params.total == P.plan(folder / "config.json").params.total


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(P.PlannerError, match="neither a preset .* nor an existing path"):
        P.plan(tmp_path / "nope")
    with pytest.raises(P.PlannerError, match="no config.json in"):
        P.plan(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(P.PlannerError, match="not valid JSON"):
        P.plan(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(P.PlannerError, match="unsupported model_type 'gpt2'.*llama"):
        P.plan(tmp_path)
    cfg = dict(TINY["llama"])
    del cfg["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(P.PlannerError, match="lacks 'hidden_size'"):
        P.plan(tmp_path)
    with pytest.raises(P.PlannerError, match="positive"):
        P.plan("7b", context=0)


def test_tensor_parallel_splits_kv_cache_only_by_kv_heads():
    infer = P.SCENARIO_BY_KEY["infer-bf16"]
    kw = dict(context=8192, batch=4)
    qwen = P.shape_from_config(P.load_config("7b")[0])  # 4 KV heads
    kv = P.kv_cache_bytes(qwen, 8192, 4)
    assert P.memory(qwen, infer, n_gpus=2, **kw).kv_cache == kv / 2
    assert P.memory(qwen, infer, n_gpus=8, **kw).kv_cache == kv / 4  # replicated beyond 4
    v3 = P.shape_from_config(P.load_config("v3")[0])  # one latent per token
    assert P.memory(v3, infer, n_gpus=8, **kw).kv_cache == P.kv_cache_bytes(v3, 8192, 4)


def test_lora_targets_accept_a_cli_string():
    shape = P.shape_from_config(TINY["llama"])
    assert P.lora_params(shape, 8, "q_proj, v_proj") == P.lora_params(shape, 8, ["q_proj", "v_proj"])
    assert P.lora_params(shape, 8, "all-linear") == P.lora_params(shape, 8)
    assert P.plan("7b", lora_targets="q_proj,v_proj").lora_targets == ("q_proj", "v_proj")
