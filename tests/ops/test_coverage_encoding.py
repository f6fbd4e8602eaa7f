"""The faster coverage encoder gives the embeddings the plain one did."""

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from deepfeed.core.data.coverage import MiniLMEncoder, minilm_path

TEXTS = [
    "Hypertension is treated with ACE inhibitors.",
    "发热三天，咳嗽。",
    "ok",
    "A much longer record about type 2 diabetes, its diet, exercise and metformin dosing schedule.",
    "ok",
    "Hypertension is treated with ACE inhibitors.",
]


def _plain(texts):
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path()).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_sorted_batched_encoding_matches_plain_mean_pooling():
    expected = _plain(TEXTS)
    fp32 = MiniLMEncoder(precision="fp32", batch_size=2).encode(TEXTS)
    np.testing.assert_allclose(fp32, expected, atol=1e-5)
    default = MiniLMEncoder().encode(TEXTS)  # bf16 where the CPU has it
    assert default.shape == (len(TEXTS), 384)
    assert np.min((default * expected).sum(axis=1)) > 0.99
    assert MiniLMEncoder().encode([]).shape == (0, 384)
