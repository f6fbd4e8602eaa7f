"""The "embedding summary" prompt feature: a few numbers that move when what users ask
about moves, even when length and script do not.

Each (scrubbed) prompt is embedded with the bundled MiniLM encoder and the unit vector is
projected onto ``dims`` fixed random directions (Johnson–Lindenstrauss: distances and
cluster structure survive). Why a projection and not the 384-d embedding: the log stays
small, the drift test runs ``dims`` KS tests under the Holm correction instead of 384,
and eight numbers say far less about the prompt's wording than a full embedding, which
inversion attacks can partly read back. The directions come from a seeded PCG64
generator, so the server and the sensor project identically on every machine.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

PROJECTION_SEED = 20_260_401
DEFAULT_DIMS = 8


def embedding_feature_names(dims: int = DEFAULT_DIMS) -> tuple[str, ...]:
    return tuple(f"embedding_{i}" for i in range(dims))


class EmbeddingSummarizer:
    def __init__(self, encoder=None, dims: int = DEFAULT_DIMS):
        if dims < 1:
            raise ValueError(f"embedding summary dims must be >= 1, got {dims}")
        if encoder is None:
            from deepfeed.core.platform.encoders import SentenceEncoder

            encoder = SentenceEncoder(batch_size=32)
        self.encoder = encoder
        self.names = embedding_feature_names(dims)
        hidden = encoder.model.config.hidden_size
        directions = np.random.default_rng(PROJECTION_SEED).standard_normal((hidden, dims))
        # Unit columns: each feature is the cosine of the prompt with one fixed direction.
        self.projection = (directions / np.linalg.norm(directions, axis=0)).astype(np.float32)
        # The server's worker threads share one summarizer; the encoder's LRU cache and
        # thread tuner are not thread-safe, and a ~10 ms encode is cheap to serialize.
        self._lock = threading.Lock()

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = ["" if t is None else str(t) for t in texts]
        if not texts:
            return {name: np.zeros(0) for name in self.names}
        with self._lock:
            projected = self.encoder.encode(texts) @ self.projection
        return {name: projected[:, i].astype(float) for i, name in enumerate(self.names)}

    def one(self, text: str) -> dict[str, float]:
        return {name: float(values[0]) for name, values in self.features([text]).items()}


_SHARED: dict[int, EmbeddingSummarizer] = {}


def shared_summarizer(dims: int = DEFAULT_DIMS) -> EmbeddingSummarizer:
    """One encoder per process: the server and the sensor each load MiniLM once."""
    if dims not in _SHARED:
        _SHARED[dims] = EmbeddingSummarizer(dims=dims)
    return _SHARED[dims]
