"""Tiny random causal LMs with a real tokenizer, for tests and smoke runs.

The tokenizer is a byte-level BPE trained in milliseconds with `tokenizers` on the given
texts, so tiny checkpoints need no download and still exercise the real code paths
(chat template, padding, generation, ONNX export) of the full-size models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from deepfeed.core.train.modeling import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ARCHITECTURES = ("llama", "deepseek_v3")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(architecture: str, vocab_size: int, tokenizer):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    if architecture == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if architecture == "deepseek_v3":
        from transformers import DeepseekV3Config

        # MLA attention + a small MoE layer after one dense layer, like the real model.
        return DeepseekV3Config(
            **{**common, "num_key_value_heads": 4, "tie_word_embeddings": False},
            moe_intermediate_size=32,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=32,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            rope_scaling=None,
        )
    raise ValueError(f"unknown tiny architecture {architecture!r}; choose one of {ARCHITECTURES}")


def build_tiny_checkpoint(path: Path, texts: Iterable[str], architecture: str = "llama", seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(texts)
    config = tiny_config(architecture, len(tokenizer), tokenizer)
    config.architectures = [{"llama": "LlamaForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}[architecture]]
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
