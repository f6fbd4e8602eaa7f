import gzip
import hashlib
import json

import pytest

from deepfeed.core.data.ingest import CorpusSourceError, decode_bytes, ingest_folder, normalize_row


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
    record, error = normalize_row(
        {"question": "Q?", "answer": "A.", "category": "a, b", "ward": 7}, "f.jsonl", "line 1"
    )
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
    assert "truncated or corrupt gzip" in result.quarantine[0]["reason"]


def test_undecodable_bytes_are_reported():
    text, error = decode_bytes(b"\xff\xfe\xfa\x80\x81" * 3 + b"\x81")
    assert text is None and "undecodable" in error


def test_oversized_record_is_quarantined(tmp_path):
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    result = ingest_folder(tmp_path, max_record_bytes=1000)
    assert [r["text"] for r in result.records] == ["ok"]
    assert "max_record_bytes" in result.quarantine[0]["reason"]


def test_missing_folder_raises_clear_error(tmp_path):
    with pytest.raises(CorpusSourceError, match="does not exist"):
        ingest_folder(tmp_path / "nope")


def _reasons(result):
    return {(q["source"], q["locator"]): q["reason"] for q in result.quarantine}


def test_bad_input_is_quarantined_with_reasons_and_good_records_kept(tmp_path):
    good = [json.dumps({"text": f"record number {i} of a long file"}) for i in range(2000)]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "huge.jsonl").write_text(json.dumps({"text": "x" * 10_000_000}) + "\n" + good[0] + "\n")
    (tmp_path / "mixed.jsonl").write_text("\n".join([good[1], '{"text": "unterminated', good[2], "[1, 2]"]) + "\n")
    (tmp_path / "cols.csv").write_text("text,category\nfine row,a\nmissing\ntoo,many,columns\nsecond fine row,b\n")
    # a UTF-8 file with one line of Latin-1 bytes in it: only that line is lost
    first, third = (json.dumps({"text": t}, ensure_ascii=False).encode() for t in ("第一行", "第三行"))
    (tmp_path / "enc.jsonl").write_bytes(first + b'\n{"text": "caf\xe9"}\n' + third + b"\n")
    (tmp_path / "gbk.txt").write_bytes("糖尿病的饮食".encode("gb18030"))
    whole = gzip.compress(("\n".join(good) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    result = ingest_folder(tmp_path, max_record_bytes=1_000_000)
    reasons = _reasons(result)
    assert result.read == len(result.records) + len(result.quarantine)
    assert reasons[("empty.jsonl", "file")] == "empty file (no content)"
    assert reasons[("binary.txt", "file")].startswith("binary content")
    assert reasons[("huge.jsonl", "line 1")] == "record larger than max_record_bytes=1000000"
    assert reasons[("mixed.jsonl", "line 2")].startswith("malformed JSON")
    assert reasons[("mixed.jsonl", "line 4")] == "expected an object, found list"
    assert reasons[("cols.csv", "line 3")] == "expected 2 columns, found 1"
    assert reasons[("cols.csv", "line 4")] == "expected 2 columns, found 3"
    assert reasons[("enc.jsonl", "line 2")] == "invalid UTF-8 in an otherwise UTF-8 file"
    assert "truncated or corrupt gzip" in next(r for (s, _), r in reasons.items() if s == "cut.jsonl.gz")
    by_source = {}
    for r in result.records:
        by_source.setdefault(r["source"], []).append(r["text"])
    assert by_source["huge.jsonl"] == ["record number 0 of a long file"]
    assert len(by_source["mixed.jsonl"]) == 2
    assert by_source["cols.csv"] == ["fine row", "second fine row"]
    assert by_source["enc.jsonl"] == ["第一行", "第三行"]
    assert by_source["gbk.txt"] == ["糖尿病的饮食"]
    # the complete records before the cut are kept, in order
    recovered = by_source["cut.jsonl.gz"]
    assert 0 < len(recovered) < 2000
    assert recovered == [f"record number {i} of a long file" for i in range(len(recovered))]


def test_quarantine_keeps_a_reference_and_no_raw_pii(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "mail alice.w@example.com now"\n')
    [row] = ingest_folder(tmp_path).quarantine
    assert b"alice.w@example.com" not in row["raw"] and b"<EMAIL>" in row["raw"]
    assert row["raw_sha256"] == hashlib.sha256(b'{"text": "mail alice.w@example.com now"').hexdigest()


def test_fsspec_url_sources():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/deepfeed-test/corpus/pairs.jsonl", (json.dumps({"question": "Q?", "answer": "A."}) + "\n{bad\n").encode())
    fs.pipe("/deepfeed-test/corpus/sub/notes.csv.gz", gzip.compress(b"text\nfrom memory\n"))
    try:
        result = ingest_folder("memory://deepfeed-test/corpus")
    finally:
        fs.rm("/deepfeed-test", recursive=True)
    assert sorted(r["source"] for r in result.records) == ["pairs.jsonl", "sub/notes.csv.gz"]
    assert [q["locator"] for q in result.quarantine] == ["line 2"]


def test_every_quarantine_reference_resolves_to_the_raw_bytes(tmp_path):
    from deepfeed.core.data.ingest import resolve_quarantine_ref, write_quarantine_blobs

    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "enc.jsonl").write_bytes('{"text": "第一行"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    (tmp_path / "mixed.jsonl").write_text('{"text": "fine"}\n{"text": "unterminated\n{"text": "unterminated\n')
    (tmp_path / "gbk.jsonl").write_bytes('{"text": "糖尿病"\n'.encode("gb18030"))
    (tmp_path / "data.bin").write_bytes(b"\x89PNG not a corpus")
    (tmp_path / "empty.md").write_bytes(b"")
    result = ingest_folder(tmp_path)
    artifact = tmp_path / "artifact"
    write_quarantine_blobs(artifact, result.blobs)
    assert len(result.quarantine) == 7 and len(result.blobs) == 6  # the repeated line is stored once
    resolved = {(q["source"], q["locator"]): resolve_quarantine_ref(artifact, q["raw_ref"]) for q in result.quarantine}
    for q in result.quarantine:
        data = resolved[(q["source"], q["locator"])]
        assert hashlib.sha256(data).hexdigest() == q["raw_sha256"] and len(data) == q["raw_bytes"]
    assert resolved[("binary.txt", "file")] == bytes(range(256)) * 4
    assert resolved[("enc.jsonl", "line 2")] == b'{"text": "caf\xe9"}'
    assert resolved[("data.bin", "file")] == b"\x89PNG not a corpus"
    assert resolved[("gbk.jsonl", "line 1")] == '{"text": "糖尿病"'.encode()  # decoded file: the record's text as UTF-8
    (artifact / result.quarantine[0]["raw_ref"]).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match its sha256"):
        resolve_quarantine_ref(artifact, result.quarantine[0]["raw_ref"])


def test_sources_are_sub_folders_plus_the_root_files(tmp_path):
    from deepfeed.core.data.ingest import ROOT_SOURCE, discover_sources, ingest_source

    (tmp_path / "clinic").mkdir()
    (tmp_path / "clinic" / "a.jsonl").write_text('{"text": "from the clinic"}\n')
    (tmp_path / "clinic" / "deep").mkdir()
    (tmp_path / "clinic" / "deep" / "b.txt").write_text("nested text\n")
    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "c.md").write_text("wiki text\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("not data")
    (tmp_path / "loose.jsonl").write_text('{"text": "loose"}\n')
    sources = discover_sources(tmp_path)
    assert list(sources) == [ROOT_SOURCE, "clinic", "wiki"]
    result, fingerprint = ingest_source(tmp_path, "clinic")
    assert sorted(r["source"] for r in result.records) == ["clinic/a.jsonl", "clinic/deep/b.txt"]
    # names relative to the root: the same record id as when the whole root is read
    whole = {r["source"]: r["record_id"] for r in ingest_folder(tmp_path).records}
    assert all(whole[r["source"]] == r["record_id"] for r in result.records)
    assert ingest_source(tmp_path, "clinic")[1] == fingerprint
    (tmp_path / "clinic" / "new.jsonl").write_text('{"text": "more"}\n')
    assert ingest_source(tmp_path, "clinic")[1] != fingerprint
    assert [r["text"] for r in ingest_source(tmp_path, ROOT_SOURCE)[0].records] == ["loose"]
    with pytest.raises(CorpusSourceError, match="'gone' is not under"):
        ingest_source(tmp_path, "gone")
    (tmp_path / ROOT_SOURCE).mkdir()
    (tmp_path / ROOT_SOURCE / "x.txt").write_text("clash\n")
    with pytest.raises(CorpusSourceError, match="reserved"):
        discover_sources(tmp_path)


def test_quarantine_blobs_stay_within_the_item_limit_and_the_budget(tmp_path):
    from deepfeed.core.data.ingest import BlobLimits, resolve_quarantine_ref, write_quarantine_blobs

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a_video.txt").write_bytes(b"\x00" * 5000)  # over the item limit
    (corpus / "b_small.bin").write_bytes(b"\x89PNG 1")
    (corpus / "c_pairs.jsonl").write_text('{"text": "fine"}\n{"text": "unterminated one\n{"text": "unterminated two\n')
    result = ingest_folder(corpus, limits=BlobLimits(max_item_bytes=1000, budget_bytes=40))
    rows = {(q["source"], q["locator"]): q for q in result.quarantine}
    assert len(rows) == 4 and [r["text"] for r in result.records] == [
        "fine"
    ]  # every row kept, whatever happens to the bytes
    video = rows[("a_video.txt", "file")]
    assert video["raw_ref"].startswith(
        "not kept: 5000 bytes, over the 1000-byte item limit; in the source at a_video.txt file"
    )
    assert video["raw_sha256"] == hashlib.sha256(b"\x00" * 5000).hexdigest()  # the source copy can still be verified
    # 6 + 26 bytes fit the 40-byte budget, the third item does not.
    assert rows[("b_small.bin", "file")]["raw_ref"].startswith("quarantine_blobs/")
    assert rows[("c_pairs.jsonl", "line 2")]["raw_ref"].startswith("quarantine_blobs/")
    assert "quarantine budget of this ingest was spent" in rows[("c_pairs.jsonl", "line 3")]["raw_ref"]
    assert len(result.blobs) == 2 and sum(map(len, result.blobs.values())) <= 40
    artifact = tmp_path / "artifact"
    write_quarantine_blobs(artifact, result.blobs)
    assert resolve_quarantine_ref(artifact, rows[("b_small.bin", "file")]["raw_ref"]) == b"\x89PNG 1"
    with pytest.raises(ValueError, match="were not copied into the raw store"):
        resolve_quarantine_ref(artifact, video["raw_ref"])
    with pytest.raises(ValueError, match="must be >= 0"):
        BlobLimits(max_item_bytes=-1)


def _jsonl_corpus(folder):
    import gzip as gz

    folder.mkdir()
    lines = [b"\xef\xbb\xbf" + json.dumps({"text": "first line after a BOM"}).encode()]
    for i in range(60):
        lines.append(
            json.dumps(
                {"prompt": f"问题 {i}: 血压多少算高?", "response": f"Answer {i}\u2028with a line separator"},
                ensure_ascii=False,
            ).encode()
        )
        if i % 13 == 0:
            lines.append(b'{"text": "unterminated')
        if i % 17 == 0:
            lines.append(b'{"text": "caf\xe9 latin-1 byte"}')
        if i % 19 == 0:
            lines.append(b"")
            lines.append(json.dumps({"text": "x" * 400}).encode())  # over max_record_bytes
    body = b"\n".join(lines) + b"\n" + json.dumps({"text": "last line, no newline"}).encode()
    (folder / "big.jsonl").write_bytes(body)
    (folder / "big.jsonl.gz").write_bytes(gz.compress(body))
    (folder / "cut.jsonl.gz").write_bytes(gz.compress(body)[:-200])  # truncated download
    ascii_head = "\n".join(json.dumps({"text": f"plain ascii {i}"}) for i in range(30)).encode()
    (folder / "gbk.jsonl").write_bytes(
        ascii_head
        + "\n".join(json.dumps({"text": f"糖尿病饮食 {i}"}, ensure_ascii=False) for i in range(30))
        .encode("gb18030")
        .join([b"\n", b"\n"])
    )
    return folder


def test_large_jsonl_files_read_in_chunks_give_exactly_the_whole_file_result(tmp_path, monkeypatch):
    """Chunks of 97 bytes (cut at line ends, the encoding decided on the first non-ASCII
    chunk, line numbers carried over, a truncated gzip's tail quarantined) against the
    same files read whole."""
    import deepfeed.core.data.ingest as ingest

    corpus = _jsonl_corpus(tmp_path / "corpus")
    whole = ingest_folder(corpus, max_record_bytes=300)
    monkeypatch.setattr(ingest, "STREAM_FILE_BYTES", 0)
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 97)
    parts = list(ingest.iter_files(ingest.discover_files(corpus), corpus, max_record_bytes=300))
    assert len(parts) > 40  # really in chunks
    chunked = ingest_folder(corpus, max_record_bytes=300)

    assert chunked.records == whole.records
    key = lambda q: (q["source"], q["locator"], q["reason"], q["raw_sha256"])  # noqa: E731
    assert sorted(map(key, chunked.quarantine)) == sorted(map(key, whole.quarantine))
    assert chunked.read == whole.read and chunked.files == whole.files and chunked.blobs == whole.blobs
    reasons = {q["reason"].split(":")[0] for q in whole.quarantine}
    assert {
        "malformed JSON",
        "invalid UTF-8 in an otherwise UTF-8 file",
        "record larger than max_record_bytes=300",
        "truncated or corrupt gzip",
    } <= reasons
    assert {r["source"] for r in whole.records} == {"big.jsonl", "big.jsonl.gz", "cut.jsonl.gz", "gbk.jsonl"}
    assert any(r["text"] == "糖尿病饮食 29" for r in chunked.records)


# --- per-line decoding and encoding detection ----------------------------------------


def test_an_invalid_byte_costs_only_its_line_in_every_text_format(tmp_path):
    """ASCII files with one byte that is valid in no encoding detected for them (0x81 is
    undefined in CP1252): every good line is kept, the bad one quarantined with its bytes."""
    good = [json.dumps({"text": f"plain ascii record {i}"}) for i in range(4)]
    (tmp_path / "a.jsonl").write_bytes(
        ("\n".join(good[:2]) + "\n").encode() + b'{"text": "bad \x81 byte"}\n' + ("\n".join(good[2:]) + "\n").encode()
    )
    (tmp_path / "b.csv").write_bytes(b"text,category\nfirst row,a\nbad \x81 row,b\nthird row,c\n")
    (tmp_path / "c.txt").write_bytes(
        b"First paragraph line one.\nbad \x81 line\nFirst paragraph line three.\n\nSecond paragraph.\n"
    )
    (tmp_path / "d.json").write_bytes(b'[{"text": "item zero"}, {"text": "bad \x81 item"}, {"text": "item two"}]')
    result = ingest_folder(tmp_path)
    texts = {}
    for r in result.records:
        texts.setdefault(r["source"], []).append(r["text"])
    assert texts["a.jsonl"] == [f"plain ascii record {i}" for i in range(4)]
    assert texts["b.csv"] == ["first row", "third row"]
    assert texts["c.txt"] == ["First paragraph line one.", "First paragraph line three.", "Second paragraph."]
    assert texts["d.json"] == ["item zero", "item two"]
    rows = {(q["source"], q["locator"]): q for q in result.quarantine}
    assert set(rows) == {("a.jsonl", "line 3"), ("b.csv", "line 3"), ("c.txt", "line 2"), ("d.json", "item 1")}
    assert rows[("a.jsonl", "line 3")]["raw_bytes"] == len(b'{"text": "bad \x81 byte"}')
    assert "cp1252" in rows[("a.jsonl", "line 3")]["reason"]
    assert result.blobs[rows[("d.json", "item 1")]["raw_sha256"]] == '{"text": "bad \udc81 item"}'.encode(
        "utf-8", "surrogateescape"
    )
    assert result.read == len(result.records) + len(result.quarantine)


def test_latin1_and_cp1252_text_is_detected_not_read_as_gb18030(tmp_path):
    (tmp_path / "short.txt").write_bytes("Les cafés.\n".encode("latin-1"))
    (tmp_path / "notes.jsonl").write_bytes(
        json.dumps({"text": "Crème brûlée – €5, naïve façade"}, ensure_ascii=False).encode("cp1252") + b"\n"
    )
    long = "\n".join(f"Le café numéro {i} près de la gare était très agréable, déjà complet à midi." for i in range(40))
    (tmp_path / "long.txt").write_bytes(long.replace("\n", "\n\n").encode("cp1252"))
    (tmp_path / "gbk.txt").write_bytes("高血压患者的饮食应当低盐低脂。".encode("gb18030"))
    result = ingest_folder(tmp_path)
    by_source = {}
    for r in result.records:
        by_source.setdefault(r["source"], []).append(r["text"])
    assert by_source["short.txt"] == ["Les cafés."]
    assert by_source["notes.jsonl"] == ["Crème brûlée – €5, naïve façade"]
    assert by_source["long.txt"][7] == "Le café numéro 7 près de la gare était très agréable, déjà complet à midi."
    assert by_source["gbk.txt"] == ["高血压患者的饮食应当低盐低脂。"]
    assert not result.quarantine


def test_detect_encoding_by_byte_shape():
    from deepfeed.core.data.ingest import detect_encoding

    assert detect_encoding(b"plain") == "utf-8"
    assert detect_encoding("naïve".encode()) == "utf-8"
    assert detect_encoding("naïve café".encode("cp1252")) == "cp1252"
    assert detect_encoding("糖尿病的饮食".encode("gb18030")) == "gb18030"


# --- PII never reaches the records -------------------------------------------------------


def test_records_are_scrubbed_at_ingest_with_an_account_of_what_was_replaced(tmp_path):
    rows = [
        {
            "prompt": "Mail zq%40example.org or call 139 1773 0042",
            "response": "We will.",
            "tags": ["a", "from 172.30.114.9"],
            "contact": {"card": "6222 0212 3456 7894"},
        },
        {"text": "Nothing personal here."},
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = ingest_folder(tmp_path)
    first, second = result.records
    assert first["prompt"] == "Mail <EMAIL> or call <PHONE>" and first["tags"] == ["a", "from <IP>"]
    assert json.loads(first["meta"]) == {"contact": {"card": "<BANK_CARD>"}}
    assert second["text"] == "Nothing personal here."
    assert result.pii == {"EMAIL": 1, "PHONE": 1, "IP": 1, "BANK_CARD": 1}
    [(record_id, before, after, kinds)] = result.anonymized
    assert (
        record_id == first["record_id"]
        and "zq%40example.org" in before
        and "<EMAIL>" in after
        and kinds == dict(result.pii)
    )
