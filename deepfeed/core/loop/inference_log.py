"""Inference log: one JSON line per served request, in one file per UTC hour.

``<root>/<YYYY-MM-DD>/<HH>.jsonl``. Hour files keep windows cheap to read (the drift
sensor reads the last hours, the A/B report the last days) and old hours easy to expire.
Every free-text value is PII-scrubbed before it is written (``append`` scrubs whatever string
it is handed, not only the prompt), and users appear only as HMACs keyed by the secret salt.
Several server workers append to the same hour file: each line is written with one
``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepfeed.core.data.pii import scrub
from deepfeed.core.loop.drift import text_features
from deepfeed.core.platform.locations import Locations

# Values of these keys are identifiers the server itself sets; any other string is text
# and goes through the scrubber. An identifier that does not look like one is scrubbed too.
_IDENT_KEYS = frozenset({"time", "request_id", "user_hash", "arm", "model_version", "runtime", "lang"})
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")


def scrub_event(value: Any, key: str | None = None) -> Any:
    """The event with every free-text string scrubbed (dict keys are kept: they are field names)."""
    if isinstance(value, str):
        if key in _IDENT_KEYS and _IDENT.fullmatch(value):
            return value
        return scrub(value).text
    if isinstance(value, dict):
        return {k: scrub_event(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_event(v) for v in value]
    return value


def default_root() -> Path:
    return Locations.from_environment().inference_log_root


def _utc(when: _dt.datetime | str | None) -> _dt.datetime:
    if when is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(when, str):
        when = _dt.datetime.fromisoformat(when)
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def guess_lang(prompt: str, cjk_share: float) -> str:
    # Only the two languages of the corpus are told apart; anything else reads as "en".
    return "zh" if cjk_share >= 0.3 else "en"


def prompt_record(prompt: str, summarizer: Any = None) -> dict[str, Any]:
    """The loggable view of a prompt: scrubbed text, PII counts and drift features (with
    an :class:`~deepfeed.core.data.embedding_summary.EmbeddingSummarizer`, its embedding summary
    of the scrubbed text as well)."""
    scrubbed = scrub(prompt)
    features = {name: float(values[0]) for name, values in text_features([scrubbed.text]).items()}
    if summarizer is not None:
        features.update(summarizer.one(scrubbed.text))
    return {
        "prompt": scrubbed.text,
        "pii_found": {k: v for k, v in scrubbed.counts.items() if v},
        "features": features,
        "lang": guess_lang(scrubbed.text, features["cjk_share"]),
    }


class InferenceLog:
    def __init__(self, root: str | os.PathLike[str] | None = None, fsync: bool = False):
        self.root = Path(root) if root is not None else default_root()
        # A process crash loses nothing either way (the line is in the kernel once
        # write() returns); fsync also survives a machine crash, at ~1 ms a request.
        self.fsync = fsync

    def path_for(self, when: _dt.datetime) -> Path:
        when = _utc(when)
        return self.root / when.strftime("%Y-%m-%d") / f"{when:%H}.jsonl"

    def append(self, event: dict[str, Any]) -> Path:
        """Write one event (it must carry ``time`` as ISO 8601); returns its hour file."""
        when = _utc(event["time"])
        event = scrub_event(event)
        path = self.path_for(when)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, ensure_ascii=False, sort_keys=True, default=float).encode() + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def hour_files(self, since: _dt.datetime | None = None, until: _dt.datetime | None = None) -> list[Path]:
        if not self.root.exists():
            return []
        lo = _utc(since).replace(minute=0, second=0, microsecond=0) if since else None
        files = []
        for path in sorted(self.root.glob("*/*.jsonl")):
            hour = _dt.datetime.strptime(f"{path.parent.name} {path.stem}", "%Y-%m-%d %H").replace(
                tzinfo=_dt.timezone.utc
            )
            if (lo is None or hour >= lo) and (until is None or hour < _utc(until)):
                files.append(path)
        return files

    def events(
        self, since: _dt.datetime | str | None = None, until: _dt.datetime | str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events with since <= time < until, in file order."""
        lo = _utc(since) if since is not None else None
        hi = _utc(until) if until is not None else None
        for path in self.hour_files(lo, hi):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # a line being written right now
                    event = json.loads(raw)
                    t = _utc(event["time"])
                    if (lo is None or t >= lo) and (hi is None or t < hi):
                        yield event

    def find(
        self, request_id: str, within: _dt.timedelta = _dt.timedelta(days=7), now: _dt.datetime | None = None
    ) -> dict[str, Any] | None:
        """The event logged for ``request_id`` within the last ``within``, newest hours first."""
        needle = json.dumps(request_id).encode()
        for path in reversed(self.hour_files(_utc(now) - within)):
            with open(path, "rb") as f:
                for raw in f:
                    # A substring test first: parsing every line of a busy hour costs ~100x more.
                    if needle in raw and raw.endswith(b"\n"):
                        event = json.loads(raw)
                        if event.get("request_id") == request_id:
                            return event
        return None

    def count(self) -> int:
        return sum(1 for _ in self.events())


def feature_columns(events: Iterable[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-feature arrays over events, in the shape ks_drift takes."""
    rows = [e["features"] for e in events if e.get("features")]
    names = sorted({k for r in rows for k in r})
    return {name: np.asarray([r.get(name, np.nan) for r in rows], dtype=float) for name in names}
