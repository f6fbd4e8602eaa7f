"""An artifact version and its audit entries are published together: a process killed
between the two is seen by verify and repaired by recover (what clean_corpus runs on start)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.audit import AuditEntry, AuditLedger

KEY = "test-audit-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def audit_key(monkeypatch):
    monkeypatch.setenv("DEEPFEED_AUDIT_KEY", KEY)


def _entries(n, start=0):
    return [
        AuditEntry.from_texts(f"rec-{i}", "clean_corpus", "dropped", "too short", "run-1", before=f"t{i}")
        for i in range(start, start + n)
    ]


def _run(tmp_path, crash_at: str, n: int = 25, chunk: int = 10) -> None:
    """clean_corpus's publication sequence in a child process that dies at `crash_at`."""

    def child():
        ledger = AuditLedger(tmp_path / "audit" / "ledger.jsonl")
        store = ArtifactStore(tmp_path / "artifacts")
        spool = ledger.spool("clean_corpus", "run-1")
        spool.write(_entries(n))
        with store.new_version("clean_corpus") as version:
            (version.path / "data.txt").write_text("cleaned")
            spool.mark_publishing(version.uri)
            if crash_at == "before_publication":
                os._exit(0)
        if crash_at == "after_publication":
            os._exit(0)
        if crash_at == "mid_replay":
            ledger.append(next(iter(_read_first_chunk(spool.path, chunk))))
            os._exit(0)
        spool.publish(chunk)
        os._exit(0)

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def _read_first_chunk(path, chunk):
    from deepfeed.core.platform.audit import _read_spool

    yield next(_read_spool(path, chunk))


def _ledger(tmp_path) -> AuditLedger:
    return AuditLedger(tmp_path / "audit" / "ledger.jsonl")


def _dropped(ledger) -> list[str]:
    return [e["record_id"] for e in ledger.iter_entries(action="dropped")]


def test_clean_run_publishes_entries_between_markers(tmp_path):
    _run(tmp_path, crash_at="never")
    ledger = _ledger(tmp_path)
    assert ledger.verify().ok
    actions = [e["action"] for e in ledger.iter_entries()]
    assert actions[0] == "publishing" and actions[-1] == "published" and actions.count("dropped") == 25
    assert not list(ledger.spool_dir.iterdir())


def test_crash_after_publication_fails_verify_until_recovered(tmp_path):
    _run(tmp_path, crash_at="after_publication")
    ledger = _ledger(tmp_path)
    [version] = ArtifactStore(tmp_path / "artifacts").versions("clean_corpus")  # visible...
    result = ledger.verify()
    assert (result.ok, result.status) == (False, "unpublished_audit")  # ...without its entries
    assert version in result.reason and "deepfeed audit recover" in result.reason
    [done] = ledger.recover()
    assert "appended its 25 missing audit entries" in done
    assert ledger.verify().ok and _dropped(ledger) == [f"rec-{i}" for i in range(25)]
    assert ledger.recover() == [] and not list(ledger.spool_dir.iterdir())


def test_crash_mid_replay_appends_only_what_is_missing(tmp_path):
    _run(tmp_path, crash_at="mid_replay", n=25, chunk=10)
    ledger = _ledger(tmp_path)
    assert len(_dropped(ledger)) == 10 and not ledger.verify().ok
    ledger.recover(chunk=10)
    assert ledger.verify().ok and _dropped(ledger) == [f"rec-{i}" for i in range(25)]


def test_crash_before_publication_is_abandoned_not_published(tmp_path):
    _run(tmp_path, crash_at="before_publication")
    ledger = _ledger(tmp_path)
    assert ArtifactStore(tmp_path / "artifacts").versions("clean_corpus") == []
    result = ledger.verify()
    assert result.ok and "in progress or was abandoned" in result.notes[0]
    [done] = ledger.recover()
    assert "never published" in done
    assert _dropped(ledger) == [] and ledger.verify().ok and ledger.verify().notes == ()


def test_recover_leaves_a_live_spool_alone(tmp_path):
    ledger = _ledger(tmp_path)
    spool = ledger.spool("clean_corpus", "run-live")
    spool.write(_entries(3))
    assert ledger.recover() == [] and spool.path.exists()
    spool.discard()
    assert not spool.path.exists() and json.dumps(list(ledger.iter_entries())) == "[]"
