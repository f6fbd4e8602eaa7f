import datetime as dt
import itertools
import random
from collections import Counter

import pandas as pd
import pytest

from deepfeed.core.data.kanonymity import (
    STAR,
    CategoricalHierarchy,
    DateHierarchy,
    IntervalHierarchy,
    RegionHierarchy,
    anonymize,
    check_k_anonymity,
    default_hierarchy,
    province_of,
)


def test_age_hierarchy():
    h = IntervalHierarchy((5, 10, 20))
    assert [h.generalize(37, lv) for lv in range(5)] == [37, "35-39", "30-39", "20-39", STAR]
    assert h.generalize("41", 1) == "40-44"
    assert h.generalize(None, 1) == STAR and h.generalize("n/a", 2) == STAR


def test_date_hierarchy():
    h = DateHierarchy()
    for value in ("2024-03-15", dt.date(2024, 3, 15), dt.datetime(2024, 3, 15, 8, 30), pd.Timestamp("2024-03-15")):
        assert [h.generalize(value, lv) for lv in (1, 2, 3)] == ["2024-03", "2024", STAR]
    assert h.generalize("not a date", 1) == STAR


def test_region_hierarchy():
    h = RegionHierarchy()
    assert h.generalize("深圳", 1) == "广东"
    assert h.generalize("深圳市", 1) == "广东"
    assert h.generalize("广东省东莞市", 1) == "广东"
    assert h.generalize("新疆维吾尔自治区乌鲁木齐市", 1) == "新疆"
    assert h.generalize("上海", 1) == "上海"
    assert h.generalize("Austin, TX", 1) == "TX"
    assert h.generalize("Springfield, IL 62704", 1) == "IL"
    assert h.generalize("Atlantis", 1) == STAR  # unknown must not stay as a rare value
    assert h.generalize("深圳", 2) == STAR
    assert province_of(None) is None


def test_default_hierarchies_from_column_names():
    assert isinstance(default_hierarchy("age"), IntervalHierarchy)
    assert isinstance(default_hierarchy("patient_age"), IntervalHierarchy)
    assert isinstance(default_hierarchy("language"), CategoricalHierarchy)  # not an 'age'
    assert isinstance(default_hierarchy("admission_date"), DateHierarchy)
    assert isinstance(default_hierarchy("admissionDate"), DateHierarchy)
    assert isinstance(default_hierarchy("region"), RegionHierarchy)
    assert isinstance(default_hierarchy("gender"), CategoricalHierarchy)


def _class_sizes(records, cols):
    return Counter(tuple(str(r.get(c)) for c in cols) for r in records)


def _needed_suppression(records, hier, node, k):
    """Independent of the implementation: generalize with plain Python and count."""
    cols = list(hier)
    gen = [{c: hier[c].generalize(r.get(c), lv) for c, lv in zip(cols, node)} for r in records]
    sizes = _class_sizes(gen, cols)
    return sum(n for n in sizes.values() if n < k)


def _assert_minimal(records, hier, levels, k, max_suppression):
    cols = list(hier)
    height = sum(levels.values())
    limit = max_suppression * len(records)
    assert _needed_suppression(records, hier, tuple(levels[c] for c in cols), k) <= limit
    for node in itertools.product(*(range(hier[c].height + 1) for c in cols)):
        if sum(node) < height:
            assert _needed_suppression(records, hier, node, k) > limit, f"{node} is lower and feasible"


def _two_groups(n=20):
    # 20 men aged 30-34 and 20 women aged 35-39: only the 5-year range makes classes of 20.
    recs = [{"id": f"m{i}", "age": 30 + i % 5, "gender": "M", "text": "..."} for i in range(n)]
    recs += [{"id": f"f{i}", "age": 35 + i % 5, "gender": "F", "text": "..."} for i in range(n)]
    return recs


def test_minimal_generalization_on_constructed_example():
    recs = _two_groups()
    result = anonymize(recs, ["age", "gender"], k=20, max_suppression=0.0)
    assert result.levels == {"age": 1, "gender": 0}
    assert result.suppressed == []
    assert result.min_class_size == 20 and result.n_classes == 2
    assert {r["age"] for r in result.records} == {"30-34", "35-39"}
    assert [r["id"] for r in result.records] == [r["id"] for r in recs]  # order and other fields kept
    assert all(r["text"] == "..." for r in result.records)
    assert check_k_anonymity(result.records, ["age", "gender"], 20) == (True, 20, 0)
    assert check_k_anonymity(recs, ["age", "gender"], 20)[0] is False


def test_suppression_within_limit_removes_outliers_with_reason():
    recs = _two_groups() + [{"id": f"old{i}", "age": 91 + i, "gender": "M"} for i in range(3)]
    result = anonymize(recs, ["age", "gender"], k=20, max_suppression=0.1)
    assert result.levels == {"age": 1, "gender": 0}
    assert [s.record_id for s in result.suppressed] == ["old0", "old1", "old2"]
    assert all("k-anonymity" in s.reason and "k=20" in s.reason for s in result.suppressed)
    assert len(result.records) + len(result.suppressed) == len(recs)
    assert check_k_anonymity(result.records, ["age", "gender"], 20)[0]


def test_without_suppression_it_generalizes_further():
    recs = _two_groups() + [{"id": f"old{i}", "age": 91 + i, "gender": "M"} for i in range(3)]
    hier = {"age": IntervalHierarchy((5, 10, 20)), "gender": CategoricalHierarchy()}
    result = anonymize(recs, hier, k=20, max_suppression=0.0)
    assert result.suppressed == []
    assert check_k_anonymity(result.records, ["age", "gender"], 20)[0]
    _assert_minimal(recs, hier, result.levels, 20, 0.0)
    assert sum(result.levels.values()) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpus_is_k_anonymous_and_minimal(seed):
    rng = random.Random(seed)
    cities = ["深圳", "广州", "杭州", "宁波", "北京", "上海", "苏州", "Austin, TX", "Dallas, TX", "Atlantis"]
    recs = [
        {
            "id": i,
            "age": rng.randint(18, 90),
            "gender": rng.choice("MF"),
            "region": rng.choice(cities),
            "admission_date": f"202{rng.randint(3, 4)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        }
        for i in range(600)
    ]
    hier = {
        "age": IntervalHierarchy(),
        "gender": CategoricalHierarchy(),
        "region": RegionHierarchy(),
        "admission_date": DateHierarchy(),
    }
    result = anonymize(recs, hier, k=20, max_suppression=0.05)
    ok, min_size, n_bad = check_k_anonymity(result.records, list(hier), 20)
    assert ok and n_bad == 0 and min_size == result.min_class_size >= 20
    assert len(result.suppressed) <= 0.05 * len(recs)
    assert len(result.records) + len(result.suppressed) == len(recs)
    _assert_minimal(recs, hier, result.levels, 20, 0.05)


def test_dataframe_in_dataframe_out():
    df = pd.DataFrame(_two_groups())
    result = anonymize(df, ["age", "gender"], k=20)
    assert isinstance(result.records, pd.DataFrame)
    assert list(result.records.columns) == list(df.columns)
    assert sorted(result.records["age"].unique()) == ["30-34", "35-39"]
    assert check_k_anonymity(result.records, ["age", "gender"], 20) == (True, 20, 0)


def test_any_iterable_of_records():
    result = anonymize(iter(_two_groups()), ["age", "gender"], k=20)
    assert len(result.records) == 40 and result.levels == {"age": 1, "gender": 0}


def test_corpus_smaller_than_k_is_fully_suppressed():
    recs = [{"id": i, "age": 30, "gender": "F"} for i in range(5)]
    result = anonymize(recs, ["age", "gender"], k=20)
    assert result.records == [] and len(result.suppressed) == 5
    assert "smaller than k" in result.suppressed[0].reason
    assert result.min_class_size == 0


def test_missing_values_and_positional_ids():
    recs = [{"age": None, "gender": "F"} for _ in range(20)] + [{"gender": "M", "age": float("nan")} for _ in range(20)]
    result = anonymize(recs, ["age", "gender"], k=20, id_column="no_such_column")
    assert result.levels == {"age": 0, "gender": 0} and result.suppressed == []
    one_short = recs[:39]
    result = anonymize(one_short, ["age", "gender"], k=20, max_suppression=0.5)
    assert [s.record_id for s in result.suppressed] == list(range(20, 39))


def test_check_k_anonymity_counts_violating_classes():
    recs = [{"a": "x"}] * 25 + [{"a": "y"}] * 3 + [{"a": "z"}] * 19
    assert check_k_anonymity(recs, ["a"], 20) == (False, 3, 2)
    assert check_k_anonymity(recs, ["a"], 3) == (True, 3, 0)
    assert check_k_anonymity([], ["a"], 20) == (True, 0, 0)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        anonymize(_two_groups(), ["age"], k=0)
    with pytest.raises(ValueError):
        anonymize(_two_groups(), ["age"], max_suppression=1.5)
