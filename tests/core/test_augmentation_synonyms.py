"""Contextual synonym replacement with the real bundled encoder and lexicons."""

import json
import random
from functools import partial

import numpy as np
import pytest
import torch

from deepfeed.core.augment.contextual_synonyms import (
    CausalLMRanker,
    ContextualSynonymReplacer,
    MaskedLMReplacer,
    Skip,
    SynonymEdit,
    text_script,
)
from deepfeed.core.augment.corpus import Augmenters, AugmentPlan, augment_corpus
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.augment.setup import AugmentSettings, AugmentSettingsError, build_augmenters
from deepfeed.core.augment.zh_synonyms import CilinSynonyms
from deepfeed.core.data.glossary import load_glossary
from deepfeed.core.platform.encoders import SentenceEncoder
from deepfeed.core.platform.home import activate_nltk_data
from deepfeed.core.train.modeling import load_model, load_tokenizer


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def lexicons():
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    return WordNetSynonyms(base_forms_only=True), CilinSynonyms()


@pytest.fixture(scope="module")
def replacer(encoder, lexicons):
    return ContextualSynonymReplacer(
        encoder, *lexicons, protected=partial(protected_mask, glossary=load_glossary()), threshold=0.8, rate=0.2
    )


def test_encoder_separates_paraphrase_from_unrelated(encoder):
    sims = encoder.similarity(
        ["The doctor examined the patient.", "The doctor examined the patient."],
        ["The physician examined the patient.", "Stock prices fell sharply on Monday."],
    )
    assert sims[0] > 0.85 > 0.3 > sims[1]


def test_text_script():
    assert text_script("Plain English words.") == "en"
    assert text_script("今天天气晴朗，做了CT检查。") == "zh"
    assert text_script("hello world 你好世界 again and again") == "mixed"
    assert text_script("123 ... 4.5") == "none"


def test_english_and_chinese_edits_keep_meaning_and_protected_spans(replacer):
    texts = [
        "The patient with high blood pressure called <PHONE> at 10:30 about a mild headache after the morning walk.",
        "医生建议病人每天散步半小时。",
    ]
    edits = replacer.replace_batch(texts, random.Random(0))
    assert all(isinstance(e, SynonymEdit) for e in edits), edits
    for text, edit in zip(texts, edits):
        assert edit.text != text and edit.replaced >= 1
    # MiniLM reads the English text; it sees [UNK] for most Chinese, so without a causal LM
    # the Chinese child stands on the lexical gate alone (and says so).
    assert edits[0].judge == "encoder" and edits[0].similarity >= 0.8
    assert edits[1].judge == "lexicon" and edits[1].similarity is None
    for token in ["high blood pressure", "<PHONE>", "10:30"]:
        assert token in edits[0].text


def test_threshold_rejects_with_the_reason(encoder, lexicons):
    strict = ContextualSynonymReplacer(encoder, *lexicons, threshold=0.9999, rate=1.0)
    (result,) = strict.replace_batch(["The engineer quickly repaired the broken machine yesterday."], random.Random(0))
    assert isinstance(result, Skip) and "no variant kept the meaning" in result.reason


def test_bad_input_is_skipped_with_reasons(encoder, lexicons):
    english_only = ContextualSynonymReplacer(encoder, lexicons[0], None, protected=protected_mask)
    results = english_only.replace_batch(
        ["", "mixed English words 和中文的句子混在一起", "医生建议病人每天散步。", "<EMAIL> 42 https://x.org"],
        random.Random(0),
    )
    assert [r.reason for r in results] == [
        "empty text",
        "mixed-language text: no single synonym resource applies",
        "no synonym resource for zh text",
        "nothing but protected spans, numbers and punctuation",
    ]


def _tiny_bert(folder):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    words = (
        "the a patient doctor said walked home quickly slowly good bad headache pain day night care help was".split()
    )
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *dict.fromkeys(words + list("bcdefghijklmnopqrstuvwxyz0123456789.,")),
    ]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_nlpaug_fill_mask_path_with_a_local_bert(tmp_path, encoder):
    replacer = MaskedLMReplacer(_tiny_bert(tmp_path), encoder, protected=protected_mask, threshold=-1.0, rate=0.5)
    texts = ["the patient said the day was good 42", "the doctor walked home quickly", "the night care was bad"]
    results = replacer.replace_batch(texts, random.Random(0))
    edits = [(t, r) for t, r in zip(texts, results) if isinstance(r, SynonymEdit)]
    assert edits, results
    for text, edit in edits:
        assert edit.text != text and "[MASK]" not in edit.text
    if isinstance(results[0], SynonymEdit):
        assert "42" in results[0].text


def test_masked_lm_that_predicts_its_own_mask_token_never_leaves_a_mask(tmp_path, encoder):
    """nlpaug writes a predicted ``[MASK]`` back into the text and then fails on the
    two-mask answer (the CI failure of 2026-11-30): special tokens are never candidates."""
    import torch

    folder = _tiny_bert(tmp_path)
    replacer = MaskedLMReplacer(folder, encoder, threshold=-1.0, rate=0.5)
    pipeline = replacer.augmenter.model.model
    mask_id = pipeline.tokenizer.mask_token_id
    with torch.no_grad():
        pipeline.model.cls.predictions.decoder.bias[mask_id] = 1e4  # the LM's favourite answer is [MASK]
    texts = ["the patient said the day was good", "the doctor walked home quickly", "the night care was bad"]
    for seed in range(3):
        results = replacer.replace_batch(texts, random.Random(seed))
        assert all("[MASK]" not in getattr(r, "text", "") for r in results), results
    answers = pipeline(["the [MASK] [MASK] day", "the [MASK] was good"])
    assert len(answers) == 2 and all(isinstance(c, dict) and c["token_str"] != "[MASK]" for a in answers for c in a)


def test_masked_lm_replacer_is_reproducible_and_leaves_global_generators_alone(tmp_path, encoder):
    replacer = MaskedLMReplacer(_tiny_bert(tmp_path), encoder, threshold=-1.0, rate=0.5)
    texts = ["the patient said the day was good", "the doctor walked home quickly"]
    random.seed(123)
    first = replacer.replace_batch(texts, random.Random(7))
    after = random.random()
    random.seed(123)
    assert replacer.replace_batch(texts, random.Random(7)) == first
    assert random.random() == after


class _Lexicon:
    """A fixed lexicon: the test picks the candidates, the models choose between them."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table

    def candidates(self, word: str) -> list[str]:
        return self.table.get(word.lower(), [])


DOCTOR = "The doctor examined the patient."


@pytest.fixture(scope="module")
def banana_lm(tiny_llama):
    """The tiny LM after a few steps on one sentence: it now prefers "banana" where MiniLM prefers "physician"."""
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    torch.manual_seed(0)
    ids = torch.tensor(
        [
            [
                tokenizer.bos_token_id,
                *tokenizer("The banana examined the patient.", add_special_tokens=False)["input_ids"],
            ]
        ]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def test_lm_log_probs_do_not_depend_on_batching(banana_lm):
    texts = [
        "The banana examined the patient.",
        "Short.",
        "A much longer sentence about blood pressure and water, with commas.",
        "今天天气晴朗。",
    ]
    batched = CausalLMRanker(*banana_lm, batch_size=4, precision="fp32").log_probs(texts)
    alone = CausalLMRanker(*banana_lm, batch_size=1, precision="fp32").log_probs(texts)
    assert np.allclose(batched, alone, atol=1e-3) and (batched < 0).all()
    # bf16 (the default where oneDNN has it) rounds differently per batch shape, no more.
    rounded = CausalLMRanker(*banana_lm, batch_size=4, precision="bf16").log_probs(texts)
    assert np.allclose(rounded, alone, atol=0.5)
    assert batched[0] > CausalLMRanker(*banana_lm).log_probs(["The doctor examined the patient."])[0]


def test_causal_lm_ranking_changes_the_chosen_variant_and_similarity_still_filters(encoder, banana_lm):
    lexicon = _Lexicon({"doctor": ["physician", "banana"]})
    kwargs = dict(rate=1.0, variants=8)  # eight draws of two candidates: both variants are scored
    (by_similarity,) = ContextualSynonymReplacer(encoder, lexicon, None, threshold=-1.0, **kwargs).replace_batch(
        [DOCTOR], random.Random(0)
    )
    ranker = CausalLMRanker(*banana_lm)
    (by_lm,) = ContextualSynonymReplacer(encoder, lexicon, None, threshold=-1.0, ranker=ranker, **kwargs).replace_batch(
        [DOCTOR], random.Random(0)
    )
    assert by_similarity.text == "The physician examined the patient." and by_similarity.lm_logprob is None
    assert by_lm.text == "The banana examined the patient." and by_lm.lm_logprob < 0
    assert by_lm.similarity < by_similarity.similarity
    # A threshold between the two similarities leaves the LM only the physician.
    between = (by_lm.similarity + by_similarity.similarity) / 2
    strict = ContextualSynonymReplacer(encoder, lexicon, None, threshold=between, ranker=ranker, **kwargs)
    (filtered,) = strict.replace_batch([DOCTOR], random.Random(0))
    assert filtered.text == "The physician examined the patient."
    assert filtered.lm_logprob is None  # a lone survivor: nothing to rank, no LM pass spent
    record = {"record_id": "d", "kind": "text", "text": DOCTOR, "lang": "en", "split": "train"}
    ranked = ContextualSynonymReplacer(encoder, lexicon, None, threshold=-1.0, ranker=ranker, **kwargs)
    result = augment_corpus(
        [record], AugmentPlan(synonym_ratio=1.0, structural_ratio=0.0), Augmenters(encoder=encoder, synonyms=ranked)
    )
    (child,) = [r for r in result.records if r["technique"] == "contextual_synonym"]
    assert child["text"] == by_lm.text and json.loads(child["aug_params"])["lm_logprob"] == by_lm.lm_logprob


def test_lm_ranking_settings_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(AugmentSettingsError, match="masked-LM path") as masked:
        build_augmenters(AugmentSettings(synonym_lm_rank=True, masked_lm_path=str(tmp_path), fgsm_ratio=0.0), tmp_path)
    with pytest.raises(AugmentSettingsError, match="needs a causal LM") as missing:
        build_augmenters(AugmentSettings(synonym_lm_rank=True, fgsm_ratio=0.0), None)
    assert masked.value.field == missing.value.field == "synonym_lm_rank"
    assert (
        json.loads(json.dumps(AugmentSettings(synonym_lm_rank=True).plan().technique_params))["synonym"]["ranked_by"]
        == "causal_lm"
    )


def test_encoder_cache_and_thread_choice_leave_the_embeddings_unchanged(encoder):
    from deepfeed.core.platform.encoders import SentenceEncoder, ThreadTuner

    texts = [
        "The doctor examined the patient.",
        "A second, longer sentence about the weather today.",
        "The doctor examined the patient.",
    ]
    threads = torch.get_num_threads()
    fixed = SentenceEncoder(threads=1, cache_size=0)
    reference = fixed.encode(texts)
    assert np.array_equal(reference[0], reference[2]) and not fixed._cache
    encoder.clear_cache()
    first = encoder.encode(texts)
    assert list(encoder._cache) == texts[:2]
    again = encoder.encode(texts[::-1])
    assert np.allclose(first, reference, atol=1e-5) and np.array_equal(again, first[::-1])
    assert torch.get_num_threads() == threads  # the tuner's choice does not leak out of encode
    tuner = ThreadTuner(max_threads=2, explore_every=2)
    picks = []
    for _ in range(16):
        picks.append(tuner.pick())
        tuner.record(picks[-1], tokens=100, seconds=1.0 if picks[-1] == 1 else 3.0)  # one thread is faster here
    # Both timed, then two threads retried every 2, 4, then 8 picks while it keeps losing.
    assert picks == [1, 2, 1, 2, 1, 1, 1, 2] + [1] * 7 + [2]
    assert tuner.interval == 16


def test_encoder_precisions_agree_with_fp32_where_it_matters(encoder):
    from deepfeed.core.platform.encoders import SentenceEncoder

    originals = ["The doctor examined the patient.", "Drink plenty of water and get enough rest."] * 2
    variants = [
        "The physician examined the patient.",
        "Drink lots of water and get enough sleep.",
        "Stock prices fell sharply on Monday.",
        "The cat sat on the mat.",
    ]
    exact = SentenceEncoder(precision="fp32").similarity(originals, variants)
    assert np.abs(encoder.similarity(originals, variants) - exact).max() < 0.01  # the default (bf16 where supported)
    with pytest.raises(ValueError, match="precision"):
        SentenceEncoder(precision="fp8")
