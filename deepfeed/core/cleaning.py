"""Cleaning the ingested records: normalization, exact dedup, filters, the held-out split.

Every record that leaves is accounted for: kept = cleaned + removed-with-reason.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
TEXT_FIELDS = ("prompt", "response", "text")


@dataclass(frozen=True)
class CleaningConfig:
    min_chars: int = 2
    max_chars: int = 8000
    eval_fraction: float = 0.1
    split_seed: int = 17


@dataclass
class CleaningResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.removed:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        return counts


def normalize_text(text: str | None) -> str | None:
    """NFKC (full-width forms, ligatures), no control characters, tidy whitespace."""
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip() or None


def content_key(record: dict[str, Any]) -> str:
    """Identity of a record's content, independent of where it came from."""
    body = "\x1f".join((record.get(f) or "").casefold() for f in TEXT_FIELDS)
    return hashlib.sha256(body.encode()).hexdigest()


def training_text(record: dict[str, Any]) -> str:
    if record.get("kind") == "pair":
        return f"{record['prompt']}\n{record['response']}"
    return record.get("text") or ""


def assign_split(record: dict[str, Any], eval_fraction: float, seed: int) -> str:
    """A stable train/eval split by hash of the content, so the same record lands in
    the same split on every run and its augmented siblings can be kept out of training."""
    digest = hashlib.sha256(f"{seed}:{content_key(record)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if bucket < eval_fraction else "train"


def clean_records(records: list[dict[str, Any]], config: CleaningConfig) -> CleaningResult:
    result = CleaningResult()
    seen: dict[str, str] = {}
    for record in records:
        cleaned = dict(record)
        for name in TEXT_FIELDS:
            cleaned[name] = normalize_text(record.get(name))
        reason = None
        if cleaned["kind"] == "pair" and not (cleaned["prompt"] and cleaned["response"]):
            reason = "empty after normalization"
        elif cleaned["kind"] == "text" and not cleaned["text"]:
            reason = "empty after normalization"
        else:
            length = len(training_text(cleaned))
            if length < config.min_chars:
                reason = f"too short (< {config.min_chars} chars)"
            elif length > config.max_chars:
                reason = f"too long (> {config.max_chars} chars)"
        if reason is None:
            key = content_key(cleaned)
            if key in seen:
                reason = f"exact duplicate of {seen[key]}"
            else:
                seen[key] = record["record_id"]
        if reason is not None:
            result.removed.append({"record_id": record["record_id"], "source": record["source"], "reason": reason.split(" of ")[0], "detail": reason})
            continue
        cleaned["changed"] = any(cleaned[f] != record.get(f) for f in TEXT_FIELDS)
        cleaned["split"] = assign_split(cleaned, config.eval_fraction, config.split_seed)
        result.records.append(cleaned)
    return result
