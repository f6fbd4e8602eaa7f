"""The whole augmentation pass: provenance, ratios, near-duplicates and bad input."""

import json

import pytest

from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer
from deepfeed.core.augment.corpus import Augmenters, AugmentPlan, augment_corpus
from deepfeed.core.augment.fgsm import FgsmTextAttack
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.augment.zh_synonyms import CilinSynonyms
from deepfeed.core.platform.encoders import SentenceEncoder
from deepfeed.core.platform.home import activate_nltk_data
from deepfeed.core.train.modeling import load_model, load_tokenizer
from tests.conftest import PAIRS

LONG = "A very long answer that goes on. " * 100


def _records():
    rows = [(p, r, "zh" if "？" in p else "en", "train") for p, r in PAIRS]
    rows += [
        ("Empty?", "", "en", "train"),
        ("Long?", LONG, "en", "train"),
        ("Mixed?", "Take the medicine 每天三次 with warm water and 多喝水 always.", "en", "train"),
        ("Only protected?", "<EMAIL> 42 https://example.org I10", "en", "train"),
        ("Held out?", "The held out answer is good, and it stays out.", "en", "eval"),
    ]
    return [
        {"record_id": f"r{i}", "kind": "pair", "prompt": p, "response": r, "text": None, "lang": lang, "split": split}
        for i, (p, r, lang, split) in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def augmenters(tiny_llama):
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    encoder = SentenceEncoder()
    # English-only lexicons: Chinese records then meet "no synonym resource".
    synonyms = ContextualSynonymReplacer(
        encoder, WordNetSynonyms(), None, protected=protected_mask, threshold=0.7, rate=0.2
    )
    lexicons = {"en": WordNetSynonyms(), "zh": CilinSynonyms()}
    fgsm = FgsmTextAttack(
        load_model(tiny_llama),
        load_tokenizer(tiny_llama),
        epsilon=0.1,
        max_modification_rate=0.5,
        protected=protected_mask,
        lexicons=lexicons,
    )
    return Augmenters(encoder=encoder, synonyms=synonyms, fgsm=fgsm)


@pytest.fixture(scope="module")
def every_technique(augmenters):
    return augment_corpus(
        _records(), AugmentPlan(synonym_ratio=1.0, structural_ratio=1.0, fgsm_ratio=1.0, max_chars=1000), augmenters
    )


def test_children_carry_provenance_and_eval_records_never_enter(every_technique):
    result = every_technique
    originals = {r["record_id"]: r for r in result.records if r["technique"] == "original"}
    children = [r for r in result.records if r["technique"] != "original"]
    assert "r" + str(len(PAIRS) + 4) not in originals and all(r["split"] == "train" for r in result.records)
    assert {c["technique"] for c in children} >= {"contextual_synonym", "fgsm"}
    assert {c["technique"] for c in children} & {"sentence_reorder", "clause_reorder"}
    for child in children:
        parent = originals[child["parent_id"]]
        if child["technique"] == "fgsm":
            # Adversarial children perturb the input and keep the reference answer as the target.
            assert child["prompt"] != parent["prompt"] and child["response"] == parent["response"]
        else:
            assert child["response"] != parent["response"] and child["prompt"] == parent["prompt"]
        assert isinstance(json.loads(child["aug_params"]), dict)
        assert child["similarity"] is None or -1.0 <= child["similarity"] <= 1.0
    fgsm = [c for c in children if c["technique"] == "fgsm"]
    assert all(json.loads(c["aug_params"])["swaps"] and json.loads(c["aug_params"])["side"] == "prompt" for c in fgsm)
    assert len({r["record_id"] for r in result.records}) == len(result.records)


def test_bad_input_passes_through_unchanged_with_the_reason(every_technique):
    result = every_technique
    by_id = {r["record_id"]: r for r in result.records if r["technique"] == "original"}
    n = len(PAIRS)
    empty, long, mixed, protected = (by_id[f"r{n + k}"] for k in range(4))
    assert empty["response"] == "" and long["response"] == LONG
    assert set(json.loads(empty["aug_skipped"])) == {f"{t}: empty text" for t in ("synonym", "structural", "fgsm")}
    assert set(json.loads(long["aug_skipped"])) == {
        f"{t}: longer than max_chars=1000" for t in ("synonym", "structural", "fgsm")
    }
    assert "synonym: mixed-language text: no single synonym resource applies" in json.loads(mixed["aug_skipped"])
    assert "synonym: nothing but protected spans, numbers and punctuation" in json.loads(protected["aug_skipped"])
    zh = next(r for r in by_id.values() if r["lang"] == "zh")
    assert "synonym: no synonym resource for zh text" in json.loads(zh["aug_skipped"])
    parents = {r["parent_id"] for r in result.records}
    assert not parents & {f"r{n + k}" for k in range(4)} - {f"r{n + 2}"}
    assert result.skipped["synonym: empty text"] == 1


def test_ratios_select_techniques_and_near_duplicates_are_dropped(augmenters):
    only_structural = augment_corpus(
        _records(), AugmentPlan(synonym_ratio=0.0, structural_ratio=1.0, fgsm_ratio=0.0), augmenters
    )
    assert {r["technique"] for r in only_structural.records} <= {"original", "sentence_reorder", "clause_reorder"}
    strict = augment_corpus(
        _records(),
        AugmentPlan(synonym_ratio=0.0, structural_ratio=1.0, fgsm_ratio=0.0, near_duplicate_threshold=0.2),
        augmenters,
    )
    assert [r["technique"] for r in strict.records] == ["original"] * len(strict.records)
    assert strict.skipped["structural: near-duplicate of an existing record"] == len(only_structural.records) - len(
        strict.records
    )
    with pytest.raises(ValueError, match="fgsm_ratio"):
        AugmentPlan(fgsm_ratio=1.5)


def test_fgsm_is_capped_and_the_rest_say_why(augmenters):
    result = augment_corpus(
        _records(),
        AugmentPlan(synonym_ratio=0.0, structural_ratio=0.0, fgsm_ratio=1.0, fgsm_max_records=1, max_chars=1000),
        augmenters,
    )
    skipped = [json.loads(r["aug_skipped"]) for r in result.records if r["technique"] == "original"]
    capped = [s for s in skipped if "fgsm: over fgsm_max_records=1" in s]
    attempted = (
        len(skipped) - len(capped) - sum(1 for s in skipped if any("empty text" in x or "longer than" in x for x in s))
    )
    assert capped and attempted == 1


PROTECTED_TEXT = "Patient with code I10 called <PHONE> at 10:30 and walked 3 miles quickly home"


def test_protected_mask_covers_codes_placeholders_times_and_numbers():
    spans = [PROTECTED_TEXT[a:b] for a, b in protected_mask(PROTECTED_TEXT)]
    assert {"I10", "<PHONE>", "10:30", "3"} <= set(spans)


@pytest.mark.parametrize("seed", range(4))
def test_synonym_children_never_touch_protected_spans(augmenters, seed):
    # Every replaceable word replaced and no meaning filter: only protection stands in the way.
    eager = ContextualSynonymReplacer(
        augmenters.encoder, augmenters.synonyms.lexicons["en"], None, protected=protected_mask, threshold=-1.0, rate=1.0
    )
    records = [
        {
            "record_id": "p",
            "kind": "pair",
            "prompt": "Q?",
            "response": PROTECTED_TEXT,
            "text": None,
            "lang": "en",
            "split": "train",
        }
    ]
    result = augment_corpus(
        records,
        AugmentPlan(synonym_ratio=1.0, structural_ratio=0.0, seed=seed),
        Augmenters(encoder=augmenters.encoder, synonyms=eager),
    )
    (child,) = [r for r in result.records if r["technique"] == "contextual_synonym"]
    assert child["response"] != PROTECTED_TEXT and json.loads(child["aug_params"])["replaced"] >= 3
    for token in ("I10", "<PHONE>", "10:30", " 3 "):
        assert token in child["response"]


def test_fgsm_never_rewrites_what_the_model_learns_to_produce(augmenters):
    record = {
        "record_id": "t",
        "kind": "text",
        "prompt": None,
        "response": None,
        "text": "Doctors examined the patients quickly.",
        "lang": "en",
        "split": "train",
    }
    result = augment_corpus([record], AugmentPlan(synonym_ratio=0.0, structural_ratio=0.0, fgsm_ratio=1.0), augmenters)
    assert [r["technique"] for r in result.records] == ["original"]
    assert result.skipped == {"fgsm: no prompt to perturb: an adversarial response would be learnt as the answer": 1}
    with pytest.raises(ValueError, match="fgsm_side"):
        AugmentPlan(fgsm_side="both")
