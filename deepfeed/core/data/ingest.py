"""Reading raw corpora into normalized records, with a quarantine for what cannot be read.

A record is either plain text or a prompt/response pair, with its metadata kept. Every
record read is accounted for: it is either kept or quarantined with a reason.

Sources are any UPath (a local folder, ``s3://bucket/prefix`` with s3fs installed,
``memory://`` in tests). A corpus root holds *sources*: each sub-folder is one source
(one Dagster partition of raw_corpus), and the files lying directly in the root form the
source ``_root``.

Records are PII-scrubbed here, as they are read (every text field, tag, language and
metadata value): raw text never reaches the artifact store. Quarantine rows carry a
PII-scrubbed snippet (the table is what people read in the UI) and ``raw_ref``, a content
address (``quarantine_blobs/<sha256>``) of the exact bytes that failed. The bytes
themselves are returned in ``IngestResult.blobs`` for the caller to put into the guarded
raw store (deepfeed.core.data.raw_store, the only place raw bytes rest); for files that
decoded, the bytes of a failed record are its text re-encoded as UTF-8 (identical to the
file's bytes for UTF-8 files).

Decoding is per line for every line-based format (JSON Lines, CSV/TSV, text, Markdown):
a line that is not valid in the file's encoding is quarantined alone. The encoding is
UTF-8 (with or without BOM, tolerating a few damaged lines), else a legacy encoding
detected from the bytes (see detect_encoding): Western single-byte text (CP1252/Latin-1)
is no longer read as GB18030.
"""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import hashlib
import io
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from upath import UPath

from deepfeed.core.data.pii import scrub, scrub_many, scrub_value
from deepfeed.core.data.raw_store import QUARANTINE_BLOBS, BlobFolder

PROMPT_KEYS = ("prompt", "question", "instruction", "input", "query")
RESPONSE_KEYS = ("response", "answer", "output", "completion")
TEXT_KEYS = ("text", "content", "body")
TAG_KEYS = ("tags", "tag", "category", "domain")
LANG_KEYS = ("lang", "language")

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md", ".markdown")
RAW_SNIPPET_BYTES = 4096

RECORD_FIELDS = ("record_id", "source", "locator", "kind", "prompt", "response", "text", "lang", "tags", "meta")
QUARANTINE_FIELDS = ("source", "locator", "reason", "raw", "raw_bytes", "raw_sha256", "raw_ref")


def record_schema():
    import pyarrow as pa

    return pa.schema([(f, pa.list_(pa.string()) if f == "tags" else pa.string()) for f in RECORD_FIELDS])


def quarantine_schema():
    import pyarrow as pa

    types = {"raw": pa.binary(), "raw_bytes": pa.int64()}
    return pa.schema([(f, types.get(f, pa.string())) for f in QUARANTINE_FIELDS])


# Files lying directly in the corpus root (or a root that is a single file) form this source.
ROOT_SOURCE = "_root"


@dataclass
class IngestResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    # sha256 -> raw bytes of every quarantined item (content-addressed: equal bytes stored once).
    blobs: dict[str, bytes] = field(default_factory=dict)
    # Counted where rows are produced, independently of where they end up, so the
    # accounting check can catch a record that went nowhere.
    read: int = 0
    # PII replaced at ingest, by kind, and per scrubbed record (record_id, text before,
    # text after, kinds) for the audit ledger, which keeps only hashes of the texts.
    pii: Counter = field(default_factory=Counter)
    anonymized: list[tuple[str, str, str, dict[str, int]]] = field(default_factory=list)


class CorpusSourceError(ValueError):
    pass


@dataclass(frozen=True)
class BlobLimits:
    """How much raw quarantined content is copied into the raw store.

    Without limits a folder of misnamed videos or one runaway line copies gigabytes into
    every ingest. Past either limit the row still has the size, the sha256, the source
    file and the locator (so the bytes can be found and verified in the source), and its
    raw_ref says why there is no copy instead of naming a blob.
    """

    max_item_bytes: int = 16 * 2**20  # one quarantined item
    budget_bytes: int = 2**30  # all blobs of one ingest

    def __post_init__(self):
        if self.max_item_bytes < 0 or self.budget_bytes < 0:
            raise ValueError(f"quarantine blob limits must be >= 0, got {self.max_item_bytes} and {self.budget_bytes}")


class BlobKeeper:
    """Applies BlobLimits across the files of one ingest, one file's result at a time."""

    def __init__(self, limits: BlobLimits):
        self.limits = limits
        self.kept: set[str] = set()
        self.spent = 0

    def admit(self, part: IngestResult) -> None:
        """Drop the part's blobs past the limits (in quarantine order) and say so in their rows."""
        limits = self.limits
        for row in part.quarantine:
            digest, size = row["raw_sha256"], row["raw_bytes"]
            if digest in self.kept:
                continue
            if size > limits.max_item_bytes:
                row["raw_ref"] = (
                    f"not kept: {size} bytes, over the {limits.max_item_bytes}-byte item limit; in the source "
                    f"at {row['source']} {row['locator']}"
                )
            elif self.spent + size > limits.budget_bytes:
                row["raw_ref"] = (
                    f"not kept: the {limits.budget_bytes}-byte quarantine budget of this ingest was spent; in "
                    f"the source at {row['source']} {row['locator']}"
                )
            else:
                self.kept.add(digest)
                self.spent += size
        for digest in [d for d in part.blobs if d not in self.kept]:
            del part.blobs[digest]


def _record_id(source: str, locator: str, content: str) -> str:
    return hashlib.sha1(f"{source}\0{locator}\0{content}".encode()).hexdigest()[:16]


def _first(mapping: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in mapping and mapping[key] not in (None, ""):
            return mapping[key]
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return None
    text = str(value).strip()
    return text or None


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [t.strip() for t in str(value).replace(";", ",").split(",") if t.strip()]


def normalize_row(row: dict[str, Any], source: str, locator: str) -> tuple[dict[str, Any] | None, str | None]:
    """A raw mapping to a record, or the reason it cannot be one."""
    if not isinstance(row, dict):
        return None, f"expected an object, found {type(row).__name__}"
    prompt = _as_text(_first(row, PROMPT_KEYS))
    response = _as_text(_first(row, RESPONSE_KEYS))
    text = _as_text(_first(row, TEXT_KEYS))
    used = {k for k in (*PROMPT_KEYS, *RESPONSE_KEYS, *TEXT_KEYS, *TAG_KEYS, *LANG_KEYS)}
    meta = {k: v for k, v in row.items() if k not in used}
    if prompt and response:
        kind, body = "pair", f"{prompt}\n{response}"
    elif text:
        kind, body, prompt, response = "text", text, None, None
    elif prompt or response:
        missing = "response" if prompt else "prompt"
        return (
            None,
            f"prompt/response pair without a {missing} (expected one of {RESPONSE_KEYS if prompt else PROMPT_KEYS})",
        )
    else:
        return None, f"no text field (expected one of {TEXT_KEYS}, or a prompt and a response)"
    record = {
        "record_id": _record_id(source, locator, body),
        "source": source,
        "locator": locator,
        "kind": kind,
        "prompt": prompt,
        "response": response,
        "text": text if kind == "text" else None,
        "lang": _as_text(_first(row, LANG_KEYS)),
        "tags": _tags(_first(row, TAG_KEYS)),
        "meta": json.dumps(meta, ensure_ascii=False, default=str, sort_keys=True),
    }
    return record, None


_SCRUBBED_FIELDS = ("prompt", "response", "text", "lang", "tags", "meta")


def scrub_records(records: list[dict[str, Any]], result: "IngestResult") -> None:
    """Scrub every free-text value of normalized records in place (text fields, language,
    tags, metadata keys and values) and note what was replaced in `result`. The text
    fields of all records go through one scrub_many call per field."""
    originals = [tuple(r.get(k) for k in _SCRUBBED_FIELDS) for r in records]
    counts: list[Counter] = [Counter() for _ in records]
    for name in ("prompt", "response", "text", "lang"):
        index = [i for i, r in enumerate(records) if r.get(name)]
        for i, found in zip(index, scrub_many([records[i][name] for i in index])):
            if found.counts:
                records[i][name] = found.text
                counts[i].update(found.counts)
    for record, found_here in zip(records, counts):
        if record.get("tags"):
            tags, found = _scrub_tags(tuple(record["tags"]))
            if found:
                record["tags"] = list(tags)
                found_here.update(found)
        if record.get("meta") not in (None, "", "{}"):
            meta, found = scrub_value(json.loads(record["meta"]))
            if found:
                record["meta"] = json.dumps(meta, ensure_ascii=False, default=str, sort_keys=True)
                found_here.update(found)
    for record, original, found in zip(records, originals, counts):
        if found:
            result.pii.update(found)
            after = tuple(record.get(k) for k in _SCRUBBED_FIELDS)
            result.anonymized.append((record["record_id"], _as_json(original), _as_json(after), dict(found)))


@functools.lru_cache(maxsize=65536)
def _scrub_tags(tags: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, int]]:
    # Most records of a corpus carry one of a few tag lists: each is scrubbed once.
    return scrub_value(tags)


def _as_json(values: tuple) -> str:
    return json.dumps(values, ensure_ascii=False, default=str)


# Legacy encodings by the shape of their non-ASCII bytes: single-byte encodings put one
# high byte per accented letter between ASCII letters ("caf\xe9s"); the CJK double-byte
# ones come in runs of pairs. The shape picks the family, which GB18030 alone cannot do
# (it accepts nearly any byte pair, so Latin-1 text decoded as GB18030 turns to mojibake
# without an error); charset-normalizer picks the encoding within it once there is enough
# text for its statistics, below that the family's most common member is used.
SINGLE_BYTE = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1257", "latin_1")
DOUBLE_BYTE = ("gb18030", "big5", "shift_jis", "euc_kr")
LATIN_PAGES = frozenset(("cp1250", "cp1252", "cp1254", "cp1257", "iso8859-1"))
DETECT_SAMPLE_BYTES = 64 * 1024
DETECT_MIN_HIGH_BYTES = 256
_HIGH_RUN = re.compile(rb"[\x80-\xff]+")


def detect_encoding(data: bytes) -> str:
    """'utf-8' for ASCII and UTF-8 (even with a few damaged lines), else a legacy encoding."""
    if data.isascii() or mostly_utf8(data):
        return "utf-8"
    lines = [line for line in data[:DETECT_SAMPLE_BYTES].split(b"\n") if not line.isascii()]
    runs = [run for line in lines for run in _HIGH_RUN.findall(line)]
    isolated = sum(1 for run in runs if len(run) == 1)
    family = SINGLE_BYTE if isolated * 2 > len(runs) else DOUBLE_BYTE
    if sum(map(len, runs)) < DETECT_MIN_HIGH_BYTES:
        return family[0]
    from charset_normalizer import from_bytes

    sample = b"\n".join(lines)
    best = from_bytes(sample, cp_isolation=list(family)).best()
    if best is None:
        return family[0]
    encoding = codecs.lookup(best.encoding).name
    if family is SINGLE_BYTE and encoding in LATIN_PAGES:
        # charset-normalizer tells scripts apart well (Cyrillic cp1251, Greek cp1253) but
        # ranks the Latin code pages of one text almost at random (French came out as
        # cp1250 and cp1257); they agree on the common accented letters, and CP1252 is by
        # far the most used, so it is the one unless it cannot decode the sample.
        try:
            sample.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return encoding
    return encoding


def decode_bytes(data: bytes) -> tuple[str | None, str | None]:
    """The whole text in its detected encoding (detect_encoding), or why there is none."""
    if b"\x00" in data[:8192]:
        return None, "binary content (NUL bytes)"
    encoding = detect_encoding(data)
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding), None
    except UnicodeDecodeError as exc:
        return None, (
            f"undecodable bytes (not valid {encoding}, the encoding detected: {exc.reason} at byte {exc.start})"
        )


def bad_line_reason(encoding: str) -> str:
    if encoding == "utf-8":
        return "invalid UTF-8 in an otherwise UTF-8 file"
    return f"bytes not valid in {encoding}, the encoding detected for this file"


def mostly_utf8(data: bytes) -> bool:
    """UTF-8 text with a few damaged lines, rather than a file in another encoding.

    GB18030 accepts almost any byte sequence, so a UTF-8 file with one bad line would
    otherwise be decoded whole as GB18030 garbage. Text in GBK/GB18030 decoded as UTF-8
    is nearly all invalid (a valid multi-byte sequence by accident is rare), so more
    valid non-ASCII characters than invalid bytes means UTF-8 with damage.
    """
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ord(ch) > 127) - bad
    return good > 0 and bad <= good


def decode_lines(data: bytes, first_line: int = 1, encoding: str = "utf-8") -> tuple[str, list[tuple[int, bytes]]]:
    """Text line by line: the lines that do not decode are blanked (so line numbers stay
    right) and returned as (line number, raw bytes) for the quarantine.
    `first_line`: the number of data's first line in its file (a chunk of a large one)."""
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        try:
            lines.append(raw.decode("utf-8-sig" if number == 1 and encoding == "utf-8" else encoding))
        except UnicodeDecodeError:
            lines.append("")
            bad.append((number, raw))
    return "\n".join(lines), bad


def _gunzip(raw: bytes) -> tuple[bytes, str | None]:
    """What a (possibly truncated) gzip stream holds, and why it stops early if it does."""
    try:
        return gzip.decompress(raw), None
    except (OSError, EOFError, zlib.error) as exc:
        # Streaming decompression keeps everything before the damage, so the complete
        # records of a truncated download are not lost with its tail.
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            partial = decoder.decompress(raw)
        except zlib.error:
            partial = b""
        return partial, f"truncated or corrupt gzip: {type(exc).__name__}: {exc}"


def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable file: {type(exc).__name__}: {exc}"
    if path.name.endswith(".gz"):
        return _gunzip(raw)
    return raw, None


def _logical_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _quarantine(result: IngestResult, source: str, locator: str, reason: str, raw: bytes | str) -> None:
    """Count one unreadable item, with its raw bytes kept under their sha256."""
    # surrogateescape: the undecodable bytes of a JSON document's item come back as they were.
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    snippet = scrub(data[:RAW_SNIPPET_BYTES].decode("utf-8", "replace")).text
    digest = hashlib.sha256(data).hexdigest()
    result.blobs.setdefault(digest, data)
    result.quarantine.append(
        {
            "source": source,
            "locator": locator,
            "reason": reason,
            "raw": snippet.encode("utf-8", "replace"),
            "raw_bytes": len(data),
            "raw_sha256": digest,
            "raw_ref": f"{QUARANTINE_BLOBS}/{digest}",
        }
    )


def write_quarantine_blobs(folder: Path, blobs: dict[str, bytes], key: str | bytes | None = None) -> int:
    """Write each blob as <folder>/quarantine_blobs/<sha256> (0700 folders, 0600 files,
    Fernet-encrypted with `key`); returns the raw bytes written. `folder` is a source's
    folder of the raw store (RawStore.source), never an artifact."""
    return BlobFolder(folder, key).put(blobs)


def resolve_quarantine_ref(folder: Path, raw_ref: str, key: str | bytes | None = None) -> bytes:
    """The raw bytes a quarantine row points to, verified against the sha256 in its name."""
    if raw_ref.startswith("not kept:"):
        raise ValueError(f"the raw bytes of this row were not copied into the raw store ({raw_ref})")
    name = Path(raw_ref)
    if name.parent.as_posix() != QUARANTINE_BLOBS or len(name.name) != 64:
        raise ValueError(f"raw_ref {raw_ref!r} is not a quarantine blob reference")
    try:
        return BlobFolder(folder, key).get(name.name)
    except RuntimeError as exc:  # RawStoreError: damaged, encrypted without the key, opened up
        raise ValueError(str(exc)) from exc


def _rows_jsonl(text: str, max_record_bytes: int, first_line: int = 1) -> Iterator[tuple[str, Any, str | None]]:
    for number, line in enumerate(text.splitlines(), start=first_line):
        if not line.strip():
            continue
        if len(line) > max_record_bytes:  # before parsing: a 10 MB line is not worth it
            yield f"line {number}", line, f"record larger than max_record_bytes={max_record_bytes}"
            continue
        try:
            yield f"line {number}", json.loads(line), None
        except json.JSONDecodeError as exc:
            yield f"line {number}", line, f"malformed JSON: {exc.msg} at column {exc.colno}"


_UNDECODED = re.compile("[\udc80-\udcff]")


def _rows_json(text: str, encoding: str = "utf-8") -> Iterator[tuple[str, Any, str | None]]:
    """Items of a JSON document decoded with surrogateescape: an item holding bytes that
    are not valid in the encoding is quarantined alone, its bytes kept as they were."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield "file", text, f"malformed JSON: {exc.msg} at line {exc.lineno}"
        return
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        raw = json.dumps(item, ensure_ascii=False, default=str)
        if _UNDECODED.search(raw):
            yield f"item {index}", raw, bad_line_reason(encoding).replace("file", "JSON file")
        else:
            yield f"item {index}", item, None


def _rows_csv(text: str, delimiter: str) -> Iterator[tuple[str, Any, str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        return
    for row in reader:
        locator = f"line {reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield locator, delimiter.join(row), f"expected {len(header)} columns, found {len(row)}"
            continue
        yield locator, dict(zip(header, row)), None


def _rows_text(text: str) -> Iterator[tuple[str, Any, str | None]]:
    """Paragraphs (blank-line separated blocks) of plain text or Markdown; a line that did
    not decode is blank here, so it ends a paragraph without costing it."""
    line_no, block, start = 0, [], 1
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = line_no
            block.append(line)
        elif block:
            yield f"lines {start}-{line_no - 1}", {"text": "\n".join(block)}, None
            block = []
    if block:
        yield f"lines {start}-{line_no}", {"text": "\n".join(block)}, None


def _rows_parquet(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path.open("rb"))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        yield "file", _file_bytes(path), f"unreadable Parquet: {exc}"
        return
    offset = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for index, row in enumerate(batch.to_pylist()):
            yield f"row {offset + index}", row, None
        offset += batch.num_rows


def read_file(path: Path, source: str, max_record_bytes: int, scrub_pii: bool = True) -> IngestResult:
    result = IngestResult()
    suffix = _logical_suffix(path)
    if suffix == ".parquet" and not path.name.endswith(".gz"):
        rows: Iterable = _rows_parquet(path)
    else:
        data, error = _read_bytes(path)
        if data is None or (error and not data):
            # Nothing decompressed (or the file cannot be opened): the file's own bytes are the item.
            result.read += 1
            _quarantine(result, source, "file", error or "unreadable file", _file_bytes(path))
            return result
        if error:  # a truncated gzip: keep its complete lines, quarantine the rest
            cut = data.rfind(b"\n") + 1
            result.read += 1
            _quarantine(result, source, f"after byte {cut} of the decompressed stream", error, data[cut:])
            data = data[:cut]
        if not data.strip():
            if not error:
                result.read += 1
                _quarantine(result, source, "file", "empty file (no content)", data)
            return result
        if b"\x00" in data[:8192]:
            result.read += 1
            _quarantine(result, source, "file", "binary content (NUL bytes)", data)
            return result
        encoding = detect_encoding(data)
        bad_lines: list[tuple[int, bytes]] = []
        if suffix == ".json":  # one document: decoded whole, bad bytes cost their item (_rows_json)
            text = data.decode("utf-8-sig" if encoding == "utf-8" else encoding, "surrogateescape")
        else:
            text, bad_lines = decode_lines(data, encoding=encoding)
        for number, raw in bad_lines:
            result.read += 1
            _quarantine(result, source, f"line {number}", bad_line_reason(encoding), raw)
        if suffix == ".jsonl":
            rows = _rows_jsonl(text, max_record_bytes)
        elif suffix == ".json":
            rows = _rows_json(text, encoding)
        elif suffix in (".csv", ".tsv"):
            rows = _rows_csv(text, "\t" if suffix == ".tsv" else ",")
        else:
            rows = _rows_text(text)
    _consume(rows, result, source, max_record_bytes, scrub_pii)
    return result


def _consume(rows: Iterable, result: IngestResult, source: str, max_record_bytes: int, scrub_pii: bool = True) -> None:
    start = len(result.records)
    for locator, row, error in rows:
        result.read += 1
        raw = row if isinstance(row, (str, bytes)) else json.dumps(row, ensure_ascii=False, default=str)
        if error is None and len(raw.encode() if isinstance(raw, str) else raw) > max_record_bytes:
            error = f"record larger than max_record_bytes={max_record_bytes}"
        if error is None:
            record, error = normalize_row(row, source, locator)
            if record is not None:
                result.records.append(record)
                continue
        _quarantine(result, source, locator, error or "unknown", raw)
    if scrub_pii:
        scrub_records(result.records[start:], result)


# JSON Lines files past this size are read in chunks of CHUNK_BYTES cut at line ends, so
# memory holds a chunk rather than the file (one record per line makes every cut safe).
# The encoding is decided on the first chunk. Other formats are read whole: a JSON array
# is one document, and CSV quotes and Markdown paragraphs may span any cut.
STREAM_FILE_BYTES = 64 * 2**20
CHUNK_BYTES = 16 * 2**20


def iter_file_parts(path: Path, source: str, max_record_bytes: int, scrub_pii: bool = True) -> Iterator[IngestResult]:
    """The file's result in parts: one for most files, one per chunk for large JSONL."""
    try:
        large = _logical_suffix(path) == ".jsonl" and path.stat().st_size > STREAM_FILE_BYTES
    except (OSError, NotImplementedError, AttributeError):
        large = False
    if not large:
        yield read_file(path, source, max_record_bytes, scrub_pii)
        return
    yield from _jsonl_in_chunks(path, source, max_record_bytes, scrub_pii)


def _byte_chunks(path: Path) -> Iterator[tuple[bytes, str | None]]:
    """(bytes, None) chunk by chunk, decompressing .gz as it goes; a gzip stream that
    stops early ends with (b"", why), like `_gunzip`."""
    with path.open("rb") as handle:
        if not path.name.endswith(".gz"):
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk, None
            return
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while raw := handle.read(CHUNK_BYTES):
            try:
                out = decoder.decompress(raw)
                while decoder.eof and decoder.unused_data:  # a multi-member gzip file
                    rest, decoder = decoder.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out += decoder.decompress(rest)
            except zlib.error as exc:
                yield b"", f"truncated or corrupt gzip: {type(exc).__name__}: {exc}"
                return
            yield out, None
        if not decoder.eof:
            yield (
                b"",
                "truncated or corrupt gzip: EOFError: Compressed file ended before the end-of-stream marker "
                "was reached",
            )


def _jsonl_in_chunks(path: Path, source: str, max_record_bytes: int, scrub_pii: bool = True) -> Iterator[IngestResult]:
    carry, consumed, byte_lines, text_lines, encoding = b"", 0, 0, 0, None
    for chunk, error in _byte_chunks(path):
        data = carry + chunk
        if error is not None:  # the complete lines before the damage are kept, the tail quarantined
            part = IngestResult(read=1)
            _quarantine(part, source, f"after byte {consumed} of the decompressed stream", error, data)
            yield part
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # one line longer than a chunk: read on
            carry = data
            continue
        data, carry = data[:cut], data[cut:]
        if consumed == 0 and b"\x00" in data[:8192]:  # binary: the whole-file path quarantines the file as one item
            yield read_file(path, source, max_record_bytes, scrub_pii)
            return
        encoding = _encoding_so_far(data, encoding)
        part, lines = _decoded_part(
            data, source, max_record_bytes, encoding or "utf-8", byte_lines, text_lines, scrub_pii
        )
        yield part
        consumed += len(data)
        byte_lines += data.count(b"\n")
        text_lines += lines
    if carry:
        if consumed == 0 and b"\x00" in carry[:8192]:
            yield read_file(path, source, max_record_bytes, scrub_pii)
            return
        encoding = _encoding_so_far(carry, encoding)
        yield _decoded_part(carry, source, max_record_bytes, encoding or "utf-8", byte_lines, text_lines, scrub_pii)[0]


def _encoding_so_far(data: bytes, encoding: str | None) -> str | None:
    """The encoding detected on the first non-ASCII chunk; None while every chunk was
    ASCII, which decodes the same in every encoding detect_encoding can return."""
    if encoding is not None or data.isascii():
        return encoding
    return detect_encoding(data)


def _decoded_part(
    data: bytes,
    source: str,
    max_record_bytes: int,
    encoding: str,
    byte_lines: int,
    text_lines: int,
    scrub_pii: bool = True,
) -> tuple[IngestResult, int]:
    """One chunk's result, and its line count the way `_rows_jsonl` numbers lines
    (str.splitlines), so the next chunk's locators continue the whole file's."""
    part = IngestResult()
    text, bad = decode_lines(data, first_line=byte_lines + 1, encoding=encoding)
    for number, raw in bad:
        part.read += 1
        _quarantine(part, source, f"line {number}", bad_line_reason(encoding), raw)
    _consume(_rows_jsonl(text, max_record_bytes, first_line=text_lines + 1), part, source, max_record_bytes, scrub_pii)
    return part, len(text.splitlines())


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def as_source_path(location: str | Path) -> Path:
    """A local Path, or a UPath for a URL (s3://, gs://, memory://, ...)."""
    if isinstance(location, str) and "://" in location and not location.startswith("file://"):
        return UPath(location)
    return Path(str(location).removeprefix("file://")).expanduser()


def discover_files(root: Path) -> list[Path]:
    try:
        exists = root.exists()
    except Exception as exc:  # any backend error (credentials, missing driver) means the same
        raise CorpusSourceError(f"corpus location {str(root)!r} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not exists:
        raise CorpusSourceError(f"corpus folder {str(root)!r} does not exist")
    if root.is_file():
        return [root]
    return sorted((p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")), key=lambda p: str(p))


def _relative(path: Path, root: Path) -> str:
    root_text = str(getattr(root, "path", root)).rstrip("/")
    path_text = str(getattr(path, "path", path))
    return path_text[len(root_text) :].lstrip("/") if path_text.startswith(root_text + "/") else path.name


def discover_sources(root: Path | str) -> dict[str, list[Path]]:
    """Source name -> its files: one source per sub-folder of the root, plus ``_root`` for
    the files lying directly in it (or for a root that is a single file). Hidden folders
    and files are not sources."""
    root = as_source_path(root) if isinstance(root, str) else root
    files = discover_files(root)
    if root.is_file():
        return {ROOT_SOURCE: files}
    sources: dict[str, list[Path]] = {}
    for path in files:
        relative = _relative(path, root)
        head, _, rest = relative.partition("/")
        if head.startswith("."):
            continue
        sources.setdefault(head if rest else ROOT_SOURCE, []).append(path)
    if ROOT_SOURCE in sources and any(_relative(p, root).startswith(ROOT_SOURCE + "/") for p in sources[ROOT_SOURCE]):
        raise CorpusSourceError(
            f"corpus folder {str(root)!r} has a sub-folder named {ROOT_SOURCE!r}, the name reserved for "
            "the files lying directly in it; rename the sub-folder"
        )
    return dict(sorted(sources.items()))


def source_fingerprint(files: list[Path]) -> str:
    """What changes when a source gets new or edited files: names, sizes, modification times."""
    digest = hashlib.sha256()
    for path in sorted(files, key=str):
        try:
            info = path.stat()
            size, mtime = info.st_size, getattr(info, "st_mtime", None)
        except (OSError, NotImplementedError, AttributeError):  # remote backends differ in what stat offers
            size, mtime = None, None
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def iter_files(
    files: list[Path],
    root: Path,
    max_record_bytes: int = 1_000_000,
    limits: BlobLimits = BlobLimits(),
    scrub_pii: bool = True,
) -> Iterator[tuple[str, IngestResult]]:
    """(file name relative to the root, a result) per file, or per chunk of a large JSONL
    file, blob limits applied across all: a caller that writes each part as it comes holds
    one part at a time. `scrub_pii=False` keeps the records' raw text: only for code that
    writes them into the raw store, never into an artifact."""
    keeper = BlobKeeper(limits)
    for path in files:
        source = _relative(path, root) if root.is_dir() else path.name
        if _logical_suffix(path) not in SUPPORTED_SUFFIXES:
            part = IngestResult(read=1)
            _quarantine(part, source, "file", f"unsupported file type {path.suffix!r}", _file_bytes(path))
            parts: Iterable[IngestResult] = [part]
        else:
            parts = iter_file_parts(path, source, max_record_bytes, scrub_pii)
        for part in parts:
            keeper.admit(part)
            part.files[source] = {"kept": len(part.records), "quarantined": len(part.quarantine)}
            yield source, part


def _ingest_files(files: list[Path], root: Path, max_record_bytes: int, limits: BlobLimits) -> IngestResult:
    total = IngestResult()
    for _, part in iter_files(files, root, max_record_bytes, limits):
        total.records.extend(part.records)
        total.quarantine.extend(part.quarantine)
        total.blobs.update(part.blobs)
        total.read += part.read
        total.pii.update(part.pii)
        total.anonymized.extend(part.anonymized)
        add_file_counts(total.files, part.files)
    return total


def add_file_counts(into: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    """Per-file kept/quarantined counts summed over parts (a large file comes in several)."""
    for name, counts in part.items():
        seen = into.setdefault(name, {"kept": 0, "quarantined": 0})
        seen["kept"] += counts["kept"]
        seen["quarantined"] += counts["quarantined"]


def ingest_folder(
    root: Path | str, max_record_bytes: int = 1_000_000, limits: BlobLimits = BlobLimits()
) -> IngestResult:
    """Every file under `root`; unsupported files are quarantined, not skipped silently."""
    root = as_source_path(root) if isinstance(root, str) else root
    return _ingest_files(discover_files(root), root, max_record_bytes, limits)


def ingest_source(
    root: Path | str, source: str, max_record_bytes: int = 1_000_000, limits: BlobLimits = BlobLimits()
) -> tuple[IngestResult, str]:
    """One source of the corpus root (see discover_sources) and its fingerprint. File names
    in the records stay relative to the root, so record ids do not depend on partitioning."""
    root, files = source_files(root, source)
    return _ingest_files(files, root, max_record_bytes, limits), source_fingerprint(files)


def source_files(root: Path | str, source: str) -> tuple[Path, list[Path]]:
    """(root as a path, the files of one source); names the sources there when it is not one."""
    root = as_source_path(root) if isinstance(root, str) else root
    sources = discover_sources(root)
    if source not in sources:
        raise CorpusSourceError(
            f"source {source!r} is not under {str(root)!r} (sources there: {', '.join(sources) or 'none'})"
        )
    return root, sources[source]


def sources_to_ingest(root: Path | str, materialized: dict[str, str | None]) -> dict[str, str]:
    """Source -> fingerprint for every source under `root` that is new or whose files
    changed since the fingerprint it was last ingested with (`materialized`)."""
    current = {name: source_fingerprint(files) for name, files in discover_sources(root).items()}
    return {name: fp for name, fp in current.items() if materialized.get(name) != fp}
