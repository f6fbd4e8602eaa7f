import gzip
import json

from deepfeed.core.ingest import decode_bytes, ingest_folder, normalize_row


def test_folder_of_mixed_formats_accounts_for_every_record(tiny_corpus):
    result = ingest_folder(tiny_corpus)
    reasons = [q["reason"] for q in result.quarantine]
    assert result.read == len(result.records) + len(result.quarantine)
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert any("without a response" in r for r in reasons)
    assert any(r == "expected 2 columns, found 3" for r in reasons)
    assert any(r.startswith("binary content") for r in reasons)
    kinds = {r["kind"] for r in result.records}
    assert kinds == {"pair", "text"}
    # the good records of a file with bad lines are kept
    assert result.files["pairs.jsonl"]["kept"] == 48
    assert result.files["notes.csv"] == {"kept": 2, "quarantined": 1}
    md = [r for r in result.records if r["source"] == "doc.md"]
    assert [r["text"] for r in md] == ["# Title", "A paragraph of text. It has two sentences.", "Another paragraph."]


def test_metadata_is_kept_and_tags_parsed():
    record, error = normalize_row({"question": "Q?", "answer": "A.", "category": "a, b", "ward": 7}, "f.jsonl", "line 1")
    assert error is None
    assert record["tags"] == ["a", "b"]
    assert json.loads(record["meta"]) == {"ward": 7}


def test_encodings_and_gzip(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("高血压的治疗".encode("gb18030"))
    (tmp_path / "bom.jsonl").write_bytes("\ufeff".encode() + json.dumps({"text": "hello"}).encode())
    (tmp_path / "z.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": "zipped"}).encode()))
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 50)[:-20])
    result = ingest_folder(tmp_path)
    texts = sorted(r["text"] for r in result.records)
    assert texts == ["hello", "zipped", "高血压的治疗"]
    assert [q["source"] for q in result.quarantine] == ["broken.jsonl.gz"]
    assert "unreadable file" in result.quarantine[0]["reason"]


def test_undecodable_bytes_are_reported():
    text, error = decode_bytes(b"\xff\xfe\xfa\x80\x81" * 3 + b"\x81")
    assert text is None and "undecodable" in error


def test_oversized_record_is_quarantined(tmp_path):
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    result = ingest_folder(tmp_path, max_record_bytes=1000)
    assert [r["text"] for r in result.records] == ["ok"]
    assert "max_record_bytes" in result.quarantine[0]["reason"]


def test_missing_folder_raises_clear_error(tmp_path):
    import pytest

    from deepfeed.core.ingest import CorpusSourceError

    with pytest.raises(CorpusSourceError, match="does not exist"):
        ingest_folder(tmp_path / "nope")
