"""FGSM in embedding space: adversarial training loss and adversarial text samples.

Both start from the gradient g of the model's language-model loss with respect to its
input embeddings e, and take the fast-gradient-sign step e' = e + ε·sign(g).

* Training (:func:`fgsm_embedding_loss`): the loss at e' is the adversarial term the
  training loop adds to the clean loss (Goodfellow et al. 2015; Miyato et al. 2017 for
  text embeddings).
* Samples (:func:`FgsmTextAttack`): e' lies between words, so each step is projected
  back to a real word, and only to a word that keeps the meaning: the in-context
  synonyms the synonym augmenter may use (same part of speech and inflection, never a
  name, pronoun, idiom or function word). Among a word's synonyms the one whose
  embedding lies nearest e' is taken; among the words, the ones whose swap raises the
  loss most to first order, (E[v] - e)·g (the HotFlip rank, as in textattack's
  WordSwapGradientBased, restricted to synonyms as in its synonym-constrained recipes).
  The child must then pass the same judge of meaning as synonym children
  (:class:`~deepfeed.core.augment.meaning.MeaningJudge`); swaps are dropped, weakest first,
  until it does. Unconstrained nearest-token projection turned "inactive" into "Active"
  and "petty" into "murders".

Adversarial texts are for robustness, on the input side: the augmentation pass
perturbs a pair's prompt and keeps its reference response (docs/augmentation.md).

Written here rather than taken from textattack: textattack 0.3.11 pulls in ~50 packages
(flair, boto3, language_tool, ...) and its gradient swap expects its own model wrapper
and word-level tokenisation, while we need the causal LM's own BPE tokens, our protected
spans and our lexicons; the method itself is a few tensor operations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from deepfeed.core.augment.contextual_synonyms import Skip, text_script

MAX_EPSILON = 0.5  # the product bound on the FGSM step (docs/augmentation.md)
_ANY_WORD = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]")  # what the modification rate counts (Chinese: characters)


def check_epsilon(epsilon: float) -> None:
    if not 0.0 < epsilon <= MAX_EPSILON:
        raise ValueError(f"epsilon must be in (0, {MAX_EPSILON}], got {epsilon}")


def _embedding_gradient(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    embeds = model.get_input_embeddings()(input_ids)
    probe = embeds.detach().requires_grad_(True)
    loss = model(inputs_embeds=probe, attention_mask=attention_mask, labels=labels).loss
    (grad,) = torch.autograd.grad(loss, probe)
    return embeds, grad, loss.detach()


def adversarial_embeddings(model, batch: dict[str, torch.Tensor], epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, e + ε·sign(∇_e loss)): the input embeddings and their FGSM step.

    Both stay differentiable in the embedding table (the step itself is a constant, as
    in FGSM training); padding positions are not moved. ``batch`` holds ``input_ids``,
    ``attention_mask`` and ``labels`` as :func:`deepfeed.core.train.modeling.collate` builds them.
    """
    check_epsilon(epsilon)
    mask = batch["attention_mask"]
    embeds, grad, _ = _embedding_gradient(model, batch["input_ids"], mask, batch["labels"])
    step = epsilon * grad.sign() * mask.unsqueeze(-1).to(grad.dtype)  # padding is not input
    return embeds, embeds + step


def fgsm_embedding_loss(model, batch: dict[str, torch.Tensor], epsilon: float) -> torch.Tensor:
    """The LM loss on input embeddings moved by ε·sign(∇ loss); differentiable in the
    model's parameters. Typical use:
    ``loss = clean_loss + adv_weight * fgsm_embedding_loss(model, batch, 0.05)``; the
    training loop (``TrainingConfig.fgsm_epsilon``) uses :func:`adversarial_embeddings`
    to run clean and perturbed rows in one pass.
    """
    _, perturbed = adversarial_embeddings(model, batch, epsilon)
    return model(inputs_embeds=perturbed, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


@dataclass(frozen=True)
class AdversarialEdit:
    text: str
    replaced: int
    loss_before: float
    loss_after: float
    swaps: tuple[tuple[str, str], ...]
    judge: str = "lexicon"
    meaning_score: float | None = None
    # (gain, start, end, word) of each swap, strongest first: what the judge's retries drop from.
    chosen: tuple = field(default=(), repr=False, compare=False)


class FgsmTextAttack:
    """Adversarial texts from FGSM steps projected to in-context synonyms.

    ``lexicons`` (``{"en": WordNetSynonyms, "zh": CilinSynonyms}``) say which words may
    change and into what; ``judge`` (a :class:`~deepfeed.core.augment.meaning.MeaningJudge`)
    checks the result. At most ``max_modification_rate`` of the text's words (Chinese:
    characters) change, but at least one where any word may change: short prompts
    ("Use a knife on it") are where a model is easiest to knock over.
    """

    def __init__(
        self,
        model,
        tokenizer,
        epsilon: float = 0.1,
        max_modification_rate: float = 0.15,
        protected: Callable[[str], list[tuple[int, int]]] | None = None,
        lexicons: dict | None = None,
        judge=None,
        max_length: int = 256,
    ):
        check_epsilon(epsilon)
        if not 0.0 < max_modification_rate <= 1.0:
            raise ValueError(f"max_modification_rate must be in (0, 1], got {max_modification_rate}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("FGSM samples need a fast tokenizer (character offsets of tokens)")
        if not lexicons:
            raise ValueError("FGSM samples need synonym lexicons: unconstrained token swaps change the meaning")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.epsilon = epsilon
        self.rate = max_modification_rate
        self.protected = protected or (lambda text: [])
        self.lexicons = lexicons
        self.judge = judge
        self.max_length = max_length

    def options(self, text: str) -> list[tuple[int, int, list[str]]]:
        script = text_script(text)
        lexicon = self.lexicons.get(script)
        return lexicon.options(text, self.protected(text)) if lexicon is not None else []

    def budget(self, text: str, eligible: int) -> int:
        return min(eligible, max(1, int(self.rate * len(_ANY_WORD.findall(text)))))

    def attack(self, texts: Sequence[str]) -> list[AdversarialEdit | Skip]:
        edits = [self._attack_one(text) for text in texts]
        return self._judged(texts, edits)

    def _embed(self, words: Sequence[str]) -> torch.Tensor:
        """Mean input embedding of each word's tokens (a word may span several BPE tokens)."""
        table = self.model.get_input_embeddings().weight.detach()
        rows = []
        for word in words:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"] or [self.tokenizer.unk_token_id or 0]
            rows.append(table[ids].mean(0))
        return torch.stack(rows)

    def _attack_one(self, text: str) -> AdversarialEdit | Skip:
        if not text.strip():
            return Skip("empty text")
        script = text_script(text)
        if script not in self.lexicons or self.lexicons[script] is None:
            if script in ("en", "zh"):
                return Skip(f"no synonym resource for {script} text")
            return Skip("no single-language text to attack")
        options = self.options(text)
        if not options:
            return Skip("no swappable word (names, idioms, function words, protected spans or no in-context synonym)")
        encoding = self.tokenizer(
            text, return_offsets_mapping=True, add_special_tokens=False, truncation=True, max_length=self.max_length
        )
        ids = encoding["input_ids"]
        if len(ids) < 2:
            return Skip("too short for a language-model loss")
        # Some byte-level tokenizers count a token's leading space into its span.
        offsets = [(a + (len(text[a:b]) - len(text[a:b].lstrip())), b) for a, b in encoding["offset_mapping"]]
        input_ids = torch.tensor([ids])
        mask = torch.ones_like(input_ids)
        embeds, grad, loss_before = _embedding_gradient(self.model, input_ids, mask, input_ids)
        proposals = []
        for a, b, candidates in options:
            positions = [i for i, (x, y) in enumerate(offsets) if x < b and a < y]
            if not positions:
                continue  # cut off by max_length
            e = embeds[0, positions].detach().mean(0)
            g = grad[0, positions].mean(0)
            stepped = e + self.epsilon * g.sign()
            rows = self._embed(candidates)
            nearest = int((rows - stepped).pow(2).sum(1).argmin())
            gain = float((rows[nearest] - e) @ g) * len(positions)
            proposals.append((gain, a, b, candidates[nearest]))
        budget = self.budget(text, len(proposals))
        chosen = sorted((p for p in proposals if p[0] > 0), reverse=True)[:budget]
        if not chosen:
            return Skip("no synonym swap raises the loss to first order")
        return self._edit(text, chosen, float(loss_before))

    def _edit(self, text: str, chosen: list, loss_before: float) -> AdversarialEdit:
        pieces, last, swaps = [], 0, []
        for _, a, b, word in sorted(chosen, key=lambda p: p[1]):
            pieces += [text[last:a], word]
            swaps.append((text[a:b], word))
            last = b
        pieces.append(text[last:])
        new = "".join(pieces)
        with torch.no_grad():
            ids = self.tokenizer(new, add_special_tokens=False, truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
            after = torch.tensor([ids])
            loss_after = float(self.model(input_ids=after, labels=after).loss)
        return AdversarialEdit(new, len(swaps), loss_before, loss_after, tuple(swaps), chosen=tuple(chosen))

    def _judged(self, texts: Sequence[str], edits: list) -> list[AdversarialEdit | Skip]:
        """The judge's verdict on every edit; a refused edit loses its weakest swap until
        it passes or has none left."""
        if self.judge is None:
            return edits
        pending = [i for i, e in enumerate(edits) if isinstance(e, AdversarialEdit)]
        while pending:
            verdicts = self.judge.judge(
                [texts[i] for i in pending],
                [edits[i].text for i in pending],
                [text_script(texts[i]) for i in pending],
                gate=False,
            )
            retry = []
            for i, verdict in zip(pending, verdicts):
                edit = edits[i]
                if verdict.keeps_meaning:
                    edits[i] = replace(edit, judge=verdict.judge, meaning_score=verdict.score)
                elif len(edit.chosen) > 1:
                    edits[i] = self._edit(texts[i], list(edit.chosen[:-1]), edit.loss_before)
                    retry.append(i)
                else:
                    edits[i] = Skip(f"no adversarial swap kept the meaning ({verdict.judge}: {verdict.reason})")
            pending = retry
        return edits
