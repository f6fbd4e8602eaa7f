import json

import pytest

from deepfeed.cli import main
from deepfeed.core.platform.audit import AuditEntry, AuditLedger


@pytest.fixture(autouse=True)
def audit_key(monkeypatch):
    monkeypatch.setenv("DEEPFEED_AUDIT_KEY", "test-audit-key-0123456789abcdef")


def _ledger(tmp_path):
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    ledger.append(
        [
            AuditEntry.from_texts("r1", "clean_corpus", "dropped", "exact duplicate of r0", "run-a", before="x"),
            AuditEntry.from_texts(
                "r2", "clean_corpus", "anonymized", "PII replaced: EMAIL x1", "run-a", before="a@b.cn", after="<EMAIL>"
            ),
            AuditEntry.from_texts(
                "f.jsonl#line 3", "raw_corpus", "quarantined", "malformed JSON", "run-b", before="{x"
            ),
        ]
    )
    return ledger


def test_query_filters_by_record_stage_action_and_run(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    assert (
        main(["audit", "--ledger", str(ledger.path), "query", "--stage", "clean_corpus", "--action", "anonymized"]) == 0
    )
    out = capsys.readouterr().out
    assert "r2" in out and "r1" not in out and "1 entry matching" in out
    assert main(["audit", "--ledger", str(ledger.path), "query", "--run-id", "run-b", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["record_id"] == "f.jsonl#line 3"
    assert main(["audit", "--ledger", str(ledger.path), "query", "--record-id", "r1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "exact duplicate of r0"


def test_verify_passes_then_fails_with_nonzero_exit_on_tampering(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 0
    assert "ledger OK: 3 entries" in capsys.readouterr().out
    lines = ledger.path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("EMAIL x1", "EMAIL x0")
    ledger.path.write_text("".join(lines))
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED: line 2" in err and "changed" in err


def test_verify_catches_a_cut_tail_with_or_without_an_anchor(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    head = ledger.head()[1]
    ledger.path.write_text("".join(ledger.path.read_text().splitlines(keepends=True)[:2]))
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 1
    assert "cut off" in capsys.readouterr().err
    assert main(["audit", "--ledger", str(ledger.path), "verify", "--anchor", head]) == 1
    assert "anchor not found" in capsys.readouterr().err


def test_unkeyed_ledger_says_so_and_rekey_fixes_it(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    lines = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    ledger.path.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "mac"}) + "\n" for e in lines))
    ledger.head_path.unlink()
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 1
    err = capsys.readouterr().err
    assert "UNKEYED" in err and "deepfeed audit rekey" in err
    assert main(["audit", "--ledger", str(ledger.path), "rekey"]) == 0
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 0


def test_verify_without_the_key_is_not_a_pass(tmp_path, capsys, monkeypatch):
    ledger = _ledger(tmp_path)
    monkeypatch.delenv("DEEPFEED_AUDIT_KEY")
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "other-home"))
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 2
    assert "no audit key" in capsys.readouterr().err


def test_missing_ledger_is_reported(tmp_path, capsys):
    assert main(["audit", "--ledger", str(tmp_path / "none.jsonl"), "query"]) == 2
    assert "no ledger" in capsys.readouterr().err
