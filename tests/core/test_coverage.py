import numpy as np

from deepfeed.core.data.coverage import (
    CoverageConfig,
    MiniLMEncoder,
    embedding_outliers,
    long_tail_reasons,
    share_by_tag,
)


def _rec(text, tags):
    return {"text": text, "tags": tags}


def test_rare_tags_and_shares_per_tag():
    records = [_rec(f"common {i}", ["billing"]) for i in range(98)] + [
        _rec("rare one", ["billing", "fraud"]),
        _rec("no tag", []),
    ]
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
    emb = encoder.encode(
        [
            "How do I lower my blood pressure?",
            "What lowers high blood pressure?",
            "The stock market fell sharply today.",
        ]
    )
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_chunked_outliers_equal_the_whole_array_and_removed_rows_leave_the_centroids():
    from deepfeed.core.data.coverage import CentroidSums, domain_tags, embedding_outliers_chunked

    rng = np.random.default_rng(1)
    tags = [["a"], ["b"], ["a", "b"], ["c"], []]
    records = [_rec(str(i), tags[i % 5] if i % 50 else ["tiny"]) for i in range(300)]
    emb = rng.standard_normal((300, 8)) + np.where(np.arange(300)[:, None] % 5 == 0, 1.5, -0.5)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)  # as the streamed run stores them
    whole = embedding_outliers(records, emb.astype(np.float32), CoverageConfig())
    tag_lists = [tuple(domain_tags(r)) for r in records]
    for size in (1, 7, 64, 300):
        chunked = embedding_outliers_chunked(
            tag_lists, lambda size=size: (emb[i : i + size] for i in range(0, 300, size)), CoverageConfig()
        )
        assert (chunked == whole).all()
    assert whole.any() and not whole.all()
    # Sums over all rows, minus the rows taken out afterwards = sums over the rest.
    keep = np.arange(300) % 7 != 3
    sums = CentroidSums()
    sums.add(tag_lists, emb)
    sums.add([t for t, k in zip(tag_lists, keep) if not k], emb[~keep], sign=-1.0)
    rest = [t for t, k in zip(tag_lists, keep) if k]
    streamed = embedding_outliers_chunked(rest, lambda: [emb[keep]], CoverageConfig(), sums=sums)
    assert (
        streamed
        == embedding_outliers([r for r, k in zip(records, keep) if k], emb[keep].astype(np.float32), CoverageConfig())
    ).all()
