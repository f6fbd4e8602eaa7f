"""FGSM in embedding space: adversarial training loss and adversarial text samples.

Both start from the gradient g of the model's language-model loss with respect to its
input embeddings e, and take the fast-gradient-sign step e' = e + ε·sign(g).

* Training (:func:`fgsm_embedding_loss`): the loss at e' is the adversarial term the
  training loop adds to the clean loss (Goodfellow et al. 2015; Miyato et al. 2017 for
  text embeddings).
* Samples (:func:`FgsmTextAttack`): e' lies between tokens, so each step is projected
  back to a real token: the nearest vocabulary embedding to e' other than the original,
  and among the eligible positions the ones whose swap raises the loss most to first
  order, (E[v] - e)·g (the HotFlip rank, which is what textattack's
  WordSwapGradientBased computes).

Written here rather than taken from textattack: textattack 0.3.11 pulls in ~50 packages
(flair, boto3, language_tool, ...) and its gradient swap expects its own model wrapper
and word-level tokenisation, while we need the causal LM's own BPE tokens, our protected
spans and a stop-word list; the method itself is a few tensor operations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deepfeed.core.contextual_synonyms import Skip
from deepfeed.core.zh_synonyms import ZH_STOP_WORDS

MAX_EPSILON = 0.5  # SPEC §3
_WORD = re.compile(r"[A-Za-z]{3,}|[\u4e00-\u9fff]+")
_ANY_WORD = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]")  # what the modification rate counts
_CLEAN_WORD = re.compile(r"(?: ?[A-Za-z]{3,}|[\u4e00-\u9fff]+)")


def check_epsilon(epsilon: float) -> None:
    if not 0.0 < epsilon <= MAX_EPSILON:
        raise ValueError(f"epsilon must be in (0, {MAX_EPSILON}] (SPEC §3), got {epsilon}")


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
    ``attention_mask`` and ``labels`` as :func:`deepfeed.core.modeling.collate` builds them.
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


class FgsmTextAttack:
    """Adversarial texts from FGSM steps projected to real tokens, under constraints.

    Only whole words (a token whose span is exactly an English word of 3+ letters, or
    Chinese characters) may change, never a stop word or anything inside a protected
    span; at most ``max_modification_rate`` of the text's words (Chinese: characters)
    change, rounded down, so a text too short for one swap is skipped. Replacement tokens are clean words in
    the same script with the same leading-space form.
    """

    def __init__(
        self,
        model,
        tokenizer,
        epsilon: float = 0.1,
        max_modification_rate: float = 0.15,
        protected: Callable[[str], list[tuple[int, int]]] | None = None,
        stop_words: frozenset[str] | None = None,
        max_length: int = 256,
    ):
        check_epsilon(epsilon)
        if not 0.0 < max_modification_rate <= 1.0:
            raise ValueError(f"max_modification_rate must be in (0, 1], got {max_modification_rate}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("FGSM samples need a fast tokenizer (character offsets of tokens)")
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.epsilon = epsilon
        self.rate = max_modification_rate
        self.protected = protected or (lambda text: [])
        self.stop_words = stop_words if stop_words is not None else frozenset(ENGLISH_STOP_WORDS) | ZH_STOP_WORDS
        self.max_length = max_length
        self._vocab = self._word_tokens()
        self._gathered: dict[str, torch.Tensor] = {}

    def _word_tokens(self) -> dict[str, torch.Tensor]:
        """Vocabulary ids by form: 'space' (" word"), 'bare' ("word"), 'zh'."""
        groups: dict[str, list[int]] = {"space": [], "bare": [], "zh": []}
        special = set(self.tokenizer.all_special_ids)
        for token_id in range(len(self.tokenizer)):
            if token_id in special:
                continue
            text = self.tokenizer.decode([token_id])
            if not _CLEAN_WORD.fullmatch(text) or text.strip().lower() in self.stop_words:
                continue
            groups["zh" if text[0] >= "\u4e00" else "space" if text[0] == " " else "bare"].append(token_id)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in groups.items()}

    def _rows(self, group: str) -> torch.Tensor:
        """Embedding rows of a vocabulary group, gathered once per attack object (the
        attack is built per model version, so the table does not change under it)."""
        if group not in self._gathered:
            self._gathered[group] = self.model.get_input_embeddings().weight.detach()[self._vocab[group]]
        return self._gathered[group]

    def _eligible(self, text: str, offsets: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, str]]:
        """(position, vocabulary group) of the tokens that may be swapped."""
        words = {m.span() for m in _WORD.finditer(text)}
        protected = self.protected(text)
        # Byte-level BPE may split one character over several tokens that share its
        # span; swapping one of them would leave the others dangling.
        shared = {span for span in offsets if offsets.count(span) > 1}
        out = []
        for pos, (a, b) in enumerate(offsets):
            if (a, b) in shared:
                continue
            word = text[a:b]
            whole = (a, b) in words or (word and _WORD.fullmatch(word) and word[0] >= "\u4e00")
            if not whole or word.lower() in self.stop_words or any(a < y and x < b for x, y in protected):
                continue
            form = self.tokenizer.decode([ids[pos]])
            group = "zh" if word[0] >= "\u4e00" else "space" if form.startswith(" ") else "bare"
            if len(self._vocab[group]):
                out.append((pos, group))
        return out

    def attack(self, texts: Sequence[str]) -> list[AdversarialEdit | Skip]:
        return [self._attack_one(text) for text in texts]

    def _attack_one(self, text: str) -> AdversarialEdit | Skip:
        if not text.strip():
            return Skip("empty text")
        encoding = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, truncation=True, max_length=self.max_length)
        ids = encoding["input_ids"]
        # Some byte-level tokenizers count a token's leading space into its span.
        offsets = [(a + (len(text[a:b]) - len(text[a:b].lstrip())), b) for a, b in encoding["offset_mapping"]]
        if len(ids) < 2:
            return Skip("too short for a language-model loss")
        eligible = self._eligible(text, offsets, ids)
        budget = min(len(eligible), int(self.rate * len(_ANY_WORD.findall(text))))
        if budget < 1:
            return Skip("no swappable word within the modification budget (stop words, protected spans)")
        input_ids = torch.tensor([ids])
        mask = torch.ones_like(input_ids)
        embeds, grad, loss_before = _embedding_gradient(self.model, input_ids, mask, input_ids)
        table = self.model.get_input_embeddings().weight.detach()
        proposals = []
        for pos, group in eligible:
            candidates, rows = self._vocab[group], self._rows(group)
            stepped = embeds[0, pos].detach() + self.epsilon * grad[0, pos].sign()
            distance = (rows - stepped).pow(2).sum(1)
            distance[candidates == ids[pos]] = float("inf")
            nearest = int(candidates[distance.argmin()])
            if nearest == ids[pos]:
                continue
            gain = float((table[nearest] - embeds[0, pos].detach()) @ grad[0, pos])
            proposals.append((gain, pos, nearest))
        chosen = sorted(p for p in sorted(proposals, reverse=True)[:budget] if p[0] > 0)
        if not chosen:
            return Skip("no swap raises the loss to first order")
        pieces, last, swaps = [], 0, []
        new_ids = list(ids)
        for _, pos, token in sorted(chosen, key=lambda p: p[1]):
            a, b = offsets[pos]
            word = self.tokenizer.decode([token]).strip()
            pieces += [text[last:a], word]
            swaps.append((text[a:b], word))
            new_ids[pos] = token
            last = b
        pieces.append(text[last:])
        with torch.no_grad():
            after = torch.tensor([new_ids])
            loss_after = float(self.model(input_ids=after, attention_mask=mask, labels=after).loss)
        return AdversarialEdit("".join(pieces), len(swaps), float(loss_before), loss_after, tuple(swaps))
