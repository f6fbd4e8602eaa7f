import pickle
import random

import numpy as np
import pytest
from datasketch import MinHash

from deepfeed.core.data.dedup import (
    NearDuplicateIndex,
    _band_keys,
    _BatchResolution,
    _SortedRuns,
    exact_key,
    minhash_signatures,
    normalize_for_dedup,
    shingle_hashes,
)

EN = (
    "The patient is a 67-year-old man with a history of hypertension and type 2 diabetes "
    "who presented with chest pain radiating to the left arm for two hours. An ECG showed "
    "ST elevation in the inferior leads and he was taken for coronary angiography."
)
ZH = (
    "患者男性，六十七岁，既往有高血压和二型糖尿病病史，因胸痛向左臂放射两小时入院。"
    "入院后完善心电图检查，提示急性下壁心肌梗死，立即行冠状动脉造影并植入支架一枚。"
    "术后给予双联抗血小板、他汀类药物及降压治疗，病情平稳，一周后出院，嘱定期门诊随访。"
)
OTHER_EN = (
    "Quarterly revenue grew by eight percent on strong demand for cloud services in Europe "
    "and Asia, while operating costs fell after the consolidation of two data centres."
)
OTHER_ZH = (
    "本季度公司营业收入同比增长百分之八，主要得益于欧洲和亚洲市场对云服务的强劲需求，"
    "同时数据中心整合后运营成本有所下降。"
)

_VOCAB = (
    "patient doctor hospital admitted discharged chest pain fever cough blood pressure heart "
    "lung kidney liver test result normal elevated treatment dose daily weekly follow visit "
    "clinic nurse report scan image therapy surgery recovery history family symptom severe"
).split()


def _random_sentences(n, seed=0, words=(12, 30)):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_VOCAB) for _ in range(rng.randint(*words))) for _ in range(n)]


def _true_jaccard(a, b, n=5):
    sa = {a[i : i + n] for i in range(len(a) - n + 1)}
    sb = {b[i : i + n] for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_normalization_and_exact_key():
    assert normalize_for_dedup("  Hello\t\tWORLD \n x\u3000y ") == "hello world x y"
    assert exact_key("Hello  World") == exact_key("hello world\n")
    assert exact_key("hello world") != exact_key("hello worlds")
    assert len(exact_key("")) == 32


def test_signatures_are_datasketch_minhashes():
    texts = [normalize_for_dedup(t) for t in (EN, ZH, "ab", "")]
    hashes, offsets = shingle_hashes(texts, 5)
    sig = minhash_signatures(texts, num_perm=64, seed=7)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=7, hashfunc=int)
        m.update_batch(hashes[offsets[i] : offsets[i + 1]].tolist())
        assert np.array_equal(m.hashvalues, sig[i])


def test_shingles_stay_inside_each_text():
    # The same text must get the same shingles whatever its neighbours are.
    alone = minhash_signatures(["abcdefgh"])[0]
    batched = minhash_signatures(["xyz", "abcdefgh", "123456789"])
    assert np.array_equal(batched[1], alone)
    hashes, offsets = shingle_hashes(["abcdefgh", "ab"], 5)
    assert len(set(hashes[offsets[0] : offsets[1]].tolist())) == 4  # abcde bcdef cdefg defgh
    assert offsets[2] - offsets[1] >= 1  # a short text is one padded shingle


def test_signature_agreement_estimates_jaccard():
    edited = EN.replace("two hours", "three hours").replace("inferior", "anterior")
    sig = minhash_signatures([EN, edited, OTHER_EN], num_perm=256)
    est = (sig[0] == sig[1]).mean()
    true = _true_jaccard(normalize_for_dedup(EN), normalize_for_dedup(edited))
    assert abs(est - true) < 0.1
    assert (sig[0] == sig[2]).mean() < 0.1


def test_finds_near_duplicates_with_small_edits():
    idx = NearDuplicateIndex(threshold=0.8)
    assert idx.add_batch(["orig", "other"], [EN, OTHER_EN]) == [None, None]
    variants = [
        EN.replace("two hours", "2 hours"),  # a small edit
        EN.upper(),  # re-cased
        EN.replace(" ", "  \n"),  # reflowed
        EN.replace(".", "!", 1),  # punctuation
        EN + " Signed.",  # appended text
    ]
    result = idx.add_batch([f"v{i}" for i in range(len(variants))], variants)
    assert result == ["orig"] * len(variants)
    assert len(idx) == 2


def test_distinct_texts_are_not_merged():
    texts = _random_sentences(3000, seed=1)
    idx = NearDuplicateIndex(threshold=0.8)
    result = idx.add_batch(range(len(texts)), texts)
    # Sentences drawn from a small vocabulary share many shingles, but none is a near-duplicate.
    assert sum(r is not None for r in result) == 0
    # Half of the text replaced: Jaccard ~0.3-0.5, must stay distinct.
    half = EN[: len(EN) // 2] + OTHER_EN[len(OTHER_EN) // 2 :]
    assert idx.add_batch(["en", "half"], [EN, half]) == [None, None]


def test_chinese_near_duplicates():
    idx = NearDuplicateIndex(threshold=0.8)
    assert idx.add_batch(["zh", "zh-other"], [ZH, OTHER_ZH]) == [None, None]
    edited = ZH.replace("两小时", "三小时")
    deleted = ZH.replace("立即", "即")
    unrelated = "今天天气很好，我们去公园散步吧。"
    assert idx.add_batch(["edited", "deleted", "unrelated"], [edited, deleted, unrelated]) == ["zh", "zh", None]
    # Whitespace runs collapse, so a reflowed copy is an exact duplicate.
    spaced = ZH.replace("。", "。 ")
    reflowed = spaced.replace(" ", "\n\n  ")
    assert exact_key(spaced) == exact_key(reflowed)
    assert NearDuplicateIndex().add_batch(["spaced", "reflowed"], [spaced, reflowed]) == [None, "spaced"]


def test_within_batch_order_and_exact_duplicates():
    idx = NearDuplicateIndex()
    texts = [EN, EN, "", "", "short", "Short ", OTHER_EN]
    assert idx.add_batch(list("abcdefg"), texts) == [None, "a", None, "c", None, "e", None]


def test_streaming_matches_single_batch_and_sequential_reference():
    # Chains of small successive edits exercise buckets whose first member is itself
    # a duplicate; exact duplicates and random texts fill the rest.
    rng = random.Random(3)
    base = _random_sentences(400, seed=4, words=(20, 40))
    texts = []
    for text in base:
        texts.append(text)
        for _ in range(rng.randint(0, 3)):
            words = text.split()
            words[rng.randrange(len(words))] = rng.choice(_VOCAB)
            text = " ".join(words)
            texts.append(text)
    rng.shuffle(texts)
    ids = list(range(len(texts)))

    single = NearDuplicateIndex().add_batch(ids, texts)

    idx = NearDuplicateIndex()
    sig = idx.signatures(texts)
    keys = _band_keys(sig, idx.bands, idx.rows)
    tables = [{} for _ in range(idx.bands)]
    reference = []
    for i in ids:  # the semantics of a MinHashLSH that holds one record per bucket
        dup = None
        for band in range(idx.bands):
            j = tables[band].get(int(keys[band, i]))
            if j is not None and np.count_nonzero(sig[i] == sig[j]) >= idx._min_agree:
                dup = j
                break
        reference.append(dup)
        if dup is None:
            for band in range(idx.bands):
                tables[band].setdefault(int(keys[band, i]), i)
    assert [r is None for r in single] == [r is None for r in reference]
    assert 0 < sum(r is not None for r in single) < len(texts)
    for i, j in enumerate(single):  # every reported id is an earlier kept record
        assert j is None or (j < i and single[j] is None)

    streamed = []
    stream = NearDuplicateIndex()
    pos = 0
    for size in [1, 7, 50, 3, 200, 0, 500, 10_000]:
        streamed += stream.add_batch(ids[pos : pos + size], texts[pos : pos + size])
        pos += size
    assert len(streamed) == len(texts)
    mismatches = sum((a is None) != (b is None) for a, b in zip(single, streamed))
    assert mismatches <= len(texts) // 100
    assert len(stream) == sum(r is None for r in streamed)


def test_bucket_whose_first_member_is_a_duplicate():
    # Band 1 bucket Y holds 1 (a duplicate of 0), then 2 and 3: a sequential index would
    # hold 2 for Y, so 3 must be verified against 2, not against the dropped 1.
    sig = np.array([[1, 2, 3, 4], [1, 2, 3, 9], [5, 6, 7, 8], [5, 6, 7, 0]], np.uint32)
    keys = np.array([[10, 10, 20, 30], [40, 50, 50, 50]], np.uint64)
    order = np.argsort(keys, axis=1, kind="stable")
    batch = _BatchResolution(sig, keys, order, np.ones(4, bool), min_agree=3)
    assert batch.duplicates == [(1, 0), (3, 2)]
    assert batch.kept.tolist() == [True, False, True, False]


def test_sorted_runs_return_the_earliest_slot_like_a_dict():
    # Many small runs: exercises size-tiered merges and the key filter's regrowth.
    rng = np.random.default_rng(0)
    runs, reference, slot = _SortedRuns(bands=3), [{}, {}, {}], 0
    for size in rng.integers(1, 400, 120):
        keys = rng.integers(0, 5000, (3, size)).astype(np.uint64)  # small range: many repeats
        order = np.argsort(keys, axis=1, kind="stable")
        runs.add_sorted(np.take_along_axis(keys, order, 1), (slot + order).astype(np.int32))
        for band in range(3):
            for i, key in enumerate(keys[band].tolist()):
                reference[band].setdefault(key, slot + i)
        slot += int(size)
    queries = rng.integers(0, 6000, (3, 2000)).astype(np.uint64)
    order = np.argsort(queries, axis=1, kind="stable")
    found = runs.lookup(np.take_along_axis(queries, order, 1), order)
    expected = [[reference[b].get(k, -1) for k in queries[b].tolist()] for b in range(3)]
    assert found.tolist() == expected
    assert len(runs._runs) <= 3 * 4  # (fanout - 1) * tiers, tiers = ceil(log4(120))


def test_lsh_recall_against_brute_force():
    texts = []
    rng = random.Random(5)
    for text in _random_sentences(300, seed=6, words=(30, 50)):
        texts.append(text)
        words = text.split()
        words[rng.randrange(len(words))] = "zzz"
        texts.append(" ".join(words))  # one word changed: Jaccard ~0.85-0.9
    result = NearDuplicateIndex().add_batch(range(len(texts)), texts)
    found = sum(result[i] == i - 1 for i in range(1, len(texts), 2))
    assert found >= 0.9 * (len(texts) // 2)


def test_index_is_picklable_and_keeps_working():
    idx = NearDuplicateIndex()
    idx.add_batch(["a", "b"], [EN, ZH])
    restored = pickle.loads(pickle.dumps(idx))
    assert restored.add_batch(["c", "d"], [EN.replace("67", "68"), OTHER_ZH]) == ["a", None]
    assert len(restored) == 3


def test_parameters_and_errors():
    idx = NearDuplicateIndex(threshold=0.9, num_perm=64, ngram=3, params=(8, 8))
    assert (idx.bands, idx.rows) == (8, 8)
    assert idx.add_batch([], []) == []
    assert minhash_signatures([]).shape == (0, 128)
    with pytest.raises(ValueError):
        shingle_hashes(["abc"], 0)
    with pytest.raises(ValueError):
        idx.add_batch(["a"], [])
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold=0)
