"""Augmentation quality: does a child keep its parent's meaning, and is it still fluent?

    PYTHONPATH=. .venv/bin/python benchmarks/augmentation_quality.py [--sentences 200] [--fgsm 12] [--out quality.json]
    PYTHONPATH=. .venv/bin/python benchmarks/augmentation_quality.py --review en --answers 0:400 --seed 21

``--review LANG`` only prints every distinct synonym child the shipped settings make of
the chosen corpus answers, the changed words in context and the base LM's change beside
each, for a person to label: the labelled pairs measure the judge, a review measures
what training would see (how the English check's bar was chosen, docs/augmentation.md).

1. The judge of meaning on the hand-labelled pairs (deepfeed/data/meaning_pairs_{en,zh}.tsv:
   each parent with one meaning-preserving and one meaning-changing child): precision
   (share of kept children that keep the meaning), recall (share of meaning-preserving
   children kept) and the share of meaning-changing children let through, for MiniLM
   alone (the old filter), the base LM alone, the lexical gate alone, and the default
   judge (gate + MiniLM or LM by [UNK] share). Goal: at most 5% of kept children change
   the meaning (precision >= 0.95).
2. Children of every technique made from chatterbot-corpus answers (English and
   Chinese) with the shipped settings, each scored by the judge of meaning and by a
   grammar proxy: the base LM's per-token perplexity of the child over the parent's
   (> --max-ppl-ratio flags it). Prints the share flagged per technique and language.
3. FGSM on the prompt vs on the response: the same attack on both sides of the same
   pairs; the response-side children are what training would learn to produce.
4. Speed of the synonym pass with its judge (answers/s and sentences/s, per language: an
   answer may hold several sentences), against the judge scoring whole texts in fp32 as it
   did before (same answers, same run).
5. The judge's windows against whole texts: the LM's log-probability change scored on
   windows around the changes (the default) and on the whole texts in fp32, on the
   labelled pairs and on synonym variants of corpus answers (before the judge picks any):
   correlation, agreement of the keep/refuse decision at ``lm_threshold``, and the tokens
   each fed to the model.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfeed.core.augment.contextual_synonyms import Skip  # noqa: E402
from deepfeed.core.augment.lm_scoring import CausalLMRanker  # noqa: E402
from deepfeed.core.augment.meaning import MeaningJudge, precision_recall  # noqa: E402
from deepfeed.core.augment.setup import AugmentSettings, build_augmenters  # noqa: E402
from deepfeed.core.augment.structural import split_sentences, structural_variant  # noqa: E402
from deepfeed.core.platform.home import ensure_smollm2, package_dir  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "deepfeed" / "data"


def labelled(lang: str) -> list[list[str]]:
    rows = [
        line.split("\t")
        for line in (DATA / f"meaning_pairs_{lang}.tsv").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    return [r for r in rows if len(r) == 3]


def corpus_pairs(folder: str, count: int) -> list[tuple[str, str]]:
    out = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / folder).glob("*.yml")):
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations", []):
            for prompt, response in zip(conversation, conversation[1:]):
                if (
                    isinstance(prompt, str)
                    and isinstance(response, str)
                    and len(response) >= (8 if folder == "chinese" else 20)
                ):
                    out.append((prompt, response))
    random.Random(0).shuffle(out)
    return out[:count]


def per_token_nll(lm: CausalLMRanker, texts: list[str]) -> np.ndarray:
    counts = np.array([max(1, len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts])
    return -lm.log_probs(texts) / counts


def judge_table(judge: MeaningJudge, lm: CausalLMRanker) -> dict:
    out = {}
    print("\n1. The judge of meaning on the labelled pairs (kept = judged meaning-preserving)")
    print(f"{'lang':<5}{'judge':<34}{'precision':>10}{'recall':>8}{'changed kept':>14}{'kept':>6}")
    for lang in ("en", "zh"):
        rows = labelled(lang)
        parents, same, changed = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        n = len(rows)
        sims = judge.encoder.similarity(parents * 2, same + changed)
        scores = lm.log_probs(parents + same + changed)
        delta = np.concatenate([scores[n : 2 * n] - scores[:n], scores[2 * n :] - scores[:n]])
        gate = np.array([judge.reachable(p, c, lang) is not None for p, c in zip(parents * 2, same + changed)])
        default = np.array([v.keeps_meaning for v in judge.judge(parents * 2, same + changed, [lang] * 2 * n)])
        variants = {
            f"MiniLM cosine >= {judge.similarity_threshold}": sims >= judge.similarity_threshold,
            f"LM log-prob change >= {judge.lm_threshold}": delta >= judge.lm_threshold,
            "lexical gate alone": gate,
            "default (gate + MiniLM/LM by [UNK] share)": default,
        }
        out[lang] = {}
        for name, keep in variants.items():
            pr = precision_recall(keep[:n], keep[n:])
            out[lang][name] = pr
            print(
                f"{lang:<5}{name:<34}{pr['precision']:10.3f}{pr['recall']:8.3f}{pr['changed_kept']:14.3f}{pr['kept']:6d}"
            )
        print(
            f"{lang:<5}MiniLM [UNK] share of the parents: {np.mean([judge.unk_share(p) for p in parents]):.3f}; "
            f"default judge scored with: {sorted({judge.scorer(p) for p in parents})}"
        )
    return out


def children(
    augmenters, pairs: list[tuple[str, str]], lang: str, fgsm_count: int, rng: random.Random
) -> dict[str, list]:
    """technique -> [(parent, child, script, gated)] made with the shipped settings."""
    responses = [r for _, r in pairs]
    out: dict[str, list] = {"synonym": [], "structural": [], "fgsm_prompt": [], "fgsm_response": []}
    for text, edit in zip(responses, augmenters.synonyms.replace_batch(responses, rng)):
        if not isinstance(edit, Skip):
            out["synonym"].append((text, edit.text))
    for text in responses:
        outcome = structural_variant(text, rng)
        if not isinstance(outcome, str):
            out["structural"].append((text, outcome[0]))
    for side, texts in (("fgsm_prompt", [p for p, _ in pairs[:fgsm_count]]), ("fgsm_response", responses[:fgsm_count])):
        for text, edit in zip(texts, augmenters.fgsm.attack(texts)):
            if not isinstance(edit, Skip):
                out[side].append((text, edit.text))
    return out


def window_agreement(augmenters, whole: CausalLMRanker, threshold: float, sentences: int) -> dict:
    lm = augmenters.judge.lm
    print(f"\n5. The judge's windows vs whole texts (decision at {threshold} nats)")
    print(f"{'lang':<5}{'pairs':<11}{'n':>5}{'r':>7}{'agree':>8}{'mean |diff|':>13}{'tokens':>8}{'whole':>8}")
    out = {}
    for lang, folder in (("en", "english"), ("zh", "chinese")):
        rng, parents, kids = random.Random(0), [], []
        for _, response in corpus_pairs(folder, sentences):
            script = augmenters.synonyms.script(response)
            plan = script if isinstance(script, Skip) else augmenters.synonyms._variants(response, script, rng)
            for child, _ in [] if isinstance(plan, Skip) else plan:
                parents.append(response)
                kids.append(child)
        rows = labelled(lang)
        sets = {
            "labelled": (
                [p for p, _, _ in rows for _ in (0, 1)],
                [c for _, same, changed in rows for c in (same, changed)],
            ),
            "variants": (parents, kids),
        }
        for name, (pp, cc) in sets.items():
            lm.tokens_fed = whole.tokens_fed = 0
            lm.window_cache.clear()
            whole.window_cache.clear()
            window, exact = lm.log_prob_changes(pp, cc), whole.log_prob_changes(pp, cc)
            row = {
                "pairs": len(pp),
                "correlation": float(np.corrcoef(window, exact)[0, 1]),
                "decision_agreement": float(np.mean((window >= threshold) == (exact >= threshold))),
                "mean_abs_difference": float(np.mean(np.abs(window - exact))),
                "tokens_windows": lm.tokens_fed,
                "tokens_whole": whole.tokens_fed,
            }
            out[f"{lang} {name}"] = row
            print(
                f"{lang:<5}{name:<11}{len(pp):5d}{row['correlation']:7.3f}{row['decision_agreement']:8.1%}"
                f"{row['mean_abs_difference']:13.2f}{lm.tokens_fed:8d}{whole.tokens_fed:8d}"
            )
    return out


def review(lang: str, answers: str, seed: int) -> None:
    import difflib

    start, _, end = answers.partition(":")
    settings = AugmentSettings(synonym_ratio=1.0, fgsm_ratio=0.0, structural_ratio=0.0, synonym_languages=lang)
    augmenters = build_augmenters(settings, ensure_smollm2())
    folder = "english" if lang == "en" else "chinese"
    responses = [r for _, r in corpus_pairs(folder, 10**6)[int(start or 0) : int(end) if end else None]]
    made = {}
    for text, edit in zip(responses, augmenters.synonyms.replace_batch(responses, random.Random(seed))):
        if not isinstance(edit, Skip):
            made.setdefault((text, edit.text), None)
    pairs = list(made)
    changes = augmenters.judge.lm.log_prob_changes([p for p, _ in pairs], [c for _, c in pairs]) if pairs else []
    split = (lambda t: t.split()) if lang == "en" else list
    glue = " " if lang == "en" else ""
    print(f"{len(responses)} answers, {len(pairs)} distinct synonym children (LM change in nats, then the edits)")
    for i, ((parent, child), change) in enumerate(zip(pairs, changes)):
        a, b = split(parent), split(child)
        edits = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
            if op != "equal":
                before, after = glue.join(a[max(0, i1 - 4) : i1]), glue.join(a[i2 : i2 + 3])
                edits.append(f"{before} [{glue.join(a[i1:i2])} -> {glue.join(b[j1:j2])}] {after}")
        print(f"{i:4d} {float(change):7.2f}  " + " | ".join(edits))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--sentences", type=int, default=200, help="answers per language for the synonym and structural children"
    )
    parser.add_argument("--fgsm", type=int, default=12, help="pairs per language attacked on each side")
    parser.add_argument(
        "--max-ppl-ratio",
        type=float,
        default=1.5,
        help="grammar proxy: child/parent per-token perplexity above this is flagged",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--review", choices=("en", "zh"), help="only print synonym children to label by hand")
    parser.add_argument("--answers", default="0:400", help="with --review: slice of the shuffled corpus answers")
    parser.add_argument("--seed", type=int, default=21, help="with --review: seed of the replacer")
    args = parser.parse_args()
    if args.review:
        review(args.review, args.answers, args.seed)
        return
    started = time.time()
    model_path = ensure_smollm2()
    # Chinese synonyms are off by default (synonym_languages); they are measured here to show why.
    settings = AugmentSettings(synonym_ratio=1.0, fgsm_ratio=1.0, structural_ratio=1.0, synonym_languages="en,zh")
    augmenters = build_augmenters(settings, model_path)
    judge = augmenters.judge
    lm = judge.lm
    report: dict = {"labelled": judge_table(judge, lm)}

    print(
        "\n2. Children of the shipped settings, scored "
        f"(flagged: the judge refuses it, or perplexity ratio > {args.max_ppl_ratio})"
    )
    print(
        f"{'lang':<5}{'technique':<15}{'children':>9}{'meaning flagged':>17}{'ppl ratio (median)':>20}"
        f"{'ppl flagged':>13}{'any flagged':>13}"
    )
    report["children"] = {}
    # The fp32 weights FGSM attacks; the judge scores with their bf16 copy where bf16 runs natively.
    whole = CausalLMRanker(augmenters.fgsm.model, lm.tokenizer, precision="fp32", context=10**6, after=10**6)
    speed = {}
    for lang, folder in (("en", "english"), ("zh", "chinese")):
        pairs = corpus_pairs(folder, args.sentences)
        # Warm the lexicon's caches first, so neither timed pass profits from the other.
        for _, response in pairs:
            augmenters.synonyms.lexicons[lang].options(response)
        # An answer may hold several sentences (Chinese ones 1.2-1.5 on average); the lines
        # of a fenced code block are not sentences.
        sentences = sum(len(split_sentences(re.sub(r"```.*?```", " ", r, flags=re.S))) for _, r in pairs)
        lm.tokens_fed = 0
        lm.window_cache.clear()
        augmenters.synonyms.encoder.clear_cache()  # MiniLM keeps embeddings per text
        t0 = time.time()
        augmenters.synonyms.replace_batch([r for _, r in pairs], random.Random(1))
        seconds = time.time() - t0
        speed[lang] = {
            "answers_per_second": len(pairs) / seconds,
            "sentences_per_second": sentences / seconds,
            "lm_tokens": lm.tokens_fed,
        }
        # Before: the judge's LM scored whole texts in fp32 (a window wider than any text).
        fast = augmenters.synonyms.judge.lm
        augmenters.synonyms.judge.lm = whole
        whole.tokens_fed = 0
        augmenters.synonyms.encoder.clear_cache()
        t0 = time.time()
        augmenters.synonyms.replace_batch([r for _, r in pairs], random.Random(1))
        seconds = time.time() - t0
        speed[lang + " whole-text fp32 judge (before)"] = {
            "answers_per_second": len(pairs) / seconds,
            "sentences_per_second": sentences / seconds,
            "lm_tokens": whole.tokens_fed,
        }
        augmenters.synonyms.judge.lm = fast
        made = children(augmenters, pairs, lang, args.fgsm, random.Random(0))
        report["children"][lang] = {}
        for technique, rows in made.items():
            if not rows:
                print(f"{lang:<5}{technique:<15}{0:9d}")
                continue
            parents, kids = [p for p, _ in rows], [c for _, c in rows]
            gate = technique.startswith("synonym") or technique.startswith("fgsm")
            verdicts = judge.judge(parents, kids, [lang] * len(rows), gate=gate)
            meaning = np.array([not v.keeps_meaning for v in verdicts])
            nll = per_token_nll(lm, parents + kids)
            ratio = np.exp(nll[len(rows) :] - nll[: len(rows)])
            fluency = ratio > args.max_ppl_ratio
            stats = {
                "children": len(rows),
                "meaning_flagged": float(meaning.mean()),
                "ppl_ratio_median": float(np.median(ratio)),
                "ppl_flagged": float(fluency.mean()),
                "any_flagged": float((meaning | fluency).mean()),
                "examples": [[p, c] for p, c in rows[:3]],
            }
            report["children"][lang][technique] = stats
            print(
                f"{lang:<5}{technique:<15}{len(rows):9d}{stats['meaning_flagged']:17.1%}{stats['ppl_ratio_median']:20.3f}"
                f"{stats['ppl_flagged']:13.1%}{stats['any_flagged']:13.1%}"
            )
    print("\n3. FGSM side: fgsm_response children are what training would learn to produce; their perplexity ratio is")
    print(
        "   how much less likely under the base model the target becomes "
        "(fgsm_prompt children leave the target as it was)."
    )
    print("\n4. Synonym pass with its judge (answers/s, sentences/s, tokens fed to the LM judge):")
    for name, row in speed.items():
        print(f"   {name:<40}{row['answers_per_second']:8.1f}{row['sentences_per_second']:8.1f}{row['lm_tokens']:10d}")
    print(
        f"   judge LM precision: {lm.precision} ({next(lm.model.parameters()).dtype} weights); "
        f"window: {lm.context} tokens before, {lm.after} after the change"
    )
    report["synonym_sentences_per_second"] = speed
    report["windows_vs_whole_texts"] = window_agreement(augmenters, whole, settings.lm_threshold, args.sentences)
    print(f"\n({time.time() - started:.0f} s in all)")
    if args.out:
        args.out.write_text(
            json.dumps(
                report,
                indent=2,
                ensure_ascii=False,
                default=lambda o: None if isinstance(o, float) and math.isnan(o) else o,
            )
        )


if __name__ == "__main__":
    main()
