"""Exact and near-duplicate detection for streaming batches of text.

Near-duplicates are found with MinHash LSH over character n-gram shingles, so Chinese
(which has no spaces) works exactly like English. Texts are lowercased and whitespace
is collapsed first, so reflowed or re-cased copies still collide.

Signatures are datasketch MinHashes: the permutations come from
:class:`datasketch.MinHash` (scheme ``affine32``) and the LSH band layout from
:class:`datasketch.MinHashLSH`'s optimiser, so ``MinHash(seed=..., hashvalues=row,
scheme="affine32")`` round-trips any row we compute. What we do not take from
datasketch is the per-record work: hashing every shingle through a Python callable
and querying/inserting ``MinHashLSH`` one record at a time ran at ~4.5k records/s
here, and its dict storage costs ~2 KB per record, which does not fit a 1M-record
run on two cores. So shingle hashing and the permutations are vectorised over a
whole batch with numpy (~20x faster), and the band index is a set of sorted numpy
runs (12 bytes per band per record) looked up with ``searchsorted``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import Optional

import numpy as np

__all__ = [
    "NearDuplicateIndex",
    "exact_key",
    "minhash_signatures",
    "normalize_for_dedup",
    "shingle_hashes",
]

_SCHEME = "affine32"
# Pads texts shorter than one shingle. Normalisation strips control characters from
# real text, so the pad cannot collide with content.
_PAD = "\x00"
_POLY = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the rolling hash keeps all bits
# Cells of the (num_perm x shingles) matrix materialised at once: about 8 MB, which
# measured fastest; larger chunks fall out of cache, smaller ones pay call overhead.
_CHUNK_CELLS = 1 << 21


def normalize_for_dedup(text: str) -> str:
    """Lowercase and collapse all whitespace runs (incl. ideographic space) to one space."""
    return " ".join(text.lower().split())


def exact_key(text: str) -> str:
    """Content key for exact duplicates: a 128-bit BLAKE2b of the dedup-normalised text."""
    return hashlib.blake2b(normalize_for_dedup(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    # Same pre-mix datasketch applies to every input hash under the affine32 scheme;
    # repeating it keeps our signatures bit-identical to MinHash.update_batch.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_hashes(texts: Sequence[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the character n-grams of every (already normalised) text.

    Returns ``(hashes, offsets)``: the shingles of text ``i`` are
    ``hashes[offsets[i]:offsets[i + 1]]``. A text shorter than ``ngram`` (including the
    empty text) is one padded shingle, so every text has at least one. Each text's
    segment has as many entries as characters; the last ``ngram - 1`` repeat its first
    shingle instead of being cut out, which keeps the segments contiguous without a
    gather and cannot change a MinHash (a set statistic).
    """
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    n = len(texts)
    if n == 0:
        return np.empty(0, np.uint32), np.zeros(1, np.int64)
    padded = [t if len(t) >= ngram else t + _PAD * (ngram - len(t)) for t in texts]
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=n)
    cps = np.frombuffer(("".join(padded) + _PAD * (ngram - 1)).encode("utf-32-le", "surrogatepass"), np.uint32)
    total = cps.size - (ngram - 1)
    rolling = cps[:total].astype(np.uint64)
    for k in range(1, ngram):
        rolling *= _POLY
        rolling += cps[k : k + total]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if ngram > 1:
        # Windows that run into the next text: the last ngram-1 of every text.
        tail = (offsets[1:, None] - np.arange(1, ngram)).ravel()
        rolling[tail] = rolling[np.repeat(offsets[:-1], ngram - 1)]
    mixed = _fmix64(rolling)
    mixed >>= np.uint64(32)
    return mixed.astype(np.uint32), offsets


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash  # here: datasketch pulls in scipy, ~1 s at every load of the code location

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = offsets.size - 1
    out = np.empty((n, a.size), np.uint32)
    if n == 0:
        return out
    mixed = _fmix32(hashes)
    a_col, b_col = a[:, None], b[:, None]
    # Permutations x shingles layout: reduceat along the contiguous axis is ~10x faster
    # than along axis 0 of the transposed matrix.
    rows_per_chunk = max(1, _CHUNK_CELLS // a.size)
    # Chunk boundaries fall between texts, so reduceat never splits one text's shingles.
    bounds = np.searchsorted(offsets, np.arange(0, offsets[-1], rows_per_chunk), side="right") - 1
    bounds = np.unique(np.append(bounds, n))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        s0, s1 = offsets[lo], offsets[hi]
        permuted = a_col * mixed[s0:s1]  # uint32 wraparound is the mod 2^32
        permuted += b_col
        out[lo:hi] = np.minimum.reduceat(permuted, offsets[lo:hi] - s0, axis=1).T
    return out


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1, normalize: bool = True
) -> np.ndarray:
    """MinHash signatures (``len(texts) x num_perm``, uint32) of character n-gram sets."""
    if normalize:
        texts = [normalize_for_dedup(t) for t in texts]
    hashes, offsets = shingle_hashes(texts, ngram)
    a, b = _permutations(num_perm, seed)
    return _signatures_from_hashes(hashes, offsets, a, b)


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (band, record), band-major; equal keys <=> equal band slices (w.h.p.)."""
    blocks = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.zeros((bands, len(signatures)), np.uint64)
    for k in range(rows):
        keys *= _POLY
        keys += blocks[:, :, k].T
    return _fmix64(keys)


def _restrict(order: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-band sort order of the masked subset, as indices into that subset."""
    local = np.cumsum(mask) - 1
    return local[order[mask[order]].reshape(order.shape[0], -1)]


class _KeyFilter:
    """A one-hash Bloom filter over (band, key): most lookups are misses (new records),
    and a bit test is much cheaper than a binary search in every run. Grows so that
    it keeps >= 8 bits per entry (about 12% false positives, which only cost a search)."""

    def __init__(self):
        self._log_bits = 20
        self._bits = np.zeros(1 << (self._log_bits - 3), np.uint8)
        self._entries = 0

    def _positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(byte index, bit index) per key. Keys are fmix64 outputs, so their top bits
        are uniform; the band offset keeps equal keys of different bands apart."""
        salted = keys + (np.arange(keys.shape[0], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[:, None]
        pos = salted >> np.uint64(64 - self._log_bits)
        return (pos >> np.uint64(3)).astype(np.intp), (pos & np.uint64(7)).astype(np.uint8)

    def add(self, keys: np.ndarray, all_keys) -> None:
        self._entries += keys.size
        if self._entries * 8 > (1 << self._log_bits):
            while self._entries * 8 > (1 << self._log_bits):
                self._log_bits += 2  # x4, so the rebuilds below stay rare
            self._bits = np.zeros(1 << (self._log_bits - 3), np.uint8)
            for run_keys in all_keys():
                self._set(run_keys)
        self._set(keys)

    def _set(self, keys: np.ndarray) -> None:
        byte, bit = self._positions(keys)
        # One pass per bit value: within a pass every write to a byte sets the same
        # bit, so repeated indices are harmless (and this is ~2x faster than ufunc.at).
        for b in range(8):
            self._bits[byte[bit == b]] |= np.uint8(1 << b)

    def might_contain(self, keys: np.ndarray) -> np.ndarray:
        byte, bit = self._positions(keys)
        return ((self._bits[byte] >> bit) & 1).astype(bool)


class _SortedRuns:
    """Append-only multimap ``(band, key) -> slot`` stored as sorted numpy runs.

    Runs are merged tier by tier, like an LSM tree: a new run is tier 0, and whenever
    the newest ``_FANOUT`` runs share a tier they become one run of the next tier. With
    b batches there are at most (_FANOUT - 1) * log_4(b) runs and every key is re-sorted
    log_4(b) times, whatever the batch sizes. (Binary merging re-sorts twice as often;
    the extra runs a lookup visits cost little behind the key filter.) Lookups return
    the smallest (earliest) slot per key.
    """

    _FANOUT = 4

    def __init__(self, bands: int):
        self.bands = bands
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, slots), each (bands, m), sorted by key
        self._tiers: list[int] = []  # non-increasing: older runs have absorbed more merges
        self._filter = _KeyFilter()

    def add_sorted(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add a run whose rows are already sorted by key (ties by slot)."""
        if keys.shape[1] == 0:
            return
        self._filter.add(keys, lambda: [k for k, _ in self._runs])
        self._runs.append((keys, slots))
        self._tiers.append(0)
        while len(self._runs) >= self._FANOUT and len(set(self._tiers[-self._FANOUT :])) == 1:
            tail = self._runs[-self._FANOUT :]
            tier = self._tiers[-1] + 1
            del self._runs[-self._FANOUT :], self._tiers[-self._FANOUT :]
            self._runs.append(self._merge(tail))
            self._tiers.append(tier)

    def _merge(self, runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Merge sorted runs (oldest first) band by band, which bounds the temporaries.
        A stable sort of concatenated sorted runs measured faster than searchsorted
        merging, and it keeps the older runs' (earlier) slots first among equal keys."""
        size = sum(k.shape[1] for k, _ in runs)
        keys = np.empty((self.bands, size), runs[0][0].dtype)
        slots = np.empty((self.bands, size), runs[0][1].dtype)
        for band in range(self.bands):
            merged = np.concatenate([k[band] for k, _ in runs])
            order = np.argsort(merged, kind="stable")
            keys[band] = merged[order]
            slots[band] = np.concatenate([s[band] for _, s in runs])[order]
        return keys, slots

    def lookup(self, sorted_keys: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Earliest slot per (band, record), or -1; queries come pre-sorted per band
        (``sorted_keys[b] == keys[b][order[b]]``) because searchsorted is ~6x faster
        on sorted needles."""
        found = np.full(sorted_keys.shape, -1, np.int64)
        if not self._runs:
            return found
        maybe = self._filter.might_contain(sorted_keys)
        for band in range(self.bands):
            candidates = np.flatnonzero(maybe[band])
            if candidates.size == 0:
                continue
            query, target = sorted_keys[band, candidates], order[band, candidates]
            for run_keys, run_slots in self._runs:  # oldest first, so earlier slots win
                pos = np.minimum(np.searchsorted(run_keys[band], query), run_keys.shape[1] - 1)
                hit = run_keys[band][pos] == query
                free = found[band, target[hit]] < 0
                found[band, target[hit][free]] = run_slots[band][pos[hit][free]]
        return found


class _BlockRows:
    """Append-only 2-D array in fixed-size blocks: growing never copies what is stored,
    so there is no transient doubling of the largest structure of the index."""

    _BLOCK = 1 << 16

    def __init__(self, width: int, dtype):
        self.width, self.dtype = width, dtype
        self._blocks: list[np.ndarray] = []
        self._size = 0

    def append(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            fill = self._size % self._BLOCK
            if fill == 0:
                self._blocks.append(np.empty((self._BLOCK, self.width), self.dtype))
            take = min(self._BLOCK - fill, len(rows) - done)
            self._blocks[-1][fill : fill + take] = rows[done : done + take]
            done += take
            self._size += take

    def take(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), self.width), self.dtype)
        block = index // self._BLOCK
        for b in np.unique(block).tolist():
            rows = block == b
            out[rows] = self._blocks[b][index[rows] % self._BLOCK]
        return out


class NearDuplicateIndex:
    """Streaming near-duplicate filter: feed batches, get back the id each record duplicates.

    A record is a near-duplicate when it shares an LSH band with an earlier *kept*
    record and their MinHash estimate of the Jaccard similarity of shingle sets is at
    least ``threshold``. Band collisions alone are not trusted: templated records often
    collide at Jaccard 0.5-0.7, so every candidate is verified against the stored
    signature. Because verification removes false positives, the band layout is tuned
    for recall (``weights`` favour false negatives).

    Where ``MinHashLSH.query`` returns every key of a bucket, each bucket here is
    represented by its first kept record; a record that collides with a non-matching
    representative in one band is still found through its other bands, and the rare
    miss costs one extra kept near-duplicate, never a wrongly dropped record.

    Memory per kept record: the id, 2 bytes per permutation for verification (the low
    16 bits of each minimum, i.e. b-bit MinHash: two different minima agree on them
    with probability 2^-16, far below the estimator's own noise) and 12 bytes per band
    -- about 430 bytes with the defaults.

    The index is picklable, so it can be persisted between runs to dedup incremental
    partitions against everything already kept.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        seed: int = 1,
        weights: tuple[float, float] = (0.1, 0.9),
        params: Optional[tuple[int, int]] = None,
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        from datasketch import MinHashLSH

        layout = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights, params=params)
        self.bands, self.rows = layout.b, layout.r
        self._a, self._b = _permutations(num_perm, seed)
        self._runs = _SortedRuns(self.bands)
        self._signatures = _BlockRows(num_perm, np.uint16)
        self._ids: list[Hashable] = []
        # A candidate is a duplicate when at least this many signature slots agree.
        self._min_agree = int(np.ceil(threshold * num_perm - 1e-9))

    def __len__(self) -> int:
        """Number of kept (distinct) records in the index."""
        return len(self._ids)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        hashes, offsets = shingle_hashes([normalize_for_dedup(t) for t in texts], self.ngram)
        return _signatures_from_hashes(hashes, offsets, self._a, self._b)

    def add_batch(self, ids: Sequence[Hashable], texts: Sequence[str]) -> list[Optional[Hashable]]:
        """For each record, the id of an earlier kept record it near-duplicates, else None.

        Records that get None are kept and inserted, so later records (in this batch or
        later ones) are compared against them. Order within the batch is respected.
        """
        ids, texts = list(ids), list(texts)
        if len(ids) != len(texts):
            raise ValueError("ids and texts must have the same length")
        result: list[Optional[Hashable]] = [None] * len(texts)
        if not texts:
            return result
        full = self.signatures(texts)
        keys = _band_keys(full, self.bands, self.rows)
        sig = full.astype(np.uint16)  # low 16 bits, see the class docstring
        order = np.argsort(keys, axis=1, kind="stable")  # by key, ties by batch position
        unresolved = self._match_index(sig, np.take_along_axis(keys, order, 1), order, result)
        batch = _BatchResolution(sig, keys, order, unresolved, self._min_agree)
        for i, j in batch.duplicates:
            result[i] = ids[j]
        self._insert(sig, keys, order, batch.kept, ids)
        return result

    def _match_index(self, sig: np.ndarray, sorted_keys: np.ndarray, order: np.ndarray, result: list) -> np.ndarray:
        """Verify candidates from earlier batches, all at once; returns the unresolved mask."""
        unresolved = np.ones(len(sig), bool)
        if not self._ids:
            return unresolved
        cand = self._runs.lookup(sorted_keys, order)
        bands, rows = np.nonzero(cand >= 0)
        if rows.size == 0:
            return unresolved
        slots = cand[bands, rows]
        agree = np.count_nonzero(sig[rows] == self._signatures.take(slots), axis=1)
        ok = agree >= self._min_agree
        rows, slots, agree = rows[ok], slots[ok], agree[ok]
        # Most similar verified candidate per record (lexsort: last key is primary).
        best = np.lexsort((-agree, rows))
        rows, slots = rows[best], slots[best]
        first = np.unique(rows, return_index=True)[1]
        for row, slot in zip(rows[first].tolist(), slots[first].tolist()):
            result[row] = self._ids[slot]
        unresolved[rows[first]] = False
        return unresolved

    def _insert(self, sig: np.ndarray, keys: np.ndarray, order: np.ndarray, kept: np.ndarray, ids: list) -> None:
        start = len(self._ids)
        self._signatures.append(sig[kept])
        self._ids.extend(ids[i] for i in np.flatnonzero(kept).tolist())
        kept_order = _restrict(order, kept)  # sorted order survives restriction
        slots = (start + kept_order).astype(np.int32)
        self._runs.add_sorted(np.take_along_axis(keys[:, kept], kept_order, 1), slots)


class _BatchResolution:
    """Decides which unresolved records of one batch duplicate an earlier record of it.

    Sequential by nature (whether record j is kept decides what a later record can
    match), so buckets are grouped with numpy first and the Python loop visits only
    records that share a bucket with an earlier record of the batch.
    """

    def __init__(self, sig: np.ndarray, keys: np.ndarray, order: np.ndarray, unresolved: np.ndarray, min_agree: int):
        self.kept = unresolved.copy()
        # (batch position, batch position of the earlier kept record it duplicates)
        self.duplicates: list[tuple[int, int]] = []
        self._positions = np.flatnonzero(unresolved)
        m = self._positions.size
        if m == 0:
            return
        self._sig = sig[self._positions]
        self._min_agree = min_agree
        self._order = _restrict(order, unresolved)  # (bands, m) local indices
        sorted_keys = np.take_along_axis(keys[:, self._positions], self._order, 1)
        position = np.arange(m)
        new_bucket = np.ones(sorted_keys.shape, bool)
        new_bucket[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
        # Sorted position where each record's bucket starts.
        self._bucket_start = np.maximum.accumulate(np.where(new_bucket, position, 0), axis=1)
        self._rank = np.empty_like(self._order)
        np.put_along_axis(self._rank, self._order, np.broadcast_to(position, self._order.shape), 1)
        self._first = np.take_along_axis(np.take_along_axis(self._order, self._bucket_start, 1), self._rank, 1)
        has_earlier = self._first < position
        rows = np.flatnonzero(has_earlier.any(axis=0))
        if rows.size:
            self._resolve(rows, has_earlier)

    def _resolve(self, rows: np.ndarray, has_earlier: np.ndarray) -> None:
        bands, cols = np.nonzero(has_earlier[:, rows])
        records = rows[cols]
        agree = np.count_nonzero(self._sig[records] == self._sig[self._first[bands, records]], axis=1)
        first_ok = np.zeros(has_earlier.shape, bool)
        first_ok[bands, records] = agree >= self._min_agree
        kept = np.ones(self._positions.size, bool)
        for i in rows.tolist():
            dup = None
            for band in np.flatnonzero(has_earlier[:, i]).tolist():
                j = int(self._first[band, i])
                if kept[j]:
                    # The bucket's first member is kept, so a sequential index would
                    # hold it; its verification was precomputed above.
                    if first_ok[band, i]:
                        dup = j
                        break
                    continue
                # Rare: the bucket's first member was a duplicate itself; a sequential
                # index would hold the bucket's earliest kept member instead.
                rank = self._rank[band, i]
                members = self._order[band, self._bucket_start[band, rank] : rank].tolist()
                j = next((k for k in members if kept[k]), None)
                if j is not None and np.count_nonzero(self._sig[i] == self._sig[j]) >= self._min_agree:
                    dup = j
                    break
            if dup is not None:
                kept[i] = False
                self.duplicates.append((int(self._positions[i]), int(self._positions[dup])))
        self.kept[self._positions[~kept]] = False
