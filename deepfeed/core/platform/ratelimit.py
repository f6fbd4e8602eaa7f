"""Per-key token buckets for the inference server, in process.

Written here rather than taken from a library: the installed stack has none (slowapi would
add a dependency and a Redis-shaped abstraction for what is a dict and a lock), and each
uvicorn worker keeps its own buckets, so with N workers a key gets at most N times the
rate; docs/security.md says so and points at the proxy for a global limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` requests a second on average, bursts of up to ``burst``, per key."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate, self.burst, self._clock, self._max_keys = float(rate), int(burst), clock, max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0.0 when a request of ``key`` may go ahead now (a token is spent), else the
        seconds until one may."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket  # most recently used last
            # A flood of fresh keys (anonymous clients by address) must not grow memory
            # without bound; the least recently used bucket is the one dropped, and a dropped
            # bucket comes back full, so its key only ever gains from this.
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
