from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from deepfeed.core.data.ingest import RECORD_FIELDS
from deepfeed.core.loop.feedback import FeedbackError, FeedbackStore, default_root

SALT = "test-user-salt-0123456789abcdef"


def _fb(i: int = 0, **kw):
    return {
        "prompt": f"question {i}?",
        "answer": f"model answer {i}",
        "rating": 1.0,
        "user_id": f"u{i % 3}",
        "model_version": "3",
        **kw,
    }


def test_append_seal_read_corpus_schema(tmp_path):
    store = FeedbackStore(tmp_path, salt=SALT)
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
    store = FeedbackStore(tmp_path, salt=SALT)
    ids = []
    for i in range(3):
        store.append(_fb(i))
        ids.append(store.seal_batch())
    assert store.batches() == ids == sorted(ids)
    assert [len(store.read_batch(b)) for b in ids] == [1, 1, 1]


def test_pii_is_scrubbed_and_user_hashed(tmp_path):
    store = FeedbackStore(tmp_path, salt=SALT)
    store.append(_fb(0, prompt="mail me at jane.doe@example.com please", user_id="jane"))
    raw = (tmp_path / "open.jsonl").read_text()
    assert "jane.doe@example.com" not in raw and "<EMAIL>" in raw
    assert '"jane"' not in raw


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"answer": "a", "rating": 1}, "prompt"),
        ({"prompt": "q", "answer": "a", "rating": 3}, "rating"),
        ({"prompt": "q", "answer": "a", "rating": "good"}, "rating"),
        ({"prompt": "q", "rating": 1}, "answer"),
        ({"prompt": 5, "answer": "a", "rating": 1}, "prompt"),
        ({"prompt": "q", "answer": "a", "rating": 1, "tags": "x"}, "tags"),
    ],
)
def test_bad_feedback_is_refused_naming_the_field(tmp_path, bad, field):
    store = FeedbackStore(tmp_path, salt=SALT)
    with pytest.raises(FeedbackError, match=field):
        store.append(bad)
    assert store.pending() == 0


def test_torn_line_from_a_crashed_writer_is_isolated(tmp_path):
    store = FeedbackStore(tmp_path, salt=SALT)
    first = store.append(_fb(1))
    with open(tmp_path / "open.jsonl", "ab") as f:
        f.write(b'{"feedback_id": "half')  # died mid-write, never acknowledged
    second = store.append(_fb(2))
    batch = store.seal_batch()
    assert [r["record_id"] for r in store.read_batch(batch)] == [first, second]


def test_unknown_batch(tmp_path):
    with pytest.raises(KeyError, match="no sealed feedback batch"):
        FeedbackStore(tmp_path, salt=SALT).read_batch("nope")


def test_default_root_follows_deepfeed_home(deepfeed_env):
    assert default_root() == deepfeed_env / "feedback"
    assert FeedbackStore().root == deepfeed_env / "feedback"


def _writer(root, worker, n):
    store = FeedbackStore(root, salt=SALT)
    for i in range(n):
        store.append(_fb(worker * 1000 + i))


def test_concurrent_appends_and_seals_lose_nothing(tmp_path):
    workers, per_worker = 4, 40
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    store = FeedbackStore(tmp_path, salt=SALT)
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


def test_every_free_text_field_is_scrubbed_and_narrow_fields_refuse_text(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path, salt=SALT)
    store.append(_fb(0, tags=["refund", "from jane.doe@example.com", "card 4111 1111 1111 1111"], lang="en"))
    batch = store.seal_batch()
    on_disk = (tmp_path / "sealed" / f"{batch}.jsonl").read_text()
    trained = json.dumps(store.read_batch(batch))
    for text in (on_disk, trained):
        assert "jane.doe@example.com" not in text and "4111 1111 1111 1111" not in text and "refund" in text
    for field, value in (
        ("lang", "call 13812345678"),
        ("model_version", "v1 jane.doe@example.com"),
        ("arm", "treatment"),
        ("classification", "secret: 13812345678"),
        ("user_hash", "13812345678"),
    ):
        with pytest.raises(FeedbackError, match=field) as err:
            store.append(_fb(1, **{field: value}))
        assert "13812345678" not in str(err.value) and "jane" not in str(err.value)
    with pytest.raises(FeedbackError, match="tags"):
        store.append(_fb(1, tags=["x" * 65]))


def test_user_ids_need_the_secret_salt(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPFEED_USER_SALT", raising=False)
    monkeypatch.delenv("DEEPFEED_USER_SALT_FILE", raising=False)
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "home"))
    with pytest.raises(FeedbackError, match="salt"):
        FeedbackStore(tmp_path / "fb").append(_fb(0))
    assert FeedbackStore(tmp_path / "fb").pending() == 0
    monkeypatch.setenv("DEEPFEED_USER_SALT", SALT)
    FeedbackStore(tmp_path / "fb").append(_fb(0, user_id="13812345678"))
    assert "13812345678" not in (tmp_path / "fb" / "open.jsonl").read_text()


def test_legacy_batches_with_raw_tags_are_scrubbed_on_the_way_to_training(tmp_path):
    store = FeedbackStore(tmp_path, salt=SALT)
    store.append(_fb(0))
    batch = store.seal_batch()
    path = tmp_path / "sealed" / f"{batch}.jsonl"
    record = json.loads(path.read_text())
    record.update(tags=["jane.doe@example.com"], lang="jane.doe@example.com")  # as stored before scrubbing
    path.write_text(json.dumps(record) + "\n")
    [pair] = store.read_batch(batch)
    assert "jane.doe@example.com" not in json.dumps(pair) and pair["lang"] is None
