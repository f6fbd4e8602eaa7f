"""Durable store of user feedback, sealed into batches that the incremental stream trains on.

Layout under the root::

    .lock                      flock taken by every writer (several server workers)
    open.jsonl                 the batch being filled; one JSON line per feedback
    sealed/<batch_id>.jsonl    closed batches, never modified again

``append`` returns only after the line is fsynced, so a server acknowledges nothing it
could still lose. ``seal_batch`` renames the open file into ``sealed/`` (atomic on one
file system), so a reader sees a batch either whole or not at all.

Every free-text field (prompt, answer, correction, each tag) is PII-scrubbed before it
reaches the disk: this is training data for a model other users will talk to, and it is
also what the store keeps at rest. Fields that are not meant to be free text (language,
arm, model version, classification, role) must match their narrow format or the record is
refused, so they cannot smuggle text past the scrubber. User ids are kept only as HMACs
keyed by the secret salt (``deepfeed.core.platform.secrets.USER_SALT``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepfeed.core.data.pii import scrub
from deepfeed.core.loop.abtest import ARMS, hash_user_id
from deepfeed.core.platform.locations import Locations
from deepfeed.core.platform.secrets import USER_SALT, load_secret

SOURCE = "feedback"
# A rating is a score in [0, 1] (thumbs up = 1, down = 0; five stars map to (s-1)/4); at
# or above this the model's own answer is good enough to train on.
GOOD_RATING = 0.5
_MAX_TEXT = 20_000
_TEXT_FIELDS = ("prompt", "answer", "correction")
_MAX_TAGS, _MAX_TAG_CHARS = 32, 64
# BCP 47 shaped ("en", "zh-CN", "zh-Hant-TW"): a language, not a place for a sentence.
_LANG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")
# Registry versions, role and classification names: identifiers, never prose.
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class FeedbackError(ValueError):
    """A feedback record that cannot be stored; the message names the field."""


def default_root() -> Path:
    return Locations.from_environment().feedback_root


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _text(record: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FeedbackError(f"feedback field {name!r} is required and must be a non-empty string")
        return None
    if not isinstance(value, str):
        raise FeedbackError(f"feedback field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise FeedbackError(f"feedback field {name!r} is longer than {_MAX_TEXT} characters")
    return value


def validate(record: Mapping[str, Any], salt: str | None = None) -> dict[str, Any]:
    """The record as it will be stored (scrubbed, typed), or FeedbackError naming the field."""
    if not isinstance(record, Mapping):
        raise FeedbackError(f"feedback must be an object, got {type(record).__name__}")
    texts = {name: _text(record, name, required=name == "prompt") for name in _TEXT_FIELDS}
    rating = record.get("rating")
    if (
        isinstance(rating, bool)
        or not isinstance(rating, (int, float))
        or not math.isfinite(rating)
        or not 0.0 <= rating <= 1.0
    ):
        raise FeedbackError(f"feedback field 'rating' must be a number in [0, 1], got {rating!r}")
    if texts["answer"] is None and texts["correction"] is None:
        raise FeedbackError("feedback needs the model's 'answer' or a 'correction' (or both)")
    stored: dict[str, Any] = {name: (scrub(v).text if v is not None else None) for name, v in texts.items()}
    user_id = record.get("user_id")
    if user_id not in (None, "") and not salt:
        raise FeedbackError(
            "feedback field 'user_id' needs the secret user-id salt to be stored "
            f"(set ${USER_SALT.env} or ${USER_SALT.file_env})"
        )
    stored.update(
        rating=float(rating),
        tags=clean_tags(record.get("tags")),
        lang=_narrow(record, "lang", _LANG, "a language tag such as 'en' or 'zh-CN'"),
        user_hash=hash_user_id(str(user_id), salt) if user_id not in (None, "") else None,
    )
    # A server that salts its user hashes passes the hash, so the A/B analysis can join
    # feedback to the inference log on one key.
    if record.get("user_hash") is not None:
        if not isinstance(record["user_hash"], str) or not _HEX64.fullmatch(record["user_hash"]):
            raise FeedbackError("feedback field 'user_hash' must be a 64-hex HMAC digest")
        stored["user_hash"] = record["user_hash"]
    arm = record.get("arm")
    if arm is not None and arm not in ARMS:
        raise FeedbackError(f"feedback field 'arm' must be one of {list(ARMS)}, got {arm!r}")
    stored["arm"] = arm
    for name in ("request_id", "model_version", "classification", "role"):
        stored[name] = _narrow(record, name, _IDENT, "an identifier (letters, digits, . _ : -; at most 64)")
    return stored


def clean_tags(tags: Any) -> list[str]:
    """Tags as they may be stored and trained on: scrubbed, bounded in number and length."""
    tags = tags or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise FeedbackError("feedback field 'tags' must be a list of strings")
    if len(tags) > _MAX_TAGS or any(len(t) > _MAX_TAG_CHARS for t in tags):
        raise FeedbackError(
            f"feedback field 'tags' takes at most {_MAX_TAGS} tags of at most {_MAX_TAG_CHARS} characters"
        )
    return [scrub(t).text for t in tags]


def _narrow(record: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not pattern.fullmatch(value):
        # The value itself stays out of the message: it may be the very PII being refused.
        raise FeedbackError(f"feedback field {name!r} must be {what}")
    return value


class FeedbackStore:
    def __init__(self, root: str | os.PathLike[str] | None = None, salt: str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self._salt = salt
        self.open_path = self.root / "open.jsonl"
        self.sealed_dir = self.root / "sealed"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.sealed_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append(self, record: Mapping[str, Any]) -> str:
        """Store one feedback durably (fsynced) and return its id."""
        salt = self._salt
        if salt is None and record.get("user_id") not in (None, ""):
            salt = load_secret(USER_SALT, required=False)
        stored = validate(record, salt)
        feedback_id = uuid.uuid4().hex
        stored = {
            "feedback_id": feedback_id,
            "received_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            **stored,
        }
        line = json.dumps(stored, ensure_ascii=False, sort_keys=True).encode() + b"\n"
        with self._locked():
            created = not self.open_path.exists()
            with open(self.open_path, "a+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":
                        # A writer died mid-line (never acknowledged): end that fragment
                        # so it stays one unreadable line instead of corrupting this one.
                        line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if created:
                _fsync_dir(self.root)
        return feedback_id

    def pending(self) -> int:
        """Feedback records in the open batch."""
        with self._locked():
            return len(list(self._read_lines(self.open_path)))

    def oldest_pending(self) -> _dt.datetime | None:
        """When the oldest feedback of the open batch arrived (None when it is empty)."""
        with self._locked():
            first = next(self._read_lines(self.open_path), None)
        return _dt.datetime.fromisoformat(first["received_at"]) if first else None

    def seal_batch(self) -> str | None:
        """Close the open batch; its id, or None when nothing is waiting."""
        with self._locked():
            if not self.open_path.exists() or not any(True for _ in self._read_lines(self.open_path)):
                return None
            now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            # The sequence number makes ids sort in sealing order whatever the clock does.
            batch_id = f"{len(self.batches()) + 1:06d}-{now}Z"
            os.replace(self.open_path, self.sealed_dir / f"{batch_id}.jsonl")
            _fsync_dir(self.sealed_dir)
            _fsync_dir(self.root)
            return batch_id

    def batches(self) -> list[str]:
        if not self.sealed_dir.exists():
            return []
        return sorted(p.stem for p in self.sealed_dir.glob("*.jsonl"))

    def _batch_path(self, batch_id: str) -> Path:
        path = self.sealed_dir / f"{batch_id}.jsonl"
        if "/" in batch_id or not path.exists():
            raise KeyError(f"no sealed feedback batch {batch_id!r} under {self.sealed_dir}")
        return path

    @staticmethod
    def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with open(path, "rb") as f:
            for raw in f:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue  # a fragment left by a crashed writer: it was never acknowledged

    def raw_records(self, batch_id: str) -> list[dict[str, Any]]:
        """Everything stored in a sealed batch, as appended (after scrubbing)."""
        return list(self._read_lines(self._batch_path(batch_id)))

    def all_records(self) -> list[dict[str, Any]]:
        """Every stored feedback, sealed or still open (for metrics, not training)."""
        with self._locked():  # seal_batch moves the open file between the two lists
            records = [r for b in self.batches() for r in self.raw_records(b)]
            return records + list(self._read_lines(self.open_path))

    def read_batch(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's trainable pairs in the corpus schema, plus ``rating``.

        The response is the correction when there is one, else the model's answer when it
        was rated good. A bad rating without a correction teaches nothing to train on (it
        still counts in the metrics: see ``raw_records``), so it is left out here.
        """
        records = []
        for line_no, fb in enumerate(self._read_lines(self._batch_path(batch_id)), 1):
            if fb.get("correction"):
                response = fb["correction"]
            elif fb.get("answer") and fb["rating"] >= GOOD_RATING:
                response = fb["answer"]
            else:
                continue
            meta = {
                k: fb.get(k)
                for k in (
                    "feedback_id",
                    "received_at",
                    "answer",
                    "model_version",
                    "arm",
                    "classification",
                    "role",
                    "user_hash",
                )
            }
            meta["corrected"] = bool(fb.get("correction"))
            records.append(
                {
                    "record_id": fb["feedback_id"],
                    "source": SOURCE,
                    "locator": f"{SOURCE}/{batch_id}#{line_no}",
                    "kind": "pair",
                    "prompt": fb["prompt"],
                    "response": response,
                    "text": None,
                    # Scrubbed again on the way out: batches written before tags were scrubbed
                    # at the door must not carry PII into training either.
                    "lang": fb.get("lang") if isinstance(fb.get("lang"), str) and _LANG.fullmatch(fb["lang"]) else None,
                    "tags": [scrub(str(t)).text for t in fb.get("tags") or []],
                    "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
                    "rating": fb["rating"],
                }
            )
        return records
