"""Loading causal LMs and turning records into training examples.

Any local Hugging Face checkpoint of a causal LM works (Llama, Qwen2, DeepSeek-V3, ...).
Models are only ever loaded from local folders: the hub is unreachable where deepfeed runs.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CAUSAL_LM_SUFFIX = "ForCausalLM"

# Used when a tokenizer ships without a chat template (tiny test tokenizers, some base
# models); the ChatML form matches SmolLM2 and Qwen-family DeepSeek distills.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelSourceError(ValueError):
    pass


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Validate a checkpoint folder without loading its weights."""
    path = Path(path)
    if not path.is_dir():
        raise ModelSourceError(f"{str(path)!r} does not exist or is not a folder")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelSourceError(f"{str(path)!r} has no config.json: not a Hugging Face checkpoint")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    if not any(a.endswith(CAUSAL_LM_SUFFIX) for a in architectures):
        raise ModelSourceError(
            f"{str(path)!r} is not a causal LM: architectures={architectures or 'missing'} "
            f"(expected one ending in {CAUSAL_LM_SUFFIX})"
        )
    weights = sorted(p.name for p in path.glob("*.safetensors")) or sorted(p.name for p in path.glob("*.bin"))
    if not weights:
        raise ModelSourceError(f"{str(path)!r} has no weight files (*.safetensors or *.bin)")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise ModelSourceError(f"{str(path)!r} has no tokenizer files")
    return {
        "architecture": architectures[0],
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "weight_files": weights,
    }


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16):
    """QLoRA's 4-bit base: NF4 with double quantisation (the scales quantised too), the
    matmuls in `compute_dtype`. The planner budgets exactly this format."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, *, quantization: str | None = None):
    """A causal LM from a local folder with its weights in `dtype`.

    quantization="nf4" loads the decoder Linears in 4-bit NF4 (bitsandbytes, CUDA only)
    onto the current GPU, the other weights in `dtype`.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if quantization == "nf4":
        if not torch.cuda.is_available():
            raise ModelSourceError(
                "a 4-bit NF4 (QLoRA) base needs a CUDA GPU: bitsandbytes has no 4-bit training "
                "kernels for this device; use method='lora' with precision 'bf16' instead"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelSourceError(
                "a 4-bit NF4 (QLoRA) base needs bitsandbytes: pip install 'deepfeed[qlora]'"
            ) from exc
        kwargs = {"quantization_config": nf4_config(dtype), "device_map": {"": torch.cuda.current_device()}}
    elif quantization is not None:
        raise ModelSourceError(f"quantization={quantization!r}: expected None or 'nf4'")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    model.config.use_cache = False
    return model


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )


_ANSWER_MARK = "deepfeed-answer-mark"
# Per tokenizer: (chat template, EOS id) -> end-of-answer ids; rendering a template per record is wasted work.
_answer_ends: "weakref.WeakKeyDictionary[Any, tuple[Any, list[int]]]" = weakref.WeakKeyDictionary()


def answer_end_ids(tokenizer) -> list[int]:
    """The tokens the chat template writes after an assistant answer (ChatML: `<|im_end|>`),
    trailing blanks left out; the tokenizer's EOS when the template shows none.

    Why not simply the EOS: the GGUF conversion of SmolLM2 names `<|im_start|>` its EOS, so
    answers were trained to end with a token the model had never seen there, while the
    template (and the base model) end a turn with `<|im_end|>`. On 48 demo answers the base
    model paid 10.6 nats for that token (3.4 for `<|im_end|>`), 15% of the mean answer loss."""
    key = (tokenizer.chat_template, tokenizer.eos_token_id)
    try:
        cached = _answer_ends.get(tokenizer)
    except TypeError:  # not weak-referenceable: computed every time
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    fallback = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _ANSWER_MARK}], tokenize=False
        )
    except Exception:  # a template that cannot render an answer (jinja raises its own errors)
        text = ""
    suffix = text.split(_ANSWER_MARK, 1)[1].rstrip() if _ANSWER_MARK in text else ""
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else fallback
    try:
        _answer_ends[tokenizer] = (key, ids)
    except TypeError:
        pass
    return ids


def encode_record(tokenizer, record: dict[str, Any], max_length: int) -> Example:
    """Chat-formatted pair (loss on the answer and the template's end of turn) or plain
    text (loss everywhere)."""
    if record.get("kind") == "pair":
        context = prompt_ids(tokenizer, record["prompt"])
        answer = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        end = answer_end_ids(tokenizer)
        # Long prompts are cut from the left so the answer always keeps some room.
        context = context[-max(1, max_length // 2) :]
        ids = (context + answer + end)[:max_length]
        labels = ([-100] * len(context) + answer + end)[:max_length]
    else:
        ids = tokenizer(record.get("text") or "", add_special_tokens=False)["input_ids"][:max_length]
        labels = list(ids)
    return Example(input_ids=ids, labels=labels)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
