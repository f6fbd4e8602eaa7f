import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from deepfeed.core.data.glossary import Glossary, VariantMatch, load_glossary

DATA = Path(__file__).resolve().parents[2] / "deepfeed" / "data" / "glossary_icd10.yaml"


@pytest.fixture(scope="module")
def icd10():
    return load_glossary()


def test_shipped_glossary_covers_common_conditions(icd10):
    assert len(icd10) >= 40
    for code in ["I10", "E11", "J45", "J18.9", "I21", "I63", "I64", "J44", "F32"]:
        assert code in icd10
    assert load_glossary(DATA).terms == icd10.terms  # by path too
    raw = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in raw.values())


def test_english_and_chinese_variants_become_term_and_code(icd10):
    text, counts = icd10.normalize("History of high blood pressure and HTN; 既往高血压病史，原发性高血压。")
    assert text == "History of hypertension (I10) and hypertension (I10); 既往高血压(I10)病史，高血压(I10)。"
    assert counts == Counter({"I10": 4})


def test_longest_variant_wins(icd10):
    text, counts = icd10.normalize("type 2 diabetes mellitus, type 2 diabetes and diabetes; 2型糖尿病和糖尿病")
    assert text == (
        "type 2 diabetes mellitus (E11), type 2 diabetes mellitus (E11) and diabetes mellitus (E14); "
        "2型糖尿病(E11)和糖尿病(E14)"
    )
    assert counts == Counter({"E11": 3, "E14": 2})
    assert icd10.normalize("ischemic stroke, stroke")[0] == "cerebral infarction (I63), stroke (I64)"
    assert icd10.normalize("慢性乙肝与乙肝")[0] == "慢性乙型肝炎(B18.1)与乙型肝炎(B19.1)"


def test_matching_rules(icd10):
    # Case-insensitive with word boundaries; separators interchangeable; capitals kept.
    assert icd10.normalize("Heart-attack, HEART  ATTACK")[0] == (
        "Myocardial infarction (I21), Myocardial infarction (I21)"
    )
    assert icd10.normalize("hypertensions, prehypertension, stroke-like, post-stroke")[1] == Counter()
    # Acronyms are case-sensitive.
    assert icd10.normalize("COPD and copd")[0] == "chronic obstructive pulmonary disease (J44) and copd"
    # Curly apostrophes and full-width brackets.
    assert icd10.normalize("Parkinson’s disease")[0] == "Parkinson's disease (G20)"
    assert icd10.normalize("高血压（I10）")[0] == "高血压(I10)"
    # Ignored phrases shield their variant.
    assert icd10.normalize("ST depression; stroke volume")[1] == Counter()
    # Text whose lower-casing changes its length ("İ" -> "i̇") keeps correct offsets.
    assert icd10.normalize("İstanbul: asthma")[0] == "İstanbul: asthma (J45)"


def test_idempotent_and_no_variant_remains(icd10):
    rng = random.Random(0)
    variants = [v for vs in icd10.terms.values() for v in vs]
    fillers = ["患者有", "急性", " and ", "，", "History of ", "(", "病史", " ", "伴"]
    texts = (
        ["".join(rng.choice(variants + fillers) for _ in range(rng.randint(1, 12))) for _ in range(400)]
        + [v.upper() for v in variants]
        + variants
    )
    for text in texts:
        once, _ = icd10.normalize(text)
        twice, counts = icd10.normalize(once)
        assert twice == once, text
        assert counts == Counter()
        assert icd10.find_variants(once) == [], (text, once)


def test_find_variants_reports_non_canonical_occurrences(icd10):
    found = icd10.find_variants("hypertension (I10) and high blood pressure; 心梗")
    assert found == [
        VariantMatch(23, 42, "high blood pressure", "I10"),
        VariantMatch(44, 46, "心梗", "I21"),
    ]
    # The preferred term alone still lacks its code, so it counts as a variant.
    assert [m.canonical for m in icd10.find_variants("hypertension")] == ["I10"]


def test_styles():
    mapping = {"I10": ["hypertension", "high blood pressure", "高血压"]}
    code = Glossary(mapping, style="code")
    assert code.normalize("High blood pressure (I10) and 高血压")[0] == "I10 and I10"
    term = Glossary(mapping, style="term")
    assert term.normalize("high blood pressure (I10), hypertension")[0] == "hypertension (I10), hypertension"
    for glossary in (code, term):
        once = glossary.normalize("high blood pressure 高血压 hypertension")[0]
        assert glossary.normalize(once)[0] == once and glossary.find_variants(once) == []
    with pytest.raises(ValueError):
        Glossary(mapping, style="fancy")


def test_cjk_neighbours_forming_a_longer_variant_are_repaired():
    glossary = Glossary({"I21": ["myocardial infarction", "心肌梗死", "急性心肌梗死", "心肌梗塞"]})
    text, counts = glossary.normalize("急性心肌梗塞")
    assert text == "心肌梗死(I21)"
    assert counts == Counter({"I21": 1})


def test_load_yaml_and_csv(tmp_path):
    (tmp_path / "g.yaml").write_text("X1: [foo bar, 甲乙]\n250: baz\n", encoding="utf-8")
    g = load_glossary(tmp_path / "g.yaml")
    assert g.terms == {"X1": ("foo bar", "甲乙"), "250": ("baz",)}
    (tmp_path / "list.yaml").write_text("- foo\n- bar\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_glossary(tmp_path / "list.yaml")
    (tmp_path / "long.csv").write_text("canonical,variant\nX1,foo bar\nX1,甲乙\nX2,qux\n", encoding="utf-8")
    assert load_glossary(tmp_path / "long.csv").terms == {"X1": ("foo bar", "甲乙"), "X2": ("qux",)}
    (tmp_path / "wide.csv").write_text("canonical,variants\nX1,foo bar|甲乙\n", encoding="utf-8")
    assert load_glossary(tmp_path / "wide.csv").terms == {"X1": ("foo bar", "甲乙")}
    (tmp_path / "bad.csv").write_text("code,name\nX1,foo\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_glossary(tmp_path / "bad.csv")
    with pytest.raises(ValueError):
        load_glossary(tmp_path / "g.txt")


def test_invalid_glossaries_are_rejected():
    with pytest.raises(ValueError, match="more than one"):
        Glossary({"A": ["foo"], "B": ["Foo"]})
    with pytest.raises(ValueError, match="non-empty string"):
        Glossary({"A": ["foo", True]})  # YAML's unquoted "yes"
    with pytest.raises(ValueError, match="no variants"):
        Glossary({"A": ["a"]})  # the only variant is the code itself


def test_batch_normalisation(icd10):
    texts, counts = icd10.normalize_batch(["asthma", "哮喘", "nothing here"])
    assert texts == ["asthma (J45)", "哮喘(J45)", "nothing here"]
    assert counts == Counter({"J45": 2})


def test_normalize_many_equals_normalize_per_text():
    import random

    from deepfeed.core.data.glossary import load_glossary

    glossary = load_glossary()
    pieces = [
        "high blood pressure",
        "hypertension (J45)",
        "Hypertension (I10)",
        "高血压",
        "糖尿病（E11）",
        "asthma",
        "COPD",
        "Copd",
        "type 2 diabetes",
        "İstanbul",
        "acid reflux",
        "well-known",
        " ",
        "\n",
        "(",
        ")",
        "I10",
        "x",
        "。",
        "stroke",
        "-",
    ]
    rng = random.Random(3)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(3000)]
    texts += ["", "high blood pressure\n\x00\nasthma", "hypertension (I10) (J45)"]
    assert glossary.normalize_many(texts) == [glossary.normalize(t) for t in texts]
    assert sum(1 for t in texts if glossary.normalize(t)[0] != t) > 500  # the texts exercise the rewriting
