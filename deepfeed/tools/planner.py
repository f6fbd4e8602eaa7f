"""Hardware planner: how much GPU memory a model needs, and which GPUs are enough.

Everything is derived from the model's Hugging Face ``config.json``; weights are never
loaded, so a 671B config plans as fast as a 7B one. Parameter counts are exact for the
supported architectures (tests compare them with models that transformers builds from
the same config). Memory figures are estimates whose assumptions are spelled out next to
the code and in ``Plan.assumptions``; they are meant for choosing hardware by the
article's "enough" principle (docs/requirements.md §9), not for predicting an allocator's exact peak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from deepfeed.core.train.memory_layout import DTYPE_BYTES, TrainingLayout, training_layout

GiB = 1024**3

PRESETS = {
    "7b": "deepseek-r1-distill-qwen-7b.json",
    "13b": "llama-2-13b.json",
    "70b": "deepseek-r1-distill-llama-70b.json",
    "v3": "deepseek-v3.json",
    "671b": "deepseek-v3.json",
}

SUPPORTED_MODEL_TYPES = ("deepseek_v3", "llama", "mistral", "qwen2", "qwen3")

# Group-wise 4-bit formats (GPTQ/AWQ, bitsandbytes NF4) keep a 16-bit scale per group of
# 64 weights; that is 0.25 extra bits per weight, a few percent of a 70B model.
INT4_GROUP = 64
# NF4 with double quantisation (what QLoRA uses) costs ~0.127 bits/weight for scales.
NF4_SCALE_BITS = 0.127

# CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers exist before the first tensor.
GPU_OVERHEAD_BYTES = 1 * GiB
# Cap on the parameters gathered at once by the sharded trainer (and by ZeRO-3's default
# stage3_max_live_parameters, for a model trained elsewhere).
ZERO3_MAX_LIVE_PARAMS = 1_000_000_000
# A plan that uses more than this share of a card is flagged: fragmentation alone can
# eat the rest.
TIGHT_FRACTION = 0.9
DEFAULT_LORA_TARGETS = ("all-linear",)


class PlannerError(ValueError):
    """A model argument the planner cannot read: the message says what and why."""


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool = False
    copies: int = 1  # routed experts repeat the same projection

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features * self.copies

    @property
    def biases(self) -> int:
        return self.out_features * self.copies if self.bias else 0


@dataclass(frozen=True)
class Layer:
    """One decoder layer, as far as memory is concerned."""

    linears: tuple[Linear, ...]
    norms: tuple[int, ...]
    router: int  # MoE gate weight, a plain Parameter (not a Linear, so never LoRA'd)
    # Activation values per token kept for backward without checkpointing, in units of
    # the compute dtype (fp32 norm upcasts are counted as two units).
    saved_per_token: int
    # Widest set of intermediates alive at once in a forward pass, per token.
    transient_per_token: int

    def linear_params(self, kind: str | None = None) -> int:
        return sum(lin.weights + lin.biases for lin in self.linears if kind is None or _kind(lin.name) == kind)

    @property
    def params(self) -> int:
        return self.linear_params() + sum(self.norms) + self.router


def _kind(name: str) -> str:
    if name.startswith("experts."):
        return "experts"
    if name.startswith(("mlp.", "shared.")):
        return "mlp"
    return "attention"


@dataclass(frozen=True)
class ModelShape:
    name: str
    model_type: str
    architecture: str
    vocab: int
    hidden: int
    layers: tuple[Layer, ...]
    tied_embeddings: bool
    kv_per_token_per_layer: int  # cached values per token per layer
    kv_decompressed_per_token_per_layer: int | None = None  # MLA without latent caching
    kv_heads: int = 1  # how many ways tensor parallelism can split the cache (MLA: one latent)
    n_routed_experts: int = 0
    experts_per_token: int = 0
    native_dtype: str | None = None
    max_position: int | None = None
    notes: tuple[str, ...] = ()


def _get(cfg: dict, key: str, where: str, default: Any = ...) -> Any:
    value = cfg.get(key, default)
    if value is ...:
        raise PlannerError(
            f"{where}: config lacks '{key}', which the planner needs for a {cfg.get('model_type')} model"
        )
    return value


def _llama_like(cfg: dict, where: str) -> ModelShape:
    mt = cfg["model_type"]
    h = int(_get(cfg, "hidden_size", where))
    n_layers = int(_get(cfg, "num_hidden_layers", where))
    heads = int(_get(cfg, "num_attention_heads", where))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(_get(cfg, "intermediate_size", where))
    # Qwen2 hard-codes biases on q/k/v only; the others follow their config flags.
    qkv_bias = True if mt == "qwen2" else bool(cfg.get("attention_bias", False))
    o_bias = False if mt in ("qwen2", "mistral") else bool(cfg.get("attention_bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False)) if mt == "llama" else False
    q, kv = heads * hd, kv_heads * hd
    linears = (
        Linear("q_proj", h, q, qkv_bias),
        Linear("k_proj", h, kv, qkv_bias),
        Linear("v_proj", h, kv, qkv_bias),
        Linear("o_proj", q, h, o_bias),
        Linear("mlp.gate_proj", h, inter, mlp_bias),
        Linear("mlp.up_proj", h, inter, mlp_bias),
        Linear("mlp.down_proj", inter, h, mlp_bias),
    )
    norms = (h, h) + ((hd, hd) if mt == "qwen3" else ())
    # Saved for backward (checked against autograd's saved tensors of small models): per
    # RMSNorm its fp32 upcast (2 units) and normalised output; q and k as projected,
    # rotate_half'd and rotated (3 each), v; the attention output and the contiguous copy
    # o_proj reads (2q); gate, silu(gate), up and their product for SwiGLU. Flash/SDPA
    # attention keeps no seq x seq matrix. Qwen3's q/k norms add an fp32 upcast each.
    saved = 6 * h + 5 * q + 4 * kv + 4 * inter + (2 * q + 2 * kv if mt == "qwen3" else 0)
    transient = max(h + 2 * q + 2 * kv, h + 3 * inter)
    layer = Layer(linears, norms, 0, saved, transient)
    return ModelShape(
        name=str(cfg.get("_name_or_path") or mt),
        model_type=mt,
        architecture=(cfg.get("architectures") or ["?"])[0],
        vocab=int(_get(cfg, "vocab_size", where)),
        hidden=h,
        layers=(layer,) * n_layers,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        kv_per_token_per_layer=2 * kv,
        kv_heads=kv_heads,
        native_dtype=cfg.get("torch_dtype"),
        max_position=cfg.get("max_position_embeddings"),
    )


def _deepseek_v3(cfg: dict, where: str) -> ModelShape:
    g = lambda k: int(_get(cfg, k, where))  # noqa: E731
    h, heads, n_layers = g("hidden_size"), g("num_attention_heads"), g("num_hidden_layers")
    q_rank = cfg.get("q_lora_rank")
    kv_rank, rope, nope, vdim = (g("kv_lora_rank"), g("qk_rope_head_dim"), g("qk_nope_head_dim"), g("v_head_dim"))
    qk = nope + rope
    bias = bool(cfg.get("attention_bias", False))
    attn: list[Linear] = []
    norms = [h, h, kv_rank]
    if q_rank:
        attn += [Linear("q_a_proj", h, q_rank, bias), Linear("q_b_proj", q_rank, heads * qk)]
        norms.append(q_rank)
    else:
        attn.append(Linear("q_proj", h, heads * qk))
    attn += [
        Linear("kv_a_proj_with_mqa", h, kv_rank + rope, bias),
        Linear("kv_b_proj", kv_rank, heads * (nope + vdim)),
        Linear("o_proj", heads * vdim, h, bias),
    ]
    # Saved for backward, following transformers' implementation as for Llama: the two
    # layer norms (3h each), the q/kv latents through their norms (3 units each), the
    # rotary parts (3 each), kv_b's output (v is a view of it), the concatenated q and k
    # the attention reads, and its output with the contiguous copy o_proj reads.
    q_path = (3 * q_rank if q_rank else 0) + heads * (3 * rope + qk)
    kv_path = 3 * kv_rank + 3 * rope + heads * (nope + vdim) + heads * qk
    attn_saved = 6 * h + q_path + kv_path + 2 * heads * vdim
    attn_transient = h + heads * qk * 2 + heads * (nope + vdim) + heads * vdim

    def mlp(prefix: str, inter: int, copies: int = 1) -> tuple[Linear, ...]:
        return (
            Linear(f"{prefix}.gate_proj", h, inter, copies=copies),
            Linear(f"{prefix}.up_proj", h, inter, copies=copies),
            Linear(f"{prefix}.down_proj", inter, h, copies=copies),
        )

    inter, moe_inter = g("intermediate_size"), g("moe_intermediate_size")
    n_routed, top_k = g("n_routed_experts"), g("num_experts_per_tok")
    shared_inter = moe_inter * int(cfg.get("n_shared_experts") or 0)
    dense = Layer(
        tuple(attn) + mlp("mlp", inter), tuple(norms), 0, attn_saved + 4 * inter, max(attn_transient, h + 3 * inter)
    )
    # A token's MoE activations: the router's fp32 input and scores; per routed expert the
    # gathered input, the SwiGLU intermediates and the output promoted to fp32 for the
    # weighted sum; the shared expert.
    moe_saved = attn_saved + 2 * h + 4 * n_routed + top_k * (3 * h + 4 * moe_inter) + 4 * shared_inter
    moe = Layer(
        tuple(attn) + mlp("experts", moe_inter, n_routed) + mlp("shared", shared_inter),
        tuple(norms),
        n_routed * h,
        moe_saved,
        max(attn_transient, h + 3 * (top_k * moe_inter + shared_inter)),
    )
    first_dense = min(int(cfg.get("first_k_dense_replace", 0)), n_layers)
    notes = [
        "MLA: the KV cache holds the compressed latent (kv_lora_rank) plus the rope key "
        "per token, as vLLM/SGLang do; transformers' eager path caches full K/V "
        "(see kv_cache_decompressed)."
    ]
    if cfg.get("num_nextn_predict_layers"):
        notes.append(
            f"The checkpoint also ships {cfg['num_nextn_predict_layers']} multi-token-"
            "prediction layer(s) that transformers does not load; not counted."
        )
    return ModelShape(
        name=str(cfg.get("_name_or_path") or "deepseek_v3"),
        model_type="deepseek_v3",
        architecture=(cfg.get("architectures") or ["DeepseekV3ForCausalLM"])[0],
        vocab=g("vocab_size"),
        hidden=h,
        layers=(dense,) * first_dense + (moe,) * (n_layers - first_dense),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        kv_per_token_per_layer=kv_rank + rope,
        kv_decompressed_per_token_per_layer=heads * (qk + vdim),
        n_routed_experts=n_routed,
        experts_per_token=top_k,
        native_dtype=cfg.get("torch_dtype"),
        max_position=cfg.get("max_position_embeddings"),
        notes=tuple(notes),
    )


def shape_from_config(cfg: dict, where: str = "config") -> ModelShape:
    """Turn a parsed config.json into the planner's view of the model."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise PlannerError(
            f"{where}: unsupported model_type {mt!r} (architectures "
            f"{cfg.get('architectures')}); the planner supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return _deepseek_v3(cfg, where) if mt == "deepseek_v3" else _llama_like(cfg, where)


def load_config(model: str | Path) -> tuple[dict, str]:
    """Resolve a preset name, a model folder or a config.json path to (config, source)."""
    key = str(model).strip().lower()
    if key in PRESETS:
        ref = resources.files("deepfeed").joinpath("data", "model_configs", PRESETS[key])
        return json.loads(ref.read_text(encoding="utf-8")), f"preset {key}"
    path = Path(model).expanduser()
    if not path.exists():
        raise PlannerError(f"model {str(model)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing path")
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise PlannerError(
            f"no config.json in {path}: the planner reads the model's Hugging Face config (weights are not needed)"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlannerError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise PlannerError(f"{cfg_path} does not hold a JSON object")
    return cfg, str(cfg_path)


# ------------------------------------------------------------------- parameter count


@dataclass(frozen=True)
class ParamCount:
    embedding: int
    lm_head: int
    attention: int
    mlp: int
    experts: int
    router: int
    norms: int
    active: int  # used per token: a MoE model runs top-k of its routed experts
    quantizable: int  # Linear weights inside decoder layers (what int8/int4 schemes quantise)
    quantizable_rows: int  # their output channels, each carrying a per-channel scale

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.attention + self.mlp + self.experts + self.router + self.norms

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "active": self.active,
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "attention": self.attention,
            "mlp": self.mlp,
            "experts": self.experts,
            "router": self.router,
            "norms": self.norms,
        }


@lru_cache(maxsize=64)  # plan() asks for every scenario x tier
def count_params(shape: ModelShape) -> ParamCount:
    emb = shape.vocab * shape.hidden
    head = 0 if shape.tied_embeddings else emb
    layers = shape.layers
    experts = sum(layer.linear_params("experts") for layer in layers)
    active_experts = experts * shape.experts_per_token // shape.n_routed_experts if shape.n_routed_experts else experts
    counts = ParamCount(
        embedding=emb,
        lm_head=head,
        attention=sum(layer.linear_params("attention") for layer in layers),
        mlp=sum(layer.linear_params("mlp") for layer in layers),
        experts=experts,
        router=sum(layer.router for layer in layers),
        norms=sum(sum(layer.norms) for layer in layers) + shape.hidden,
        active=0,
        quantizable=sum(lin.weights for layer in layers for lin in layer.linears),
        quantizable_rows=sum(lin.out_features * lin.copies for layer in layers for lin in layer.linears),
    )
    return replace(counts, active=counts.total - experts + active_experts)


def lora_params(shape: ModelShape, rank: int, targets: Iterable[str] = DEFAULT_LORA_TARGETS) -> int:
    """Trainable LoRA parameters: r x (in + out) per targeted Linear, as peft matches them
    (by module name; "all-linear" means every Linear of the decoder layers, not lm_head)."""
    return _lora_params(shape, rank, frozenset(_targets(targets)))


def _targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    # A CLI passes "q_proj,v_proj"; a bare string must not become a set of letters.
    if isinstance(targets, str):
        targets = targets.split(",")
    return tuple(t.strip() for t in targets if t.strip())


@lru_cache(maxsize=64)
def _lora_params(shape: ModelShape, rank: int, targets: frozenset[str]) -> int:
    total = 0
    for layer in shape.layers:
        for lin in layer.linears:
            if "all-linear" in targets or lin.name.rsplit(".", 1)[-1] in targets:
                total += rank * (lin.in_features + lin.out_features) * lin.copies
    return total


def weight_bytes(counts: ParamCount, dtype: str) -> float:
    """Weights in a storage format. Quantised formats quantise the decoder Linears and keep
    embeddings, lm_head, norms and biases in 16 bit, as int8/int4 toolchains do."""
    if dtype not in DTYPE_BYTES:
        raise PlannerError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    if dtype in ("fp32", "bf16", "fp16"):
        return counts.total * DTYPE_BYTES[dtype]
    rest = (counts.total - counts.quantizable) * 2
    if dtype == "int8":
        return counts.quantizable * 1 + counts.quantizable_rows * 4 + rest
    return counts.quantizable * (0.5 + 2 / INT4_GROUP) + rest


def kv_cache_bytes(
    shape: ModelShape, context: int, batch: int, dtype: str = "bf16", decompressed: bool = False
) -> float:
    per_layer = shape.kv_per_token_per_layer
    if decompressed and shape.kv_decompressed_per_token_per_layer:
        per_layer = shape.kv_decompressed_per_token_per_layer
    return len(shape.layers) * per_layer * context * batch * DTYPE_BYTES[dtype]


# ------------------------------------------------------------------------- memory


def training_state_bytes(counts: ParamCount, layout: TrainingLayout, trainable: int) -> dict[str, float]:
    """Weights, gradients and optimizer state of a training run on one device, in bytes.

    ``trainable`` is the number of trained parameters (all of them for full fine-tuning,
    the adapters' for LoRA/QLoRA)."""
    t = DTYPE_BYTES[layout.trained]
    if layout.method == "full":
        base = 0.0
    elif layout.base == "nf4":
        base = counts.quantizable * (0.5 + NF4_SCALE_BITS / 8) + (counts.total - counts.quantizable) * 2
    else:
        base = counts.total * DTYPE_BYTES[layout.base]
    return {"weights": base + trainable * t, "gradients": trainable * t, "optimizer": 2 * trainable * t}


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    mode: str  # inference | full | lora | qlora
    dtype: str  # weight format (inference) or training precision: fp32 | bf16 | fp16
    grad_ckpt: bool = False


SCENARIOS = (
    Scenario("infer-fp32", "inference fp32", "inference", "fp32"),
    Scenario("infer-bf16", "inference bf16", "inference", "bf16"),
    Scenario("infer-int8", "inference int8", "inference", "int8"),
    Scenario("infer-int4", "inference int4", "inference", "int4"),
    Scenario("full-fp32", "full FT fp32", "full", "fp32"),
    Scenario("full-fp32-gc", "full FT fp32 +GC", "full", "fp32", True),
    Scenario("full-mixed", "full FT mixed", "full", "bf16"),
    Scenario("full-mixed-gc", "full FT mixed +GC", "full", "bf16", True),
    Scenario("lora-bf16", "LoRA bf16", "lora", "bf16"),
    Scenario("lora-bf16-gc", "LoRA bf16 +GC", "lora", "bf16", True),
    Scenario("qlora", "QLoRA 4-bit", "qlora", "bf16"),
    Scenario("qlora-gc", "QLoRA 4-bit +GC", "qlora", "bf16", True),
)
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU, by what holds them."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    buffers: float = 0.0
    overhead: float = GPU_OVERHEAD_BYTES

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.kv_cache
            + self.buffers
            + self.overhead
        )

    def to_dict(self) -> dict[str, float]:
        d = {
            k: getattr(self, k)
            for k in ("weights", "gradients", "optimizer", "activations", "kv_cache", "buffers", "overhead")
        }
        d["total"] = self.total
        return d


def activation_bytes(shape: ModelShape, tokens: int, unit: float, grad_ckpt: bool) -> float:
    # The loss path holds the logits, their fp32 upcast for cross-entropy and its fp32
    # gradient: with a 150k vocabulary this rivals the weights of small models.
    logits = tokens * shape.vocab * (unit + 8)
    if not grad_ckpt:
        return tokens * unit * sum(layer.saved_per_token for layer in shape.layers) + logits
    # Checkpointing keeps each layer's input and recomputes one layer at a time; that layer's
    # activations and their gradients peak after the logits are gone.
    stored = tokens * unit * shape.hidden * len(shape.layers)
    one_layer = 2 * tokens * unit * max(layer.saved_per_token for layer in shape.layers)
    return stored + max(logits, one_layer)


def memory(
    shape: ModelShape,
    scenario: Scenario,
    *,
    context: int,
    batch: int,
    n_gpus: int = 1,
    lora_rank: int = 16,
    lora_targets: Iterable[str] = DEFAULT_LORA_TARGETS,
    kv_dtype: str | None = None,
) -> Memory:
    """Per-GPU memory of a scenario. Several GPUs shard inference by tensor parallelism and
    training by FSDP2 sharding, the trainer's sharding='fsdp' (weights, gradients and
    optimizer states split N ways, one decoder layer gathered at a time); activations
    belong to each GPU's own micro-batch of ``batch`` sequences."""
    counts = count_params(shape)
    n = max(1, int(n_gpus))
    tokens = context * batch
    if scenario.mode == "inference":
        unit = 4.0 if scenario.dtype == "fp32" else 2.0
        kv = kv_cache_bytes(shape, context, batch, kv_dtype or ("fp32" if unit == 4 else "bf16"))
        # Prefill runs one layer at a time over the prompt; generation keeps only the last
        # position's logits (in fp32).
        work = tokens * unit * max(layer.transient_per_token for layer in shape.layers)
        work += batch * shape.vocab * 4
        # Tensor parallelism splits the cache by KV head; with fewer heads than GPUs (GQA)
        # or MLA's single latent, the cache is replicated.
        return Memory(
            weights=weight_bytes(counts, scenario.dtype) / n, kv_cache=kv / min(n, shape.kv_heads), activations=work / n
        )

    layout = training_layout(scenario.mode, scenario.dtype)
    unit = layout.activation_unit
    acts = activation_bytes(shape, tokens, unit, scenario.grad_ckpt)
    gather = 0.0
    if n > 1:
        largest = max(layer.params for layer in shape.layers)
        # FSDP2 gathers one decoder layer while the previous one computes (prefetch).
        gather = min(2 * largest, ZERO3_MAX_LIVE_PARAMS) * unit
    trainable = counts.total if scenario.mode == "full" else lora_params(shape, lora_rank, lora_targets)
    state = training_state_bytes(counts, layout, trainable)
    # Sharding (FSDP / ZeRO-3) splits every one of them N ways.
    return Memory(
        weights=state["weights"] / n,
        gradients=state["gradients"] / n,
        optimizer=state["optimizer"] / n,
        activations=acts,
        buffers=gather,
    )


# --------------------------------------------------------------------------- tiers


@dataclass(frozen=True)
class Card:
    name: str
    memory_mib: int  # as nvidia-smi reports it

    @property
    def bytes(self) -> float:
        return self.memory_mib * 1024**2


CARDS = {
    "L4": Card("L4 24GB", 23034),
    "RTX4090": Card("RTX 4090 24GB", 24564),
    "A100-40": Card("A100 40GB", 40960),
    "A6000": Card("RTX A6000 48GB", 49140),
    "A100-80": Card("A100 80GB", 81920),
    "H100": Card("H100 80GB", 81559),
    "H200": Card("H200 141GB", 143771),
}


@dataclass(frozen=True)
class Tier:
    card: Card
    count: int

    @property
    def name(self) -> str:
        return f"{self.count}x {self.card.name}"

    @property
    def total_bytes(self) -> float:
        return self.card.bytes * self.count


# The article's sizing (docs/requirements.md §9): the size class, by parameters, and the hardware it names.
ARTICLE_TIERS = (
    (10e9, "7B", Tier(CARDS["RTX4090"], 1)),
    (20e9, "13B", Tier(CARDS["A6000"], 2)),
    (100e9, "70B", Tier(CARDS["A100-80"], 8)),
)

TIERS = tuple(
    sorted((Tier(card, n) for card in CARDS.values() for n in (1, 2, 4, 8)), key=lambda t: (t.total_bytes, t.count))
)


def article_tier(total_params: int) -> tuple[str, Tier] | None:
    for limit, label, tier in ARTICLE_TIERS:
        if total_params <= limit:
            return label, tier
    return None


# --------------------------------------------------------------------------- plan


@dataclass
class Estimate:
    scenario: Scenario
    single: Memory  # on one GPU
    sharded: Memory  # per GPU over plan.gpus GPUs (TP for inference, FSDP2 for training)
    smallest_tier: Tier | None
    smallest_tier_memory: Memory | None
    article_fit: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.key,
            "label": self.scenario.label,
            "one_gpu": self.single.to_dict(),
            "per_gpu_sharded": self.sharded.to_dict(),
            "smallest_tier": self.smallest_tier.name if self.smallest_tier else None,
            "smallest_tier_per_gpu": (self.smallest_tier_memory.total if self.smallest_tier_memory else None),
            "article_tier_fits": self.article_fit,
        }


@dataclass
class Plan:
    model: str
    source: str
    shape: ModelShape
    params: ParamCount
    context: int
    batch: int
    gpus: int
    lora_rank: int
    lora_targets: tuple[str, ...]
    lora_params: int
    kv_cache: float
    kv_cache_decompressed: float | None
    article: tuple[str, Tier] | None
    estimates: dict[str, Estimate] = field(default_factory=dict)

    def memory_on(self, scenario: str, tier: Tier) -> Memory:
        return memory(
            self.shape,
            SCENARIO_BY_KEY[scenario],
            context=self.context,
            batch=self.batch,
            n_gpus=tier.count,
            lora_rank=self.lora_rank,
            lora_targets=self.lora_targets,
        )

    def fits(self, scenario: str, tier: Tier) -> bool:
        return self.memory_on(scenario, tier).total <= tier.card.bytes

    @property
    def assumptions(self) -> list[str]:
        return [
            f"Per GPU: {GPU_OVERHEAD_BYTES / GiB:.0f} GiB for CUDA context and workspaces; "
            f"allocator fragmentation is not modelled (totals above {TIGHT_FRACTION:.0%} of "
            "a card are marked tight).",
            "Several GPUs: inference by tensor parallelism, training by FSDP2 (sharding='fsdp'; weights, "
            "gradients and optimizer states sharded; each GPU runs its own micro-batch; "
            "two decoder layers gathered at once, current and prefetched).",
            "Training activations assume SDPA/flash attention (no seq x seq matrix), bf16 "
            "compute (fp32 for fp32 training), HF RMSNorm's fp32 upcast, and the logits' fp32 "
            "loss path; gradient checkpointing (+GC) keeps one input per decoder layer.",
            "int8/int4 quantise the decoder Linears (per-channel int8; int4 with a 16-bit "
            f"scale per {INT4_GROUP} weights) and keep embeddings, lm_head and norms in 16 bit; "
            "QLoRA uses NF4 with double quantisation and fp32 adapters.",
            "Training rows use the trainer's own layout (core.train.memory_layout.training_layout): full "
            "fine-tuning keeps fp32 weights, gradients and AdamW m and v (16 bytes/parameter) "
            "with bf16 autocast for 'mixed'; LoRA keeps the base in bf16 and fp32 adapters.",
            *self.shape.notes,
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "name": self.shape.name,
            "model_type": self.shape.model_type,
            "architecture": self.shape.architecture,
            "native_dtype": self.shape.native_dtype,
            "params": self.params.to_dict(),
            "context": self.context,
            "batch": self.batch,
            "gpus": self.gpus,
            "lora": {"rank": self.lora_rank, "targets": list(self.lora_targets), "params": self.lora_params},
            "weights": {d: weight_bytes(self.params, d) for d in ("fp32", "bf16", "int8", "int4")},
            "kv_cache": self.kv_cache,
            "kv_cache_decompressed": self.kv_cache_decompressed,
            "article_tier": ({"class": self.article[0], "tier": self.article[1].name} if self.article else None),
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "assumptions": self.assumptions,
        }

    def to_table(self) -> str:
        p = self.params
        lines = [
            f"Model      {self.shape.name}  ({self.shape.architecture}, {self.source})",
            f"Parameters {_b(p.total)} total"
            + (f", {_b(p.active)} active per token" if p.experts else "")
            + f"  [embedding {_b(p.embedding)}, lm_head {_b(p.lm_head)}, attention "
            f"{_b(p.attention)}, mlp {_b(p.mlp)}" + (f", experts {_b(p.experts)}" if p.experts else "") + "]",
            "Weights    " + ", ".join(f"{d} {_g(weight_bytes(p, d))}" for d in ("fp32", "bf16", "int8", "int4")),
            f"KV cache   {_g(self.kv_cache)} bf16 at context {self.context} x batch {self.batch}"
            + (f" (decompressed K/V would be {_g(self.kv_cache_decompressed)})" if self.kv_cache_decompressed else ""),
            f"LoRA       rank {self.lora_rank} on {', '.join(self.lora_targets)}: {_b(self.lora_params)} trainable",
            "Article    "
            + (
                f"{self.article[0]} class -> {self.article[1].name}"
                if self.article
                else "beyond the 7B/13B/70B sizing table (docs/requirements.md §9)"
            ),
            "",
        ]
        head = [
            "scenario",
            "weights",
            "grad+opt",
            "act+kv",
            "1 GPU",
            f"per GPU x{self.gpus}",
            "smallest tier (per GPU)",
            "article tier",
        ]
        rows = []
        for e in self.estimates.values():
            m = e.single
            rows.append(
                [
                    e.scenario.label,
                    _g(m.weights),
                    _g(m.gradients + m.optimizer),
                    _g(m.activations + m.kv_cache),
                    _g(m.total),
                    _g(e.sharded.total),
                    _tier_cell(e),
                    "-" if e.article_fit is None else ("fits" if e.article_fit else "no"),
                ]
            )
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

        def fmt(row: list) -> str:  # text columns left-aligned, numbers right-aligned
            return "  ".join(
                str(c).ljust(w) if i in (0, 6, 7) else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()

        lines += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
        lines += ["", "Assumptions:"] + [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)


def _tier_cell(e: Estimate) -> str:
    if e.smallest_tier is None:
        return "none in table"
    need = e.smallest_tier_memory.total
    tight = ", tight" if need > TIGHT_FRACTION * e.smallest_tier.card.bytes else ""
    return f"{e.smallest_tier.name} ({_g(need)}{tight})"


def _g(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.1f} GiB"


def _b(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def plan(
    model: str | Path,
    context: int = 4096,
    batch: int = 1,
    *,
    gpus: int = 8,
    lora_rank: int = 16,
    lora_targets: str | Iterable[str] = DEFAULT_LORA_TARGETS,
    tiers: Iterable[Tier] = TIERS,
) -> Plan:
    """Plan memory and hardware for a preset (7b, 13b, 70b, v3), a model folder or a
    config.json. ``gpus`` sets the per-GPU column (tensor parallel / FSDP2 over N)."""
    if context < 1 or batch < 1 or gpus < 1 or lora_rank < 1:
        raise PlannerError("context, batch, gpus and lora_rank must be positive integers")
    cfg, source = load_config(model)
    shape = shape_from_config(cfg, source)
    counts = count_params(shape)
    targets = _targets(lora_targets)
    tiers = tuple(tiers)
    art = article_tier(counts.total)
    out = Plan(
        model=str(model),
        source=source,
        shape=shape,
        params=counts,
        context=context,
        batch=batch,
        gpus=gpus,
        lora_rank=lora_rank,
        lora_targets=targets,
        lora_params=lora_params(shape, lora_rank, targets),
        kv_cache=kv_cache_bytes(shape, context, batch),
        kv_cache_decompressed=(
            kv_cache_bytes(shape, context, batch, decompressed=True)
            if shape.kv_decompressed_per_token_per_layer
            else None
        ),
        article=art,
    )
    kw = dict(context=context, batch=batch, lora_rank=lora_rank, lora_targets=targets)
    for sc in SCENARIOS:
        smallest = next((t for t in tiers if out.fits(sc.key, t)), None)
        out.estimates[sc.key] = Estimate(
            scenario=sc,
            single=memory(shape, sc, n_gpus=1, **kw),
            sharded=memory(shape, sc, n_gpus=gpus, **kw),
            smallest_tier=smallest,
            smallest_tier_memory=out.memory_on(sc.key, smallest) if smallest else None,
            article_fit=out.fits(sc.key, art[1]) if art else None,
        )
    return out
