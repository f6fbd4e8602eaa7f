"""What the 3C asset checks and the privacy releases compute on a cleaned corpus.

* Cleanliness: every noise detector re-run on the output (each quality detector,
  exact and near-duplicates, PII leftovers); the noise ratio is the share of records
  that any of them flags.
* Consistency: records in which a glossary variant is still un-normalized.
* Differential privacy: the corpus statistics that leave the pipeline (counts per
  language and per tag, a length histogram) as Laplace releases within one ε budget.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from deepfeed.core.data.cleaning import TEXT_FIELDS, glossary_in_scope, meta_dict, training_text
from deepfeed.core.data.coverage import domain_tags
from deepfeed.core.data.dedup import NearDuplicateIndex, exact_key
from deepfeed.core.data.dp import PrivacyAccountant, noisy_counts, noisy_histogram
from deepfeed.core.data.glossary import Glossary
from deepfeed.core.data.pii import has_pii
from deepfeed.core.data.quality.config import QualityConfig
from deepfeed.core.data.quality.detectors import DETECTORS

MAX_NOISE_RATIO = 0.003
LANGUAGES = ("zh", "en", "other")
# Fixed edges (data-derived edges would leak the min and max); characters of the
# training text, the last bin open-ended through clipping.
LENGTH_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass
class NoiseReport:
    records: int
    flagged: dict[str, int] = field(default_factory=dict)  # detector -> records it flags
    noisy: int = 0  # records flagged by at least one detector

    @property
    def ratio(self) -> float:
        return self.noisy / self.records if self.records else 0.0

    @property
    def passed(self) -> bool:
        return self.ratio < MAX_NOISE_RATIO


def _nested_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_nested_strings(k), *_nested_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _nested_strings(v)]
    return []


def _strings(record: dict[str, Any]) -> list[str]:
    """Every string of a record that could carry PII: text fields, tags, metadata."""
    values = [record.get(f) for f in TEXT_FIELDS] + list(record.get("tags") or []) + _nested_strings(meta_dict(record))
    return [v for v in values if isinstance(v, str) and v]


class NoiseCounter:
    """The noise report over records added batch by batch; only the duplicate indexes
    (content keys, MinHash LSH) grow with the corpus."""

    def __init__(self, quality: QualityConfig, near_duplicate_threshold: float):
        self.quality = quality
        self.report = NoiseReport(
            records=0, flagged={name: 0 for name in (*DETECTORS, "exact_duplicate", "near_duplicate", "pii")}
        )
        self._seen: set[str] = set()
        self._near = NearDuplicateIndex(threshold=near_duplicate_threshold)

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        texts = [training_text(r) for r in records]
        noisy = np.zeros(len(records), bool)

        def flag(name: str, mask: np.ndarray) -> None:
            nonlocal noisy
            self.report.flagged[name] += int(mask.sum())
            noisy |= mask

        for name, detector in DETECTORS.items():
            flag(
                name,
                np.array([reason is not None for reason in detector(texts, self.quality)], bool)
                if texts
                else np.zeros(0, bool),
            )
        exact = np.zeros(len(records), bool)
        for i, text in enumerate(texts):
            key = exact_key(text)
            exact[i] = key in self._seen
            self._seen.add(key)
        flag("exact_duplicate", exact)
        offset = self.report.records
        flag(
            "near_duplicate",
            np.array([m is not None for m in self._near.add_batch(range(offset, offset + len(texts)), texts)], bool),
        )
        flag("pii", np.array([any(has_pii(s) for s in _strings(r)) for r in records], bool))
        self.report.records += len(records)
        self.report.noisy += int(noisy.sum())


def noise_report(
    records: Sequence[dict[str, Any]], quality: QualityConfig, near_duplicate_threshold: float
) -> NoiseReport:
    counter = NoiseCounter(quality, near_duplicate_threshold)
    counter.add(records)
    return counter.report


def glossary_leftovers(records: Sequence[dict[str, Any]], glossary: Glossary, tags: Iterable[str] = ()) -> Counter:
    """Canonical term -> records (in the glossary's scope of domain `tags`, all when empty)
    that still hold one of its variants."""
    left: Counter = Counter()
    for record in records:
        if not glossary_in_scope(record, tags):
            continue
        terms = {m.canonical for f in TEXT_FIELDS if record.get(f) for m in glossary.find_variants(record[f])}
        left.update(terms)
    return left


@dataclass
class CorpusColumns:
    """What the released statistics are computed from, one entry per record: its
    language, its domain tags and the length of its training text. Compact enough to
    hold for a whole corpus that is itself only ever streamed."""

    languages: list[str] = field(default_factory=list)
    tag_lists: list[tuple[str, ...]] = field(default_factory=list)
    lengths: array = field(default_factory=lambda: array("q"))  # 8 bytes a record, not a Python int each

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> "CorpusColumns":
        columns = cls()
        for record in records:
            columns.append(record)
        return columns

    def append(self, record: dict[str, Any]) -> None:
        self.languages.append(record.get("lang") or "other")
        self.tag_lists.append(tuple(domain_tags(record)))
        self.lengths.append(len(training_text(record)))

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, keep: np.ndarray) -> "CorpusColumns":
        """The rows where `keep` is True, in order."""
        index = np.flatnonzero(keep).tolist()
        return CorpusColumns(
            [self.languages[i] for i in index],
            [self.tag_lists[i] for i in index],
            array("q", (self.lengths[i] for i in index)),
        )


def release_statistics(
    records: "CorpusColumns | Sequence[dict[str, Any]]",
    epsilon: float,
    rng: np.random.Generator | int | None = None,
    accountant: PrivacyAccountant | None = None,
) -> tuple[dict[str, Any], PrivacyAccountant]:
    """Noisy counts per language and per tag and a length histogram, ε split in three.
    Takes the records themselves or their CorpusColumns (the same release either way).
    `accountant`: the one to charge (EpsilonLedger.release hands one out), else a new one."""
    columns = records if isinstance(records, CorpusColumns) else CorpusColumns.from_records(records)
    accountant = PrivacyAccountant(epsilon) if accountant is None else accountant
    share = epsilon / 3
    generator = np.random.default_rng(rng)
    languages = noisy_counts(
        Counter(columns.languages), share, accountant, generator, name="records per language", domain=LANGUAGES
    )
    tag_lists = columns.tag_lists
    # One record touches every tag it carries: that many bins is its L1 sensitivity.
    sensitivity = max((len(t) for t in tag_lists), default=1)
    tags = noisy_counts(
        Counter(t for ts in tag_lists for t in ts),
        share,
        accountant,
        generator,
        name="records per tag",
        sensitivity=sensitivity,
    )
    lengths = np.clip(np.asarray(columns.lengths, dtype=np.int64), 0, LENGTH_EDGES[-1] - 1)
    counts, edges = noisy_histogram(lengths, list(LENGTH_EDGES), share, accountant, generator, name="length histogram")
    histogram = {f"{int(lo)}-{int(hi) - 1}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts)}
    return {"languages": languages, "tags": tags, "length_histogram": histogram}, accountant
