"""Append-only, hash-chained audit ledger of every change made to data (JSON Lines).

Each line is one entry: what happened to which record, in which stage and run, why, and
when, with sha256 hashes of the content before and after. The content itself never goes
in, and reasons are PII-scrubbed, so the ledger can be kept and shown where the data
cannot. Every entry carries the previous entry's hash and its own hash over canonical
JSON, so editing, deleting, inserting or reordering a line breaks the chain at that point.
Cutting entries off the end leaves a valid chain: hold on to `head()` somewhere else
(run metadata, MLflow) and pass it to `verify(anchor=...)` to catch that too.

Appends take an exclusive `flock` on the file and read only its last line for the chain
state, so several processes can append concurrently and the file can grow to millions
of entries without ever being read whole.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfeed.core.pii import scrub

GENESIS_HASH = "0" * 64
ACTIONS = frozenset(
    {
        "read",
        "dropped",
        "deduplicated",
        "filtered",
        "modified",
        "normalized",
        "quarantined",
        "retired",
        "pruned",
        "anonymized",
        "generalized",
        "suppressed",
        "augmented",
        "promoted",
        "rolled_back",
        "released",
        "access_granted",
        "access_denied",
        "requests_rejected",
    }
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REASON = 500  # a reason explains; it must not turn into a copy of the record


class LedgerCorrupted(RuntimeError):
    """The ledger's tail cannot be chained onto (torn write or garbage at the end)."""


def content_hash(text: str | bytes | None) -> str | None:
    """sha256 hex of the content (UTF-8), the only trace of it the ledger keeps."""
    if text is None:
        return None
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _json_default(o: Any) -> Any:
    # numpy scalars and the like in `extra`; what is written is what verify() re-reads.
    return o.item() if hasattr(o, "item") else str(o)


def _canonical(obj: Mapping[str, Any]) -> bytes:
    # ASCII escapes keep the file valid UTF-8 even for lone surrogates left by a broken
    # decode, and make the bytes independent of the platform's encoding.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default).encode()


def _entry_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(obj)).hexdigest()


@functools.lru_cache(maxsize=4096)
def _clean_text(s: str) -> str:
    # Reasons repeat a lot ("near-duplicate of ...", "too short"), hence the cache.
    return scrub(s[:_MAX_REASON]).text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON has no NaN
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class AuditEntry:
    record_id: str
    stage: str
    action: str
    reason: str
    run_id: str
    hash_before: str | None = None
    hash_after: str | None = None
    extra: Mapping[str, Any] | None = None  # small non-PII facts: rule name, scores, counts

    @classmethod
    def from_texts(
        cls,
        record_id: Any,
        stage: str,
        action: str,
        reason: str,
        run_id: str,
        before: str | None = None,
        after: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Build an entry from the content itself; only its hashes are kept."""
        return cls(str(record_id), stage, action, reason, run_id, content_hash(before), content_hash(after), extra)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    n_entries: int  # entries that verified before the first problem
    first_bad_line: int | None  # 1-based
    reason: str
    last_hash: str = GENESIS_HASH  # of the last entry that verified


class AuditLedger:
    def __init__(self, path: str | os.PathLike[str], *, extra_actions: Iterable[str] = ()):
        self.path = Path(path)
        self.actions = ACTIONS | frozenset(extra_actions)

    # --- writing ----------------------------------------------------------------

    def _body(self, e: AuditEntry) -> dict[str, Any]:
        for name in ("record_id", "stage", "run_id"):
            if getattr(e, name) is None or str(getattr(e, name)) == "":
                raise ValueError(f"audit entry needs a non-empty {name}: {e!r}")
        if e.action not in self.actions:
            raise ValueError(f"unknown audit action {e.action!r}; known: {sorted(self.actions)}")
        for name in ("hash_before", "hash_after"):
            h = getattr(e, name)
            if h is not None and not _HEX64.fullmatch(h):
                raise ValueError(f"{name} must be a sha256 hex digest (use content_hash), not content")
        return {
            "record_id": str(e.record_id),
            "stage": e.stage,
            "action": e.action,
            "reason": _clean(e.reason),
            "run_id": e.run_id,
            "hash_before": e.hash_before,
            "hash_after": e.hash_after,
            "extra": _clean(dict(e.extra)) if e.extra else None,
        }

    def append(self, entries: AuditEntry | Iterable[AuditEntry]) -> int:
        """Append a batch atomically with respect to other appenders; returns its size."""
        batch = [entries] if isinstance(entries, AuditEntry) else list(entries)
        bodies = [self._body(e) for e in batch]  # validate everything before touching the file
        if not bodies:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev = self._tail(f)
                ts = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
                lines = []
                for body in bodies:
                    unsigned = _canonical({**body, "seq": seq, "ts": ts, "prev_hash": prev})
                    prev = hashlib.sha256(unsigned).hexdigest()
                    # entry_hash goes last rather than in key order: verify() re-derives
                    # the canonical form from the parsed entry, so placement is free, and
                    # this saves serializing every entry twice.
                    lines.append(unsigned[:-1] + b',"entry_hash":"' + prev.encode() + b'"}\n')
                    seq += 1
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        if created:  # the new directory entry must survive a crash as well
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return len(bodies)

    @staticmethod
    def _tail(f: Any) -> tuple[int, str]:
        """(next seq, last entry_hash) from the file's last line, read backwards."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0, GENESIS_HASH
        f.seek(end - 1)
        if f.read(1) != b"\n":
            raise LedgerCorrupted(f"{f.name}: last line is incomplete (torn write?); run verify()")
        chunk, pos = b"", end - 1  # pos: start of what is in `chunk`, excluding the final newline
        while b"\n" not in chunk and pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step) + chunk
        line = chunk.rsplit(b"\n", 1)[-1]
        try:
            last = json.loads(line)
            return int(last["seq"]) + 1, str(last["entry_hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerCorrupted(f"{f.name}: last line is not a ledger entry ({exc}); run verify()") from exc

    def head(self) -> tuple[int, str]:
        """(number of entries, hash of the last one): an anchor to store elsewhere."""
        if not self.path.exists():
            return 0, GENESIS_HASH
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                return self._tail(f)
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- reading ----------------------------------------------------------------

    def iter_entries(
        self,
        *,
        record_id: str | None = None,
        stage: str | None = None,
        action: str | None = None,
        run_id: str | None = None,
        since: str | _dt.datetime | None = None,
        until: str | _dt.datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Entries in order, streamed, matching every filter given (`until` exclusive)."""
        if not self.path.exists():
            return
        since_s = since.isoformat() if isinstance(since, _dt.datetime) else since
        until_s = until.isoformat() if isinstance(until, _dt.datetime) else until
        wanted = {"record_id": record_id, "stage": stage, "action": action, "run_id": run_id}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a write in progress or torn: not an entry yet
                e = json.loads(raw)
                if any(e.get(k) != v for k, v in wanted.items()):
                    continue
                # ISO 8601 timestamps in UTC compare correctly as strings.
                if since_s is not None and e["ts"] < since_s:
                    continue
                if until_s is not None and e["ts"] >= until_s:
                    continue
                yield e

    def verify(self, anchor: str | None = None) -> VerifyResult:
        """Re-derive the whole chain; the first line that does not fit is reported.

        `anchor`: an entry_hash obtained earlier from head(); the chain must contain it,
        which catches entries removed from the end.
        """
        prev, n, anchor_seen = GENESIS_HASH, 0, anchor is None or anchor == GENESIS_HASH
        if not self.path.exists():
            if anchor_seen:
                return VerifyResult(True, 0, None, "empty ledger")
            return VerifyResult(False, 0, 1, "ledger is missing but an anchor was given")
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                problem, entry_hash = self._check_line(raw, prev, n)
                if problem is not None:
                    return VerifyResult(False, n, lineno, problem, prev)
                prev = entry_hash
                n += 1
                anchor_seen = anchor_seen or prev == anchor
        if not anchor_seen:
            return VerifyResult(False, n, n + 1, "anchor not found: entries after it were removed", prev)
        return VerifyResult(True, n, None, "ok", prev)

    @staticmethod
    def _check_line(raw: bytes, prev: str, seq: int) -> tuple[str | None, str]:
        """(problem or None, the line's entry_hash)."""
        if not raw.endswith(b"\n"):
            return "incomplete last line (torn write)", ""
        try:
            obj = json.loads(raw)
        except ValueError:
            return "not valid JSON", ""
        if not isinstance(obj, dict) or not isinstance(obj.get("entry_hash"), str):
            return "not a ledger entry", ""
        claimed = obj.pop("entry_hash")
        if _entry_hash(obj) != claimed:
            return "entry_hash does not match the entry: its content was changed", claimed
        if obj.get("prev_hash") != prev:
            return "prev_hash does not match the previous entry: a line was removed, inserted or moved", claimed
        if obj.get("seq") != seq:
            return f"seq is {obj.get('seq')!r}, expected {seq}", claimed
        return None, claimed
