"""The evaluation set: a stratified, seeded sample of the held-out split (or a user's own
reference set), and the proof that none of it leaked into training.

The held-out split itself is drawn in cleaning (by content hash, so augmented siblings
of held-out records are never created). Here it is sampled down to the evaluation size
so that every (language, domain tag) stratum keeps its share, which a plain "first N"
cut does not: a corpus sorted by source would evaluate one domain only.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

UNTAGGED = "untagged"


class EvalSetError(ValueError):
    pass


def stratum(record: dict[str, Any]) -> tuple[str, str]:
    tags = record.get("tags")
    tags = list(tags) if tags is not None else []
    return (record.get("lang") or "unknown", str(tags[0]) if tags else UNTAGGED)


def _rank(record: dict[str, Any], seed: int) -> str:
    # Order by a seeded hash of the id, so the sample does not depend on file order.
    return hashlib.sha256(f"{seed}:{record.get('record_id')}".encode()).hexdigest()


def stratified_sample(records: Sequence[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """`size` records (all when size <= 0 or larger than the set), each stratum getting
    its proportional share by largest remainder; every stratum keeps at least one
    record while the size allows."""
    records = list(records)
    if size <= 0 or size >= len(records):
        return sorted(records, key=lambda r: _rank(r, seed))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[stratum(record)].append(record)
    keys = sorted(groups)
    quota = {k: size * len(groups[k]) / len(records) for k in keys}
    take = {k: int(quota[k]) for k in keys}
    if size >= len(keys):
        for k in keys:
            take[k] = max(take[k], 1)
    # Hand out what is left (or take back an excess) by largest fractional share.
    by_remainder = sorted(keys, key=lambda k: (-(quota[k] - int(quota[k])), k))
    while sum(take.values()) < size:
        k = next(k for k in by_remainder if take[k] < len(groups[k]))
        take[k] += 1
        by_remainder.remove(k)
        by_remainder.append(k)
    while sum(take.values()) > size:
        k = max(keys, key=lambda k: (take[k] - quota[k], k))
        take[k] -= 1
    chosen = [r for k in keys for r in sorted(groups[k], key=lambda r: _rank(r, seed))[: take[k]]]
    return sorted(chosen, key=lambda r: _rank(r, seed))


def strata_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts["/".join(stratum(record))] += 1
    return dict(sorted(counts.items()))


def load_reference_set(path: str | Path) -> list[dict[str, Any]]:
    """A user's own reference set: JSONL lines with `prompt` and `reference` (or
    `response`), optional `lang`, `tags` and `label`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalSetError(f"{str(path)!r} does not exist or is not a file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not row.get("prompt"):
            raise EvalSetError(f"{path}:{number}: every line needs a 'prompt'")
        meta = {"label": row["label"]} if row.get("label") else {}
        records.append(
            {
                "record_id": str(row.get("id") or hashlib.sha1(f"{path.name}:{number}".encode()).hexdigest()[:16]),
                "source": str(path),
                "kind": "pair",
                "prompt": row["prompt"],
                "response": row.get("reference") or row.get("response"),
                "text": None,
                "lang": row.get("lang"),
                "tags": row.get("tags") or [],
                "meta": json.dumps(meta) if meta else None,
            }
        )
    if not records:
        raise EvalSetError(f"{str(path)!r} holds no records")
    return records


def record_text(record: dict[str, Any]) -> str:
    if record.get("kind") == "pair":
        return f"{record.get('prompt') or ''}\n{record.get('response') or ''}"
    return record.get("text") or ""


def _shingles(text: str, n: int = 5) -> set[bytes]:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    if len(text) <= n:
        return {text.encode()}
    return {text[i : i + n].encode() for i in range(len(text) - n + 1)}


@dataclass
class OverlapReport:
    eval_records: int
    train_records: int
    by_parent_id: list[tuple[str, str]] = field(default_factory=list)
    by_exact_hash: list[tuple[str, str]] = field(default_factory=list)
    by_near_duplicate: list[tuple[str, str]] = field(default_factory=list)

    @property
    def overlapping(self) -> int:
        return len({e for e, _ in self.by_parent_id + self.by_exact_hash + self.by_near_duplicate})

    def summary(self) -> dict[str, int]:
        return {
            "eval_records": self.eval_records,
            "train_records": self.train_records,
            "overlap_by_parent_id": len(self.by_parent_id),
            "overlap_by_exact_hash": len(self.by_exact_hash),
            "overlap_by_near_duplicate": len(self.by_near_duplicate),
            "overlapping_eval_records": self.overlapping,
        }


def training_overlap(
    eval_records: Sequence[dict[str, Any]],
    train_records: Sequence[dict[str, Any]],
    threshold: float = 0.8,
    num_perm: int = 128,
) -> OverlapReport:
    """Pairs (eval id, training id) that share an id or parent id, the same normalized
    content, or a MinHash near-duplicate at Jaccard >= `threshold` on character 5-grams."""
    from datasketch import MinHash, MinHashLSH

    report = OverlapReport(len(eval_records), len(train_records))
    eval_ids = {str(r["record_id"]) for r in eval_records}
    for t in train_records:
        for ref in (t.get("record_id"), t.get("parent_id")):
            if ref is not None and str(ref) in eval_ids:
                report.by_parent_id.append((str(ref), str(t["record_id"])))

    def key(text: str) -> str:
        return hashlib.sha256(" ".join(unicodedata.normalize("NFKC", text).casefold().split()).encode()).hexdigest()

    eval_keys: dict[str, str] = {key(record_text(r)): str(r["record_id"]) for r in eval_records}
    # datasketch rather than our own LSH: the eval side is small and this runs once per
    # evaluation, so its per-record Python cost is irrelevant next to generation.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures = {}
    for r in eval_records:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(_shingles(record_text(r))))
        signatures[str(r["record_id"])] = m
        lsh.insert(str(r["record_id"]), m)
    for t in train_records:
        text, train_id = record_text(t), str(t["record_id"])
        if key(text) in eval_keys:
            report.by_exact_hash.append((eval_keys[key(text)], train_id))
            continue
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(_shingles(text)))
        for eval_id in lsh.query(m):
            if signatures[eval_id].jaccard(m) >= threshold:
                report.by_near_duplicate.append((eval_id, train_id))
    return report
