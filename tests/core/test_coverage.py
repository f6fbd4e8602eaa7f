import numpy as np

from deepfeed.core.coverage import CoverageConfig, MiniLMEncoder, embedding_outliers, long_tail_reasons, share_by_tag


def _rec(text, tags):
    return {"text": text, "tags": tags}


def test_rare_tags_and_shares_per_tag():
    records = [_rec(f"common {i}", ["billing"]) for i in range(98)] + [_rec("rare one", ["billing", "fraud"]), _rec("no tag", [])]
    reasons = long_tail_reasons(records, None, CoverageConfig(rare_tag_share=0.02))
    assert reasons[98] == "rare tag: fraud" and reasons.count(None) == 99
    shares = share_by_tag(records, reasons)
    assert shares["fraud"] == {"records": 1, "long_tail": 1, "share": 1.0}
    assert shares["billing"]["long_tail"] == 1 and shares["untagged"]["records"] == 1


def test_embedding_outliers_are_found_per_tag():
    rng = np.random.default_rng(0)
    direction = np.ones(8) / np.sqrt(8)
    emb = direction + 0.05 * rng.standard_normal((40, 8))
    emb[7] = -direction  # far from its tag's centroid
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    records = [_rec(str(i), ["a"]) for i in range(40)]
    mask = embedding_outliers(records, emb, CoverageConfig())
    assert mask[7] and mask.sum() <= 6  # the far one, and only the tail of the rest


def test_minilm_embeddings_separate_topics():
    encoder = MiniLMEncoder()
    emb = encoder.encode(["How do I lower my blood pressure?", "What lowers high blood pressure?", "The stock market fell sharply today."])
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
