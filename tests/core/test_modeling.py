import json

import pytest

from deepfeed.core.train.modeling import (
    ModelSourceError,
    answer_end_ids,
    collate,
    describe_checkpoint,
    encode_record,
    load_tokenizer,
)


def test_describe_accepts_causal_lm(tiny_llama, tiny_deepseek):
    assert describe_checkpoint(tiny_llama)["architecture"] == "LlamaForCausalLM"
    assert describe_checkpoint(tiny_deepseek)["architecture"] == "DeepseekV3ForCausalLM"


def test_describe_rejects_bad_folders(tmp_path, tiny_llama):
    with pytest.raises(ModelSourceError, match="does not exist"):
        describe_checkpoint(tmp_path / "missing")
    with pytest.raises(ModelSourceError, match="no config.json"):
        describe_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ModelSourceError, match="not a causal LM"):
        describe_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    with pytest.raises(ModelSourceError, match="no weight files"):
        describe_checkpoint(tmp_path)


def test_pairs_train_on_the_answer_only(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    example = encode_record(tokenizer, {"kind": "pair", "prompt": "What is the capital?", "response": "Paris."}, 64)
    answer = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
    assert tokenizer.decode(answer).startswith("Paris.")
    assert example.labels[0] == -100
    text = encode_record(tokenizer, {"kind": "text", "text": "hello world"}, 64)
    assert text.labels == text.input_ids
    batch = collate([example, text], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][1].sum()) == len(text.input_ids)


def test_answers_end_the_turn_as_the_chat_template_does(tiny_llama):
    # The GGUF conversion of SmolLM2 names <|im_start|> its EOS; an answer must still end
    # with the template's end of turn (<|im_end|>), the token the model sees there at inference.
    tokenizer = load_tokenizer(tiny_llama)
    tokenizer.eos_token = "<|im_start|>"
    example = encode_record(tokenizer, {"kind": "pair", "prompt": "What is the capital?", "response": "Paris."}, 64)
    answer = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert answer[-1] == im_end and tokenizer.eos_token_id not in answer
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital?"}, {"role": "assistant", "content": "Paris."}],
        tokenize=False,
    )
    assert tokenizer.decode(example.input_ids) == rendered.rstrip()


def test_answer_end_falls_back_to_eos_without_a_visible_end_of_turn(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert answer_end_ids(tokenizer) == [tokenizer.eos_token_id]
