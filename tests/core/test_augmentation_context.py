"""Synonyms chosen in context, the judge of meaning on the labelled pairs, the audit trail,
and Chinese reordering through the real clean -> augment chain.

The English and Chinese examples are the ones a reviewer found in real augmented data:
"John Dewey" -> "Toilet Dewey", "Use a knife" -> "Utilization a knife", "in advance" ->
"in betterment", "hide his background" -> "pelt his white-shoe ground", 他们 -> 她们,
骗子 -> 拐子.
"""

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer, Skip, SynonymEdit
from deepfeed.core.augment.corpus import Augmenters, AugmentPlan, audit_entries, augment_corpus
from deepfeed.core.augment.meaning import MeaningJudge, precision_recall
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask
from deepfeed.core.augment.zh_synonyms import CilinSynonyms
from deepfeed.core.platform.encoders import SentenceEncoder
from deepfeed.core.platform.home import activate_nltk_data

DATA = Path(__file__).resolve().parents[2] / "deepfeed" / "data"


@pytest.fixture(scope="module")
def lexicons():
    from tests.conftest import REPO

    activate_nltk_data(REPO / ".deepfeed" / "cache" / "nltk_data")
    return {"en": WordNetSynonyms(), "zh": CilinSynonyms()}


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def _children(encoder, lexicons, text, seeds=range(6)):
    """Every child the replacer makes with no score threshold at all: only the in-context
    choice of words stands between the text and a wrong replacement."""
    replacer = ContextualSynonymReplacer(
        encoder, lexicons["en"], lexicons["zh"], protected=protected_mask, threshold=-1.0, rate=1.0, variants=4
    )
    out = []
    for seed in seeds:
        (edit,) = replacer.replace_batch([text], random.Random(seed))
        if isinstance(edit, SynonymEdit):
            out.append(edit.text)
    return out


@pytest.mark.parametrize(
    "text, kept, never",
    [
        ("John Dewey wrote about education.", "John Dewey", ["Toilet", "Can ", "Lavatory"]),
        ("Use a knife on the bread.", None, ["Utilization", "Usage", "Function"]),
        ("You should buy the tickets in advance.", "in advance", ["betterment", "improvement", "progress"]),
        ("He tried to hide his background.", None, ["pelt", "white-shoe", "fell", "skin"]),
        # Seen in the benchmark's samples: "in your case" is WordNet's "in case" with a possessive inside.
        ("It depends on what you need in your case.", "in your case", ["cause", "suit", "instance"]),
    ],
)
def test_the_reported_english_corruptions_cannot_happen(encoder, lexicons, text, kept, never):
    children = _children(encoder, lexicons, text)
    assert children, "the text still has replaceable words"
    for child in children:
        if kept:
            assert kept in child, child
        assert not any(word in child for word in never), child


@pytest.mark.parametrize(
    "text, word, never",
    [
        # Sampled children of chatterbot answers (2026-12-05), each wrong in its context:
        ("Update the driver or check the monitor cable.", "cable", None),  # compound term: -> "line"
        ("Here's bubble sort in Python.", "sort", None),  # -> "bubble kind"
        ("Hold the power button for 10 seconds.", "seconds", None),  # unit: -> "10 minutes"
        ("Check if the cables are connected properly.", "properly", ["decent", "right"]),  # adverb -> adjective
        ("The cable is loose.", "cable", ["line"]),  # "line" in a sense it rarely has
        ("Life includes the capacity for growth.", "capacity", ["content"]),
        ("A secret society controls all governments.", "governments", ["authoritieses", "authorities"]),
        ("Well, it changes every few years.", "changes", ["alterations", "variations"]),  # a verb, mistagged
        ("Well, it changes every few years.", "years", ["yrs"]),  # an abbreviation
    ],
)
def test_sampled_english_corruptions_are_not_offered(lexicons, text, word, never):
    offered = {text[a:b]: c for a, b, c in lexicons["en"].options(text)}
    if never is None:
        assert word not in offered
    else:
        assert not set(offered.get(word, [])) & set(never), offered.get(word)


def test_text_with_code_gets_no_synonyms(encoder, lexicons):
    replacer = ContextualSynonymReplacer(encoder, lexicons["en"], lexicons["zh"], protected=protected_mask)
    (skip,) = replacer.replace_batch(["Here's a linked list:\n\n```\nclass Node: pass\n```\n"], random.Random(0))
    assert skip.reason == "contains code: its terms have no synonyms"


def test_part_of_speech_inflection_and_case_follow_the_original(lexicons):
    english = lexicons["en"]
    options = {("She hid the keys.")[a:b]: c for a, b, c in english.options("She hid the keys.")}
    assert "concealed" in options["hid"] and "conceal" not in options["hid"]  # past tense kept
    text = "Doctors examined the patients quickly."
    options = {text[a:b]: c for a, b, c in english.options(text)}
    assert "Physicians" in options["Doctors"]  # plural and sentence case kept
    assert all(c[0].isupper() for c in options["Doctors"])
    assert "analyzed" in options["examined"] or "studied" in options["examined"]
    text = "Use a knife on the bread."
    verbs = {text[a:b]: c for a, b, c in english.options(text)}["Use"]
    assert verbs and all(english._wordnet.synsets(v.lower(), "v") for v in verbs)
    # "I use": the Brill lexicon's default tag for "use" is a noun; after a subject pronoun it is a verb.
    assert all(english._wordnet.synsets(v, "v") for a, b, c in english.options("I use a knife.") for v in c)
    # Indefinite article agreement: "a" + a vowel-initial candidate would be ungrammatical.
    for a, b, cands in english.options("He needs a big box."):
        assert all(c[0] not in "aeiou" for c in cands if "He needs a big box."[a:b] == "big")


def test_names_idioms_and_function_words_are_never_offered(lexicons):
    english = lexicons["en"]
    text = "Yesterday Mary Smith met John Dewey in New York and gave up smoking."
    offered = {text[a:b] for a, b, _ in english.options(text)}
    assert not offered & {"Mary", "Smith", "John", "Dewey", "New", "York", "gave", "up", "and", "in"}


def test_chinese_pronouns_and_ambiguous_neighbours_are_never_used(encoder, lexicons):
    chinese = lexicons["zh"]
    text = "他们都是骗子，别相信他们。"
    options = {text[a:b]: c for a, b, c in chinese.options(text)}
    assert "他们" not in options  # 他们 -> 她们 swaps gender
    assert "拐子" not in options.get("骗子", [])  # 拐子 is also "a lame person"
    assert chinese.ambiguous("拐子") and not chinese.ambiguous("骗子")
    for child in _children(encoder, lexicons, text):
        assert "她们" not in child and "拐子" not in child
    # Idioms and names stay; rare, literary neighbours are not offered (白衣战士 for 医生).
    text = "张三医生说我们要未雨绸缪。"
    options = {text[a:b]: c for a, b, c in chinese.options(text)}
    assert "张三" not in options and "未雨绸缪" not in options
    assert "白衣战士" not in options.get("医生", [])


def _pairs(lang):
    rows = [
        line.rstrip("\n").split("\t")
        for line in (DATA / f"meaning_pairs_{lang}.tsv").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert len(rows) >= 100 and all(len(r) == 3 for r in rows)
    return rows


def test_the_judge_keeps_meaning_on_the_labelled_pairs(encoder, lexicons):
    """The goal: at most 5% of the children the judge keeps change the meaning."""
    judge = MeaningJudge(lexicons, encoder, None, similarity_threshold=0.85, protected=protected_mask)
    for lang in ("en", "zh"):
        rows = _pairs(lang)
        parents = [r[0] for r in rows]
        same = [v.keeps_meaning for v in judge.judge(parents, [r[1] for r in rows], [lang] * len(rows))]
        changed = [v.keeps_meaning for v in judge.judge(parents, [r[2] for r in rows], [lang] * len(rows))]
        scores = precision_recall(same, changed)
        assert scores["precision"] >= 0.95 and scores["recall"] >= 0.1, (lang, scores)
    # MiniLM alone is blind to Chinese: most Chinese pieces are [UNK], so most
    # meaning-changing pairs still score above the threshold (the reported failure).
    rows = _pairs("zh")
    sims = encoder.similarity([r[0] for r in rows], [r[2] for r in rows])
    assert np.mean(sims >= 0.85) > 0.5
    assert judge.unk_share(rows[0][0]) > 0.3 and judge.unk_share("The doctor examined the patient.") == 0.0


def test_the_encoder_judges_what_it_reads_and_the_lm_the_rest(encoder, lexicons, tiny_llama):
    from deepfeed.core.augment.lm_scoring import CausalLMRanker
    from deepfeed.core.train.modeling import load_model, load_tokenizer

    lm = CausalLMRanker(load_model(tiny_llama), load_tokenizer(tiny_llama))
    judge = MeaningJudge(lexicons, encoder, lm, lm_threshold=float("-inf"))
    assert judge.scorer("医生建议病人多喝水。") == "lm" and judge.scorer("Drink water.") == "encoder"
    verdicts = judge.judge(
        ["医生建议病人多喝水。", "The doctor examined the patient."],
        ["医生建议患者多喝水。", "The physician examined the patient."],
        ["zh", "en"],
    )
    assert [v.judge for v in verdicts] == ["lm", "encoder"] and all(v.keeps_meaning for v in verdicts)
    strict = MeaningJudge(lexicons, encoder, lm, lm_threshold=1e9)
    (refused,) = strict.judge(["医生建议病人多喝水。"], ["医生建议患者多喝水。"], ["zh"])
    assert not refused.keeps_meaning and "log-probability change" in refused.reason
    # lm_everywhere: the LM checks what MiniLM passed too (English), and only that.
    english = (
        ["The doctor examined the patient.", "The doctor examined the patient."],
        ["The physician examined the patient.", "The doctor examined the bread."],
    )
    both = MeaningJudge(lexicons, encoder, lm, lm_threshold=1e9, lm_everywhere=True).judge(*english, ["en"] * 2)
    assert [v.judge for v in both] == ["encoder", "lexicon"] and not any(v.keeps_meaning for v in both)
    assert "log-probability change" in both[0].reason and both[0].lm_change is not None
    assert both[0].score == verdicts[1].score  # the verdict keeps MiniLM's similarity
    lenient = MeaningJudge(lexicons, encoder, lm, lm_threshold=-1e9, lm_everywhere=True)
    assert lenient.judge(english[0][:1], english[1][:1], ["en"])[0].keeps_meaning
    # The check of MiniLM-judged children has its own bar: strict there, lenient where
    # the LM alone judges (Chinese).
    split = MeaningJudge(lexicons, encoder, lm, lm_threshold=-1e9, lm_everywhere=True, lm_check_threshold=1e9)
    checked, lm_only = split.judge(
        [english[0][0], "医生建议病人多喝水。"], [english[1][0], "医生建议患者多喝水。"], ["en", "zh"]
    )
    assert not checked.keeps_meaning and str(1e9) in checked.reason and lm_only.keeps_meaning
    # The lexical gate: an antonym or a gender swap is not a swap of in-context synonyms.
    gate = judge.judge(
        ["The children were very happy.", "他们明天去北京。"],
        ["The children were very sad.", "她们明天去北京。"],
        ["en", "zh"],
    )
    assert [v.judge for v in gate] == ["lexicon", "lexicon"] and not any(v.keeps_meaning for v in gate)


def test_chinese_reordering_works_after_real_cleaning(encoder):
    """Cleaning's NFKC folds ，？！ into ASCII before augmentation sees the text."""
    from deepfeed.core.data.cleaning import CleaningConfig, clean_records

    raw = [
        {
            "record_id": "z1",
            "kind": "pair",
            "prompt": "怎么办？",
            "response": "多喝水，注意休息。",
            "text": None,
            "lang": "zh",
            "source": "t",
        },
        {
            "record_id": "z2",
            "kind": "pair",
            "prompt": "天气如何？",
            "response": "今天天气晴朗！适合出门散步。空气也很好！",
            "text": None,
            "lang": "zh",
            "source": "t",
        },
    ]
    cleaned = clean_records(raw, CleaningConfig(eval_fraction=0.0, glossary_path="")).records
    assert cleaned and all("，" not in r["response"] and "！" not in r["response"] for r in cleaned)
    for r in cleaned:
        r["split"] = "train"
    result = augment_corpus(
        cleaned, AugmentPlan(synonym_ratio=0.0, structural_ratio=1.0, fgsm_ratio=0.0), Augmenters(encoder=encoder)
    )
    children = {r["parent_id"]: r for r in result.records if r["technique"] != "original"}
    assert children, result.skipped
    for parent in cleaned:
        child = children[parent["record_id"]]
        assert child["technique"] in ("clause_reorder", "sentence_reorder") and child["response"] != parent["response"]
        assert sorted(child["response"]) == sorted(parent["response"])  # same characters, new order


def test_every_child_is_in_the_audit_ledger_and_queryable(tmp_path, encoder, lexicons, capsys):
    from deepfeed.cli import main
    from deepfeed.core.platform.audit import AuditLedger, content_hash

    replacer = ContextualSynonymReplacer(
        encoder, lexicons["en"], lexicons["zh"], protected=partial(protected_mask), threshold=0.5, rate=0.3
    )
    records = [
        {
            "record_id": "a",
            "kind": "pair",
            "prompt": "Why?",
            "response": "Drink plenty of water, and get enough rest.",
            "text": None,
            "lang": "en",
            "split": "train",
        },
        {
            "record_id": "b",
            "kind": "pair",
            "prompt": "How?",
            "response": "The doctors examined the patients quickly.",
            "text": None,
            "lang": "en",
            "split": "train",
        },
    ]
    result = augment_corpus(
        records, AugmentPlan(synonym_ratio=1.0, structural_ratio=1.0), Augmenters(encoder=encoder, synonyms=replacer)
    )
    children = [r for r in result.records if r["technique"] != "original"]
    assert children
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    ledger.append(list(audit_entries(result.records, "run-1")))
    entries = list(ledger.iter_entries(action="augmented"))
    assert len(entries) == len(children) and ledger.verify().ok
    for child, entry in zip(children, entries):
        assert entry["record_id"] == child["record_id"] and entry["extra"]["parent_id"] == child["parent_id"]
        assert entry["extra"]["technique"] == child["technique"] and entry["extra"]["params"] == json.loads(
            child["aug_params"]
        )
        parent = next(r for r in records if r["record_id"] == child["parent_id"])
        assert entry["hash_before"] == content_hash(parent["response"]) and entry["hash_after"] == content_hash(
            child["response"]
        )
    assert (
        main(
            [
                "audit",
                "--ledger",
                str(ledger.path),
                "query",
                "--action",
                "augmented",
                "--record-id",
                children[0]["record_id"],
                "--json",
            ]
        )
        == 0
    )
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["extra"]["parent_id"] == children[0]["parent_id"]


def test_reorders_the_judge_refuses_are_dropped_with_the_reason(encoder, lexicons):
    record = {
        "record_id": "s",
        "kind": "pair",
        "prompt": "Tips?",
        "response": "Drink plenty of water, and get enough rest.",
        "text": None,
        "lang": "en",
        "split": "train",
    }
    plan = AugmentPlan(synonym_ratio=0.0, structural_ratio=1.0)
    strict = MeaningJudge(lexicons, encoder, None, similarity_threshold=1.01)
    refused = augment_corpus([record], plan, Augmenters(encoder=encoder, judge=strict))
    assert [r["technique"] for r in refused.records] == ["original"]
    (reason,) = refused.skipped
    assert reason.startswith("structural: reordered text judged to change the meaning (encoder: similarity")
    kept = augment_corpus([record], plan, Augmenters(encoder=encoder, judge=MeaningJudge(lexicons, encoder, None)))
    (child,) = [r for r in kept.records if r["technique"] == "clause_reorder"]
    assert (
        json.loads(child["aug_params"])["judge"] == "encoder"
        and json.loads(child["aug_params"])["meaning_score"] >= 0.85
    )


def test_the_lm_check_picks_the_variant_the_lm_finds_most_likely(encoder, lexicons, tiny_llama):
    """With the LM checking MiniLM's verdicts, the kept variant is the passing one with the
    largest LM change, not the largest cosine (the cosine barely sees a wrong sense)."""
    from deepfeed.core.augment.lm_scoring import CausalLMRanker
    from deepfeed.core.train.modeling import load_model, load_tokenizer

    lm = CausalLMRanker(load_model(tiny_llama), load_tokenizer(tiny_llama))
    replacer = ContextualSynonymReplacer(
        encoder, lexicons["en"], lexicons["zh"], protected=protected_mask, threshold=-1.0, rate=1.0, variants=4,
        judge_lm=lm, lm_threshold=-1e9, lm_everywhere=True, lm_check_threshold=-1e9,
    )  # fmt: skip
    text = "The doctor examined the patient and wrote a short report."
    variants = [v for v, _ in replacer._variants(text, "en", random.Random(3))]
    assert len(variants) >= 2
    (edit,) = replacer.replace_batch([text], random.Random(3))
    changes = lm.log_prob_changes([text] * len(variants), variants)
    assert edit.text == variants[int(np.argmax(changes))]


def test_chinese_synonyms_are_off_unless_asked_for():
    from deepfeed.core.augment.setup import AugmentSettings, AugmentSettingsError, build_augmenters

    chinese, english = "医生建议病人多喝水。", "The doctor examined the patient and wrote a report."
    default = build_augmenters(AugmentSettings(fgsm_ratio=0.0, meaning_lm=False)).synonyms
    zh_edit, en_edit = default.replace_batch([chinese, english], random.Random(0))
    assert isinstance(zh_edit, Skip) and zh_edit.reason == "Chinese synonyms are off (synonym_languages)"
    assert isinstance(en_edit, SynonymEdit)
    both = build_augmenters(AugmentSettings(fgsm_ratio=0.0, meaning_lm=False, synonym_languages="en, zh")).synonyms
    assert isinstance(both.replace_batch([chinese], random.Random(0))[0], SynonymEdit)
    assert AugmentSettings().plan().technique_params["synonym"]["languages"] == ["en"]
    with pytest.raises(AugmentSettingsError, match="unknown language fr") as error:
        AugmentSettings(synonym_languages="en,fr").plan()
    assert error.value.field == "synonym_languages"
