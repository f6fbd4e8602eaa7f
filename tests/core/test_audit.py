import hashlib
import hmac
import json
import multiprocessing

import numpy as np
import pytest

from deepfeed.core.platform.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditLedger,
    LedgerCorrupted,
    content_hash,
)

AUDIT_KEY = "test-audit-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def audit_key(monkeypatch):
    monkeypatch.setenv("DEEPFEED_AUDIT_KEY", AUDIT_KEY)
    monkeypatch.delenv("DEEPFEED_AUDIT_KEY_FILE", raising=False)
    return AUDIT_KEY


SECRET_TEXT = "联系人张伟，手机13812345678，住北京市朝阳区建国路88号"


def _entries(n, run="run-1", stage="clean", action="modified", start=0):
    return [
        AuditEntry.from_texts(f"rec-{start + i}", stage, action, "normalized NFKC", run, before=f"v{i}", after=f"w{i}")
        for i in range(n)
    ]


def _lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_append_and_verify(tmp_path):
    ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl")
    assert ledger.verify().ok and ledger.head() == (0, GENESIS_HASH)
    assert ledger.append(_entries(3)) == 3
    assert ledger.append(AuditEntry.from_texts("rec-x", "ingest", "quarantined", "malformed JSON", "run-2")) == 1
    result = ledger.verify()
    assert result.ok and result.n_entries == 4 and result.first_bad_line is None
    entries = list(ledger.iter_entries())
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert all(b["prev_hash"] == a["entry_hash"] for a, b in zip(entries, entries[1:]))
    assert entries[0]["hash_before"] == content_hash("v0") and entries[3]["hash_after"] is None
    assert ledger.head() == (4, entries[-1]["entry_hash"]) and result.last_hash == entries[-1]["entry_hash"]
    assert entries[0]["ts"].endswith("+00:00")


def test_ledger_never_contains_the_text_or_pii(tmp_path):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    ledger.append(
        AuditEntry.from_texts(
            "r1",
            "anonymize",
            "anonymized",
            f"scrubbed PII from: {SECRET_TEXT}",
            "run-1",
            before=SECRET_TEXT,
            after="患者<NAME>",
            extra={"note": "mail zhang@example.com"},
        )
    )
    raw = (tmp_path / "l.jsonl").read_text(encoding="utf-8")
    for secret in ("13812345678", "张伟", "建国路88号", "zhang@example.com"):
        assert secret not in raw and json.dumps(secret)[1:-1] not in raw
    (entry,) = ledger.iter_entries()
    assert entry["hash_before"] == content_hash(SECRET_TEXT)
    assert "<PHONE>" in entry["reason"] and entry["extra"] == {"note": "mail <EMAIL>"}
    assert ledger.verify().ok


def test_raw_text_in_a_hash_field_is_refused(tmp_path):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="sha256"):
        ledger.append(AuditEntry("r1", "clean", "modified", "x", "run", hash_before=SECRET_TEXT))
    with pytest.raises(ValueError, match="unknown audit action"):
        ledger.append(AuditEntry("r1", "clean", "deleted_for_fun", "x", "run"))
    with pytest.raises(ValueError, match="run_id"):
        ledger.append(AuditEntry("r1", "clean", "dropped", "x", ""))
    assert not (tmp_path / "l.jsonl").exists()  # a bad batch writes nothing
    AuditLedger(tmp_path / "l.jsonl", extra_actions=["exported"]).append(AuditEntry(0, "s", "exported", "x", "r"))


def _tamper(path, lineno, edit):
    lines = _lines(path)
    obj = json.loads(lines[lineno - 1])
    edit(obj)
    lines[lineno - 1] = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("lineno", [1, 7, 20])
def test_tampering_with_one_line_is_detected_at_that_line(tmp_path, lineno):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(20))
    _tamper(path, lineno, lambda e: e.update(action="dropped"))
    result = ledger.verify()
    assert not result.ok and result.first_bad_line == lineno and result.n_entries == lineno - 1
    assert "changed" in result.reason


def _rechain(path, from_line, edit, key=None):
    """What a forger without the key does: edit a line, then recompute every hash after it
    (and, holding some key, every MAC too)."""
    prev = None
    out = []
    for lineno, raw in enumerate(_lines(path), 1):
        e = json.loads(raw)
        if lineno >= from_line:
            e.pop("entry_hash"), e.pop("mac", None)
            if lineno == from_line:
                edit(e)
            e["prev_hash"] = prev
            unsigned = json.dumps(e, sort_keys=True, separators=(",", ":")).encode()
            e["entry_hash"] = hashlib.sha256(unsigned).hexdigest()
            if key is not None:
                e["mac"] = hmac.new(key, unsigned, hashlib.sha256).hexdigest()
        prev = e["entry_hash"]
        out.append((json.dumps(e) + "\n").encode())
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("forger_key", [None, b"", b"a-guessed-key"])
def test_an_edit_with_the_whole_chain_recomputed_fails_without_the_key(tmp_path, forger_key):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(10))
    _rechain(path, 4, lambda e: e.update(reason="nothing to see"), key=forger_key)
    result = ledger.verify()
    assert (result.ok, result.first_bad_line, result.status) == (False, 4, "tampered")
    assert "MAC" in result.reason


def test_deleted_and_swapped_lines_are_detected(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(10))
    original = _lines(path)
    path.write_bytes(b"".join(original[:5] + original[6:]))
    assert ledger.verify().first_bad_line == 6
    path.write_bytes(b"".join(original[:2] + [original[3], original[2]] + original[4:]))
    assert ledger.verify().first_bad_line == 3


def test_truncation_is_caught_by_the_head_anchor(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(9))
    ledger.append(AuditEntry("v3", "champion_model", "promoted", "gate passed", "run-9"))
    _, anchor = ledger.head()
    path.write_bytes(b"".join(_lines(path)[:-1]))  # "promoted" deleted
    result = ledger.verify()
    assert (result.ok, result.status) == (False, "truncated") and "cut off" in result.reason
    result = ledger.verify(anchor=anchor)
    assert not result.ok and "anchor" in result.reason
    # Deleting the anchor file as well does not help, nor does forging one without the key.
    head = json.loads(ledger.head_path.read_text())
    ledger.head_path.unlink()
    assert not ledger.verify().ok and "missing" in ledger.verify().reason
    forged = {**head, "entries": 9}
    ledger.head_path.write_text(json.dumps(forged))
    assert not ledger.verify().ok and "forged" in ledger.verify().reason
    path.write_bytes(b"")
    assert not ledger.verify().ok


def test_a_writer_that_stopped_before_the_anchor_update_still_verifies(tmp_path):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    ledger.append(_entries(3))
    old_head = ledger.head_path.read_bytes()
    ledger.append(_entries(2, start=3))
    ledger.head_path.write_bytes(old_head)  # as if the process died between the two writes
    result = ledger.verify()
    assert result.ok and result.n_entries == 5 and "lags" in result.notes[0]


def test_unkeyed_ledger_is_reported_and_rekeyed(tmp_path, monkeypatch):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(4))
    _, anchor = ledger.head()
    # A ledger from before keyed MACs: a plain hash chain, no anchor file.
    path.write_bytes(
        b"".join(
            (json.dumps({k: v for k, v in json.loads(raw).items() if k != "mac"}) + "\n").encode()
            for raw in _lines(path)
        )
    )
    ledger.head_path.unlink()
    result = ledger.verify()
    assert (result.ok, result.status) == (False, "unkeyed") and "deepfeed audit rekey" in result.reason
    with pytest.raises(Exception, match="rekey"):
        ledger.append(_entries(1))
    assert AuditLedger(path).rekey(anchor=anchor) == 4
    assert AuditLedger(path).verify().ok and AuditLedger(path).verify(anchor=anchor).ok
    AuditLedger(path).append(_entries(1, start=4))
    assert AuditLedger(path).verify().n_entries == 5


def test_rekey_refuses_a_broken_chain(tmp_path):
    path = tmp_path / "l.jsonl"
    AuditLedger(path).append(_entries(3))
    lines = [json.loads(raw) for raw in _lines(path)]
    for e in lines:
        e.pop("mac")
    lines[1]["reason"] = "edited"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    with pytest.raises(LedgerCorrupted, match="line 2"):
        AuditLedger(path).rekey()


def test_verify_needs_the_key(tmp_path, monkeypatch):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    ledger.append(_entries(2))
    monkeypatch.delenv("DEEPFEED_AUDIT_KEY")
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "elsewhere"))
    result = AuditLedger(tmp_path / "l.jsonl").verify()
    assert (result.ok, result.status) == (False, "no_key")
    wrong = AuditLedger(tmp_path / "l.jsonl", key="another-key-0123456789").verify()
    assert not wrong.ok and wrong.first_bad_line == 1


def test_torn_tail_blocks_appends(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = AuditLedger(path)
    ledger.append(_entries(3))
    with open(path, "ab") as f:
        f.write(b'{"record_id":"half')
    with pytest.raises(LedgerCorrupted, match="incomplete"):
        ledger.append(_entries(1))
    result = ledger.verify()
    assert (result.ok, result.first_bad_line, result.n_entries) == (False, 4, 3)
    assert len(list(ledger.iter_entries())) == 3


def test_odd_values_in_extra_still_verify(tmp_path):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    extra = {"score": np.float32(0.25), "n": np.int64(3), "nan": float("nan"), "broken": "caf\udce9", "zh": "近重复"}
    ledger.append(AuditEntry("r", "clean", "dropped", "near-duplicate", "run", extra=extra))
    (entry,) = ledger.iter_entries()
    assert entry["extra"] == {"score": 0.25, "n": 3, "nan": "nan", "broken": "caf\udce9", "zh": "近重复"}
    assert ledger.verify().ok


def test_appends_continue_the_chain_across_instances(tmp_path):
    path = tmp_path / "l.jsonl"
    AuditLedger(path).append(_entries(5))
    # A long last line: the tail reader must walk back over more than one chunk.
    AuditLedger(path).append(AuditEntry("big", "s", "modified", "x", "r", extra={"pad": "y" * 200_000}))
    AuditLedger(path).append(_entries(5, start=5))
    result = AuditLedger(path).verify()
    assert result.ok and result.n_entries == 11


def _worker(path, worker, n_batches, batch):
    ledger = AuditLedger(path)
    for b in range(n_batches):
        ledger.append(_entries(batch, run=f"w{worker}", start=b * batch))


def test_concurrent_appends_from_several_processes(tmp_path):
    path = str(tmp_path / "l.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(path, w, 25, 8)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ledger = AuditLedger(path)
    result = ledger.verify()
    assert result.ok and result.n_entries == 4 * 25 * 8
    runs = [e["run_id"] for e in ledger.iter_entries()]
    # Each batch is written whole, never interleaved with another process's batch.
    assert all(len(set(runs[i : i + 8])) == 1 for i in range(0, len(runs), 8))
    for w in range(4):
        ids = [e["record_id"] for e in ledger.iter_entries(run_id=f"w{w}")]
        assert ids == [f"rec-{i}" for i in range(200)]


def test_iter_entries_filters(tmp_path):
    ledger = AuditLedger(tmp_path / "l.jsonl")
    ledger.append(_entries(3, run="a", action="dropped"))
    ledger.append(_entries(2, run="b", stage="augment", action="augmented"))
    assert len(list(ledger.iter_entries(run_id="a"))) == 3
    assert [e["record_id"] for e in ledger.iter_entries(stage="augment", action="augmented")] == ["rec-0", "rec-1"]
    assert [e["run_id"] for e in ledger.iter_entries(record_id="rec-2")] == ["a"]
    first_ts = next(ledger.iter_entries(run_id="b"))["ts"]
    assert {e["run_id"] for e in ledger.iter_entries(since=first_ts)} == {"b"}
    assert {e["run_id"] for e in ledger.iter_entries(until=first_ts)} == {"a"}
