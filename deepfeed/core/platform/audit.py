"""Append-only, hash-chained and keyed audit ledger of every change made to data (JSON Lines).

Each line is one entry: what happened to which record, in which stage and run, why, and
when, with sha256 hashes of the content before and after. The content itself never goes
in, and reasons are PII-scrubbed, so the ledger can be kept and shown where the data
cannot. Every entry carries the previous entry's hash and its own hash over canonical
JSON, so editing, deleting, inserting or reordering a line breaks the chain at that point,
and a ``mac``: HMAC-SHA256 of the same bytes under the audit key
(``deepfeed.core.platform.secrets.AUDIT_KEY``). A plain hash chain can be recomputed by anyone who
edits the file; the MACs cannot be without the key.

Cutting entries off the end leaves a valid chain, so every append also rewrites the head
anchor ``<ledger>.head`` (entry count, last hash, last MAC, all MAC'd), and verify compares
the file with it. Whoever can also put back an older head file can still hide a cut tail:
keep `head()` somewhere else too (run metadata, MLflow) and pass it to
`verify(anchor=...)`. docs/security.md describes the key, the anchor and re-keying.

Artifacts and their audit entries are published together through a spool
(:meth:`AuditLedger.spool`): a ``publishing`` entry is written before the artifact version
becomes visible and a ``published`` one after its entries, so a crash in between is seen by
`verify` and repaired by :meth:`AuditLedger.recover` on the next start.

Appends take an exclusive `flock` on the file and read only its last line for the chain
state, so several processes can append concurrently and the file can grow to millions
of entries without ever being read whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfeed.core.data.pii import scrub
from deepfeed.core.platform.secrets import AUDIT_KEY, ensure_secret, load_secret

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Entries appended per write by stages that audit every record: bounds memory on large corpora.
AUDIT_CHUNK = 10_000
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
        "publishing",
        "published",
        "publication_abandoned",
    }
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REASON = 500  # a reason explains; it must not turn into a copy of the record


class LedgerCorrupted(RuntimeError):
    """The ledger's tail cannot be chained onto (torn write or garbage at the end)."""


class LedgerUnkeyed(RuntimeError):
    """The ledger was written before entries carried MACs; it must be re-keyed first."""


REKEY_HINT = (
    "run `deepfeed audit rekey` once (with writers stopped) to add MACs to the existing entries "
    "under the configured audit key"
)


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
    # ok | tampered | truncated | unkeyed | no_key | unpublished_audit
    status: str = "ok"
    notes: tuple[str, ...] = ()


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _head_bytes(entries: int, entry_hash: str, mac: str) -> bytes:
    return f"deepfeed-audit-head\0{entries}\0{entry_hash}\0{mac}".encode()


def key_id(key: bytes) -> str:
    """A fingerprint of the key (not the key): tells "wrong key" from "forged"."""
    return _mac(key, b"deepfeed-audit-key-id")[:16]


class AuditLedger:
    def __init__(
        self, path: str | os.PathLike[str], *, key: str | bytes | None = None, extra_actions: Iterable[str] = ()
    ):
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.spool_dir = self.path.parent / "spool"
        self.actions = ACTIONS | frozenset(extra_actions)
        self._key = key.encode() if isinstance(key, str) else key

    # --- the key ----------------------------------------------------------------

    def _writer_key(self) -> bytes:
        if self._key is None:
            value = load_secret(AUDIT_KEY, required=False)
            if value is None:
                # No key configured: make one under the home (0600, as the demo does) rather
                # than write entries anyone could re-forge. Production mounts its own.
                path = ensure_secret(AUDIT_KEY)
                log.warning(
                    "no audit key configured: generated %s (set $DEEPFEED_AUDIT_KEY_FILE to use "
                    "one kept outside the home)",
                    path,
                )
                value = load_secret(AUDIT_KEY)
            self._key = value.encode()
        return self._key

    def _reader_key(self) -> bytes | None:
        if self._key is None:
            value = load_secret(AUDIT_KEY, required=False)
            self._key = value.encode() if value else None
        return self._key

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
        key = self._writer_key()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev, last = self._tail_entry(f)
                if last is not None and "mac" not in last:
                    raise LedgerUnkeyed(
                        f"{self.path} holds entries without MACs (written before the ledger was "
                        f"keyed); appending keyed entries would vouch for them: {REKEY_HINT}"
                    )
                ts = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
                lines = []
                mac = ""
                for body in bodies:
                    unsigned = _canonical({**body, "seq": seq, "ts": ts, "prev_hash": prev})
                    prev = hashlib.sha256(unsigned).hexdigest()
                    mac = _mac(key, unsigned)
                    # entry_hash and mac go last rather than in key order: verify() re-derives
                    # the canonical form from the parsed entry, so placement is free, and
                    # this saves serializing every entry twice.
                    lines.append(
                        unsigned[:-1] + b',"entry_hash":"' + prev.encode() + b'","mac":"' + mac.encode() + b'"}\n'
                    )
                    seq += 1
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
                # Still under the lock: the anchor always names the newest entry it could.
                self._write_head(key, seq, prev, mac)
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        if created:  # the new directory entry must survive a crash as well
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return len(bodies)

    def _write_head(self, key: bytes, entries: int, entry_hash: str, mac: str) -> None:
        head = {
            "entries": entries,
            "entry_hash": entry_hash,
            "mac": mac,
            "key_id": key_id(key),
            "head_mac": _mac(key, _head_bytes(entries, entry_hash, mac)),
        }
        tmp = self.head_path.with_name(f".{self.head_path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        with open(tmp, "wb") as f:
            f.write(json.dumps(head, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)

    def read_head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    @classmethod
    def _tail(cls, f: Any) -> tuple[int, str]:
        """(next seq, last entry_hash) from the file's last line, read backwards."""
        seq, prev, _ = cls._tail_entry(f)
        return seq, prev

    @staticmethod
    def _tail_entry(f: Any) -> tuple[int, str, dict[str, Any] | None]:
        """(next seq, last entry_hash, last entry) from the file's last line, read backwards."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0, GENESIS_HASH, None
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
            return int(last["seq"]) + 1, str(last["entry_hash"]), last
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
        """Re-derive the whole chain and its MACs; the first line that does not fit is reported.

        Then the end of the file is checked against the head anchor (a cut tail fails), and
        every ``publishing`` entry against its artifact: a version that became visible while
        its audit entries never reached the ledger fails until :meth:`recover` appends them.
        `anchor`: an entry_hash obtained earlier from head(); the chain must contain it.
        A ledger written before entries carried MACs does not pass: it says so and how to
        re-key it.
        """
        prev, n, anchor_seen = GENESIS_HASH, 0, anchor is None or anchor == GENESIS_HASH
        head = self.read_head()
        if not self.path.exists():
            if head:
                return VerifyResult(
                    False,
                    0,
                    1,
                    f"ledger is missing but its head anchor records {head.get('entries')} entries",
                    status="truncated",
                )
            if anchor_seen:
                return VerifyResult(True, 0, None, "empty ledger")
            return VerifyResult(False, 0, 1, "ledger is missing but an anchor was given", status="truncated")
        key = self._reader_key()
        keyed: bool | None = None
        hash_at_head: str | None = None
        mac_at_head: str | None = None
        pending: dict[str, dict[str, Any]] = {}
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                problem, obj = self._check_line(raw, prev, n)
                if problem is not None:
                    return VerifyResult(False, n, lineno, problem, prev, status="tampered")
                if keyed is None:
                    keyed = "mac" in obj
                    if keyed and key is None:
                        return VerifyResult(
                            False,
                            0,
                            None,
                            "the ledger is keyed but no audit key is configured "
                            f"(${AUDIT_KEY.env} or ${AUDIT_KEY.file_env}): its MACs cannot be "
                            "checked",
                            status="no_key",
                        )
                if keyed:
                    if "mac" not in obj:
                        return VerifyResult(
                            False, n, lineno, "entry has no MAC in a keyed ledger", prev, status="tampered"
                        )
                    if not hmac.compare_digest(obj["mac"], _mac(key, obj["_unsigned"])):
                        return VerifyResult(
                            False,
                            n,
                            lineno,
                            "MAC does not match: the entry was changed or "
                            "re-hashed without the audit key (or the key is not the one it was "
                            "written with)",
                            prev,
                            status="tampered",
                        )
                elif "mac" in obj:
                    return VerifyResult(False, n, lineno, "keyed entry after unkeyed ones", prev, status="tampered")
                prev = obj["entry_hash"]
                n += 1
                anchor_seen = anchor_seen or prev == anchor
                if head and n == head.get("entries"):
                    hash_at_head, mac_at_head = prev, obj.get("mac")
                self._track_publication(obj, pending)
        if not anchor_seen:
            return VerifyResult(
                False, n, n + 1, "anchor not found: entries after it were removed", prev, status="truncated"
            )
        if n == 0 and head and head.get("entries"):
            return VerifyResult(
                False,
                0,
                1,
                f"the ledger is empty but its head anchor records {head.get('entries')} entries",
                status="truncated",
            )
        if n and not keyed:
            return VerifyResult(
                False,
                n,
                None,
                f"unkeyed ledger: its {n} entries chain by plain sha256, which "
                f"anyone editing the file can recompute, so it proves nothing; {REKEY_HINT}",
                prev,
                status="unkeyed",
            )
        notes: list[str] = []
        if n:
            problem = self._check_head(head, key, n, hash_at_head, mac_at_head, notes)
            if problem:
                return VerifyResult(False, n, None, problem, prev, status="truncated")
        for spool_id, marker in pending.items():
            uri = (marker.get("extra") or {}).get("uri", "")
            if _published(uri):
                return VerifyResult(
                    False,
                    n,
                    None,
                    f"artifact {uri} was published but its "
                    f"{(marker.get('extra') or {}).get('entries')} audit entries never reached the "
                    f"ledger (publication {spool_id}); run `deepfeed audit recover`",
                    prev,
                    status="unpublished_audit",
                )
            notes.append(
                f"publication {spool_id} of {uri} is in progress or was abandoned before publishing "
                "(`deepfeed audit recover` closes it)"
            )
        return VerifyResult(True, n, None, "ok", prev, notes=tuple(notes))

    @staticmethod
    def _check_head(
        head: dict[str, Any] | None,
        key: bytes,
        n: int,
        hash_at_head: str | None,
        mac_at_head: str | None,
        notes: list[str],
    ) -> str | None:
        if head is None:
            return "head anchor is missing: entries cut off the end could not be noticed"
        try:
            entries, entry_hash, mac = int(head["entries"]), str(head["entry_hash"]), str(head["mac"])
            head_mac = str(head["head_mac"])
        except (KeyError, TypeError, ValueError):
            return "head anchor is unreadable"
        if not hmac.compare_digest(head_mac, _mac(key, _head_bytes(entries, entry_hash, mac))):
            if head.get("key_id") not in (None, key_id(key)):
                return "head anchor was written under another audit key"
            return "head anchor's MAC does not match: it was forged"
        if entries > n:
            return (
                f"the ledger ends after {n} entries but its head anchor records {entries}: the last "
                f"{entries - n} were cut off"
            )
        if hash_at_head != entry_hash or mac_at_head != mac:
            return f"entry {entries} is not the one the head anchor records: the tail was replaced"
        if entries < n:
            # Entries past the anchor carry valid MACs, so only a key holder wrote them: a writer
            # stopped between its append and the anchor update. The next append re-anchors.
            notes.append(f"head anchor lags the ledger by {n - entries} entries (a writer stopped before updating it)")
        return None

    @staticmethod
    def _track_publication(obj: Mapping[str, Any], pending: dict[str, dict[str, Any]]) -> None:
        if obj.get("action") == "publishing":
            pending[str(obj.get("record_id"))] = dict(obj)
        elif obj.get("action") in ("published", "publication_abandoned"):
            pending.pop(str(obj.get("record_id")), None)

    @staticmethod
    def _check_line(raw: bytes, prev: str, seq: int) -> tuple[str | None, dict[str, Any]]:
        """(problem or None, the parsed entry plus its canonical unsigned bytes as ``_unsigned``)."""
        if not raw.endswith(b"\n"):
            return "incomplete last line (torn write)", {}
        try:
            obj = json.loads(raw)
        except ValueError:
            return "not valid JSON", {}
        if not isinstance(obj, dict) or not isinstance(obj.get("entry_hash"), str):
            return "not a ledger entry", {}
        claimed = obj.pop("entry_hash")
        mac = obj.pop("mac", None)
        unsigned = _canonical(obj)
        parsed = {**obj, "entry_hash": claimed, "_unsigned": unsigned}
        if mac is not None:
            parsed["mac"] = mac
        if hashlib.sha256(unsigned).hexdigest() != claimed:
            return "entry_hash does not match the entry: its content was changed", parsed
        if obj.get("prev_hash") != prev:
            return "prev_hash does not match the previous entry: a line was removed, inserted or moved", parsed
        if obj.get("seq") != seq:
            return f"seq is {obj.get('seq')!r}, expected {seq}", parsed
        return None, parsed

    # --- migration ----------------------------------------------------------------

    def rekey(self, anchor: str | None = None) -> int:
        """Add MACs under the configured key to an unkeyed ledger; returns the entries re-keyed.

        The hash chain is checked first (and `anchor`, an entry_hash recorded elsewhere
        before, must be in it): re-keying vouches for the entries as they are now, so it
        refuses a chain that is already broken. entry_hash values stay the same, so anchors
        recorded earlier (MLflow, run metadata) still verify. Run it with writers stopped."""
        key = self._writer_key()
        with open(self.path, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                prev, n, anchor_seen, out = GENESIS_HASH, 0, anchor is None, []
                last_mac = ""
                for lineno, raw in enumerate(f, 1):
                    problem, obj = self._check_line(raw, prev, n)
                    if problem is not None:
                        raise LedgerCorrupted(
                            f"{self.path}: line {lineno}: {problem}; refusing to re-key a broken chain"
                        )
                    if "mac" in obj:
                        raise ValueError(f"{self.path} is already keyed (line {lineno} has a MAC)")
                    last_mac = _mac(key, obj["_unsigned"])
                    out.append(raw[:-2] + b',"mac":"' + last_mac.encode() + b'"}\n')
                    prev = obj["entry_hash"]
                    anchor_seen = anchor_seen or prev == anchor
                    n += 1
                if not anchor_seen:
                    raise LedgerCorrupted(
                        f"{self.path}: anchor {anchor} is not in the chain: entries after it were "
                        "removed; refusing to re-key"
                    )
                tmp = self.path.with_name(f".{self.path.name}.rekey")
                with open(tmp, "wb") as t:
                    t.write(b"".join(out))
                    t.flush()
                    os.fsync(t.fileno())
                os.replace(tmp, self.path)
                self._write_head(key, n, prev, last_mac)
                _fsync_dir(self.path.parent)
                return n
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- publishing an artifact together with its entries ---------------------------

    def spool(self, stage: str, run_id: str) -> PublicationSpool:
        """A durable spool for the entries of one artifact version (see PublicationSpool)."""
        return PublicationSpool(self, stage, run_id)

    @contextlib.contextmanager
    def audited_version(
        self, store: Any, name: str, run_id: str, counts: dict[str, Any] | None = None, chunk: int = 10_000
    ) -> Iterator[tuple[Any, PublicationSpool]]:
        """``store.new_version(name)`` whose audit entries, written to the yielded spool, reach
        this ledger with the publication: ``publishing`` before the version becomes visible,
        the entries and ``published`` after; a failure discards them with the version."""
        spool = self.spool(name, run_id)
        try:
            with store.new_version(name, counts or {}, run_id=run_id) as version:
                yield version, spool
                spool.mark_publishing(version.uri)
        except BaseException:
            spool.discard()
            raise
        spool.publish(chunk)

    def recover(self, chunk: int = 10_000) -> list[str]:
        """Close every publication left open by a crash; returns what was done, one line each.

        A version that became visible gets its spooled entries appended (those a crash
        already appended are skipped) and a ``published`` entry; one that never did gets
        ``publication_abandoned``. Spools still held by a live process are left alone."""
        done: list[str] = []
        if not self.spool_dir.exists():
            return done
        for lock_path in sorted(self.spool_dir.glob("*.lock")):
            spool_id = lock_path.stem
            with open(lock_path, "a+b") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                done.append(self._recover_one(spool_id, chunk))
                _remove_spool_files(self.spool_dir, spool_id)
        return [d for d in done if d]

    def _recover_one(self, spool_id: str, chunk: int) -> str:
        marker_path = self.spool_dir / f"{spool_id}.json"
        if not marker_path.exists():
            return ""  # the run died before publishing: nothing visible, nothing to record
        marker = json.loads(marker_path.read_text())
        uri, run_id, stage = marker["uri"], marker["run_id"], marker["stage"]
        if not _published(uri):
            self.append(
                AuditEntry(
                    spool_id,
                    stage,
                    "publication_abandoned",
                    "the run stopped before publishing",
                    run_id,
                    extra={"uri": uri},
                )
            )
            return f"{spool_id}: {uri} was never published; publication marked abandoned"
        # Entries of this run written after its marker were a replay cut short: skip as many.
        already, after_marker = 0, False
        for e in self.iter_entries():
            if e.get("action") == "publishing" and e.get("record_id") == spool_id:
                after_marker = True
            elif after_marker and e.get("run_id") == run_id and e.get("action") not in ("published",):
                already += 1
        appended = 0
        for i, batch in enumerate(_read_spool(self.spool_dir / f"{spool_id}.jsonl", chunk)):
            skip = max(0, min(len(batch), already - i * chunk))
            if batch[skip:]:
                self.append(batch[skip:])
                appended += len(batch) - skip
        self.append(
            AuditEntry(
                spool_id,
                stage,
                "published",
                "audit entries appended on recovery",
                run_id,
                extra={"uri": uri, "entries": marker["entries"], "recovered": True},
            )
        )
        return f"{spool_id}: {uri} was published; appended its {appended} missing audit entries"


class AuditSpool:
    """Audit entries written to a JSONL file (0600) as they come, appended to the ledger
    later in chunks: the ledger only sees a run that succeeded, and memory never holds them
    all. A torn last line (a crash mid-write) is never read back."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.count = 0
        self._file: Any = None

    def write(self, entries: Iterable[AuditEntry]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._file = os.fdopen(fd, "w", encoding="utf-8")
        lines = [json.dumps(dataclasses.asdict(e), ensure_ascii=False, default=_json_default) + "\n" for e in entries]
        self._file.writelines(lines)
        self.count += len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self.count = 0

    def entries(self, chunk: int) -> Iterator[list[AuditEntry]]:
        """The spooled entries, in order, `chunk` at a time."""
        self.close()
        yield from _read_spool(self.path, chunk)

    def replay(self, sink: Any, chunk: int) -> int:
        """Hand every spooled entry to `sink` (e.g. AuditLedger.append), `chunk` at a time; then drop the spool."""
        total = 0
        for batch in self.entries(chunk):
            sink(batch)
            total += len(batch)
        self.discard()
        return total


class PublicationSpool(AuditSpool):
    """Audit entries of one artifact version on their way to the ledger.

    Written to ``<ledger dir>/spool/<id>.jsonl`` (0600) while the stage runs, with a lock
    file held for the spool's whole life so :meth:`AuditLedger.recover` never touches a
    live one. ``mark_publishing(uri)`` comes right before the version becomes visible:
    the spool is fsynced, ``<id>.json`` records where it will appear, and the ledger gets a
    ``publishing`` entry. ``publish()`` comes right after: the entries, then ``published``.
    A crash between the two leaves the marker and the spool for the next start.
    """

    def __init__(self, ledger: AuditLedger, stage: str, run_id: str):
        self.ledger, self.stage, self.run_id = ledger, stage, run_id
        self.id = f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        ledger.spool_dir.mkdir(parents=True, exist_ok=True)
        ledger.spool_dir.chmod(0o700)
        super().__init__(ledger.spool_dir / f"{self.id}.jsonl")
        self._lock = open(ledger.spool_dir / f"{self.id}.lock", "a+b")
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
        self.uri: str | None = None

    def mark_publishing(self, uri: str) -> None:
        """Call just before the artifact at `uri` becomes visible."""
        self.close()
        self.uri = uri
        marker = {"uri": uri, "run_id": self.run_id, "stage": self.stage, "entries": self.count}
        tmp = self.ledger.spool_dir / f".{self.id}.json.tmp"
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, self.ledger.spool_dir / f"{self.id}.json")
        _fsync_dir(self.ledger.spool_dir)
        self.ledger.append(
            AuditEntry(
                self.id,
                self.stage,
                "publishing",
                "artifact version about to be published",
                self.run_id,
                extra={"uri": uri, "entries": self.count},
            )
        )

    def publish(self, chunk: int = 10_000) -> int:
        """Call once the artifact is visible: its entries, then ``published``; returns their number."""
        if self.uri is None:
            raise RuntimeError("publish() before mark_publishing(uri)")
        total = 0
        for batch in _read_spool(self.path, chunk):
            self.ledger.append(batch)
            total += len(batch)
        self.ledger.append(
            AuditEntry(
                self.id,
                self.stage,
                "published",
                "artifact version published",
                self.run_id,
                extra={"uri": self.uri, "entries": total},
            )
        )
        self._release(remove=True)
        return total

    def replay(self, sink: Any, chunk: int) -> int:
        """Plain replay into `sink` (no publication markers), then drop the spool."""
        total = 0
        for batch in _read_spool(self.path, chunk):
            sink(batch)
            total += len(batch)
        self._release(remove=True)
        return total

    def discard(self) -> None:
        """The run failed before publishing: nothing of it reaches the ledger."""
        self.count = 0
        if self.uri is not None:
            self.ledger.append(
                AuditEntry(
                    self.id, self.stage, "publication_abandoned", "the run failed", self.run_id, extra={"uri": self.uri}
                )
            )
        self._release(remove=True)

    def _release(self, remove: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if remove:
            _remove_spool_files(self.ledger.spool_dir, self.id)
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()


def _read_spool(path: Path, chunk: int) -> Iterator[list[AuditEntry]]:
    if not path.exists():
        return
    batch: list[AuditEntry] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn by a crash before mark_publishing fsynced it: never published
            batch.append(AuditEntry(**json.loads(line)))
            if len(batch) >= chunk:
                yield batch
                batch = []
    if batch:
        yield batch


def _remove_spool_files(spool_dir: Path, spool_id: str) -> None:
    for suffix in (".jsonl", ".json", ".lock"):
        (spool_dir / f"{spool_id}{suffix}").unlink(missing_ok=True)


def _published(uri: str) -> bool:
    """Whether the artifact version at `uri` is visible (its manifest is written last)."""
    if not uri:
        return False
    from upath import UPath

    from deepfeed.core.platform.artifacts import MANIFEST

    try:
        return (UPath(uri) / MANIFEST).exists()
    except Exception:  # an unreachable remote store: not provably published
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
