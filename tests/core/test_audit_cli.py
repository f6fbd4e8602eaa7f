import json

from deepfeed.cli import main
from deepfeed.core.audit import AuditEntry, AuditLedger


def _ledger(tmp_path):
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    ledger.append([
        AuditEntry.from_texts("r1", "clean_corpus", "dropped", "exact duplicate of r0", "run-a", before="x"),
        AuditEntry.from_texts("r2", "clean_corpus", "anonymized", "PII replaced: EMAIL x1", "run-a", before="a@b.cn", after="<EMAIL>"),
        AuditEntry.from_texts("f.jsonl#line 3", "raw_corpus", "quarantined", "malformed JSON", "run-b", before="{x"),
    ])
    return ledger


def test_query_filters_by_record_stage_action_and_run(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    assert main(["audit", "--ledger", str(ledger.path), "query", "--stage", "clean_corpus", "--action", "anonymized"]) == 0
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


def test_verify_with_an_anchor_catches_a_cut_tail(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    head = ledger.head()[1]
    ledger.path.write_text("".join(ledger.path.read_text().splitlines(keepends=True)[:2]))
    assert main(["audit", "--ledger", str(ledger.path), "verify"]) == 0
    assert main(["audit", "--ledger", str(ledger.path), "verify", "--anchor", head]) == 1
    assert "anchor not found" in capsys.readouterr().err


def test_missing_ledger_is_reported(tmp_path, capsys):
    assert main(["audit", "--ledger", str(tmp_path / "none.jsonl"), "query"]) == 2
    assert "no ledger" in capsys.readouterr().err
