"""The MiniLM embedding summary: stable across processes, and it sees topic drift that
the cheap text features miss."""

import numpy as np

from deepfeed.core.data.embedding_summary import EmbeddingSummarizer, shared_summarizer
from deepfeed.core.loop.drift import ks_drift, text_features
from deepfeed.core.loop.inference_log import prompt_record

COOKING = [
    "How long should I bake the bread {}?",
    "What spice goes with roast lamb {}?",
    "Can I freeze the soup for {} days?",
    "How do I keep the pasta from sticking {}?",
]
# Same lengths, word counts, digits and punctuation as COOKING: only the topic differs.
TAXES = [
    "How long should I keep tax files {}?",
    "What form goes with VAT due now {}?",
    "Can I defer the levies for {} days?",
    "How do I get the refunds from revenue {}?",
]


def _prompts(templates, n, offset=0):
    return [templates[i % len(templates)].format(i + offset) for i in range(n)]


def test_projection_is_the_same_in_every_process():
    summarizer = shared_summarizer()
    again = EmbeddingSummarizer(encoder=summarizer.encoder)
    assert np.array_equal(summarizer.projection, again.projection)
    one = summarizer.one("Where is the station?")
    assert list(one) == [f"embedding_{i}" for i in range(8)]
    assert one == again.one("Where is the station?")
    assert all(-1.0 <= v <= 1.0 for v in one.values())  # cosines with unit directions


def test_topic_drift_shows_in_the_embedding_summary_not_in_text_features():
    summarizer = shared_summarizer()
    reference, current = _prompts(COOKING, 80), _prompts(TAXES, 80)
    lexical = ks_drift(text_features(reference), text_features(current))
    embedded = ks_drift(summarizer.features(reference), summarizer.features(current))
    assert not lexical.alert, lexical.reason
    assert embedded.alert and len(embedded.drifted) >= 3, embedded.reason
    same_topic = ks_drift(summarizer.features(reference), summarizer.features(_prompts(COOKING[1:] + COOKING[:1], 80)))
    assert not same_topic.alert, same_topic.reason


def test_prompt_record_summarizes_the_scrubbed_prompt():
    summarizer = shared_summarizer()
    record = prompt_record("Mail me at jane.doe@example.com about the tax return", summarizer)
    assert "jane.doe" not in record["prompt"]
    assert record["features"]["embedding_0"] == summarizer.one(record["prompt"])["embedding_0"]
    assert "embedding_0" not in prompt_record("no summarizer")["features"]
