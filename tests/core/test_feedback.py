from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from deepfeed.core.feedback import FeedbackError, FeedbackStore, default_root
from deepfeed.core.ingest import RECORD_FIELDS


def _fb(i: int = 0, **kw):
    return {"prompt": f"question {i}?", "answer": f"model answer {i}", "rating": 1.0,
            "user_id": f"u{i % 3}", "model_version": "3", **kw}


def test_append_seal_read_corpus_schema(tmp_path):
    store = FeedbackStore(tmp_path)
    good = store.append(_fb(1))
    corrected = store.append(_fb(2, rating=0.0, correction="the right answer"))
    store.append(_fb(3, rating=0.0))  # bad, no correction: metrics only
    assert store.pending() == 3
    batch = store.seal_batch()
    assert batch is not None and store.batches() == [batch]
    assert store.pending() == 0 and store.seal_batch() is None

    records = store.read_batch(batch)
    assert [r["record_id"] for r in records] == [good, corrected]
    for r in records:
        assert set(RECORD_FIELDS) | {"rating"} == set(r)
        assert r["kind"] == "pair" and r["text"] is None and r["source"] == "feedback"
        json.loads(r["meta"])
    assert records[0]["response"] == "model answer 1"
    assert records[1]["response"] == "the right answer" and records[1]["rating"] == 0.0
    assert json.loads(records[1]["meta"])["corrected"] is True
    assert len(store.raw_records(batch)) == 3


def test_batches_sort_in_sealing_order(tmp_path):
    store = FeedbackStore(tmp_path)
    ids = []
    for i in range(3):
        store.append(_fb(i))
        ids.append(store.seal_batch())
    assert store.batches() == ids == sorted(ids)
    assert [len(store.read_batch(b)) for b in ids] == [1, 1, 1]


def test_pii_is_scrubbed_and_user_hashed(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append(_fb(0, prompt="mail me at jane.doe@example.com please", user_id="jane"))
    raw = (tmp_path / "open.jsonl").read_text()
    assert "jane.doe@example.com" not in raw and "<EMAIL>" in raw
    assert '"jane"' not in raw


@pytest.mark.parametrize("bad, field", [
    ({"answer": "a", "rating": 1}, "prompt"),
    ({"prompt": "q", "answer": "a", "rating": 3}, "rating"),
    ({"prompt": "q", "answer": "a", "rating": "good"}, "rating"),
    ({"prompt": "q", "rating": 1}, "answer"),
    ({"prompt": 5, "answer": "a", "rating": 1}, "prompt"),
    ({"prompt": "q", "answer": "a", "rating": 1, "tags": "x"}, "tags"),
])
def test_bad_feedback_is_refused_naming_the_field(tmp_path, bad, field):
    store = FeedbackStore(tmp_path)
    with pytest.raises(FeedbackError, match=field):
        store.append(bad)
    assert store.pending() == 0


def test_torn_line_from_a_crashed_writer_is_isolated(tmp_path):
    store = FeedbackStore(tmp_path)
    first = store.append(_fb(1))
    with open(tmp_path / "open.jsonl", "ab") as f:
        f.write(b'{"feedback_id": "half')  # died mid-write, never acknowledged
    second = store.append(_fb(2))
    batch = store.seal_batch()
    assert [r["record_id"] for r in store.read_batch(batch)] == [first, second]


def test_unknown_batch(tmp_path):
    with pytest.raises(KeyError, match="no sealed feedback batch"):
        FeedbackStore(tmp_path).read_batch("nope")


def test_default_root_follows_deepfeed_home(deepfeed_env):
    assert default_root() == deepfeed_env / "feedback"
    assert FeedbackStore().root == deepfeed_env / "feedback"


def _writer(root, worker, n):
    store = FeedbackStore(root)
    for i in range(n):
        store.append(_fb(worker * 1000 + i))


def test_concurrent_appends_and_seals_lose_nothing(tmp_path):
    workers, per_worker = 4, 40
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    store = FeedbackStore(tmp_path)
    sealed = []
    while any(p.is_alive() for p in procs):
        batch = store.seal_batch()
        if batch:
            sealed.append(batch)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    last = store.seal_batch()
    sealed += [last] if last else []
    prompts = [r["prompt"] for b in store.batches() for r in store.read_batch(b)]
    assert store.batches() == sealed
    assert len(prompts) == len(set(prompts)) == workers * per_worker
