"""Log-probabilities of texts, and of the change between a text and its child, under a causal LM."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

# One packed row: the tokens every branch shares (``tokens[:first]`` of each), then each
# branch's own tokens; a branch's score is the log-probability of its tokens[first:].
Row = tuple[int, tuple[tuple[int, ...], ...]]


class CausalLMRanker:
    """Sentence log-probabilities under a causal LM, in padded batches.

    :meth:`log_probs` scores whole texts: the sum of the token log-probabilities, each
    given everything to its left, starting after the BOS (or EOS) token so the first
    word is scored too. A sum, not a mean: it is the probability of the string, so
    variants of one sentence that tokenise to different lengths are compared on the same
    footing.

    :meth:`log_prob_changes` is what the judge of meaning uses: child minus parent, scored
    only on windows around the tokens that differ (``context`` tokens of left context,
    the changed tokens, ``after`` tokens of the common tail). The common head contributes
    exactly the same log-probability to both texts and cancels; far tail tokens change
    little once a few tokens have followed the edit. Changes far apart get a window each
    (the change of the pair is their sum): one window spanning both would feed the
    common stretch between them to both branches. Windows save most on long texts and
    least on short Chinese ones; their agreement with the whole-text change, and the
    tokens each feeds, are measured in docs/augmentation.md.

    Parent and child windows share their left context, so they go through the model as
    one packed row: the context once, then the parent's tokens, then the child's, with a
    block attention mask (each branch sees the context and itself) and position ids that
    restart for the child. The scores are those of two separate windows
    (``tests/core/test_lm_scoring.py``); the context is fed once instead of twice.

    ``precision``: "fp32", "bf16" or "auto" (bf16 where oneDNN supports it on this CPU,
    else fp32). bf16 runs a bf16 model as it is, and an fp32 one under autocast (matmuls
    in bfloat16, at the cost of casting every weight on every call: see
    :func:`scoring_model`). ``tokens_fed`` counts the tokens (padding excluded) given to
    the model, which is what a call costs.
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        batch_tokens: int = 512,
        max_length: int = 256,
        threads: int | None = None,
        precision: str = "auto",
        context: int = 16,
        after: int = 8,
        cache_size: int = 4096,
    ):
        import torch

        from deepfeed.core.platform.encoders import PRECISIONS, ThreadTuner, onednn_bf16

        if batch_size < 1 or batch_tokens < 1:
            raise ValueError(f"batch_size and batch_tokens must be at least 1, got {batch_size} and {batch_tokens}")
        if precision not in PRECISIONS or precision == "int8":
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        if context < 1 or after < 0:
            raise ValueError(f"context must be >= 1 and after >= 0, got {context} and {after}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.precision = ("bf16" if onednn_bf16() else "fp32") if precision == "auto" else precision
        weights = next(model.parameters()).dtype
        if weights not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the ranking LM's weights must be float32 or bfloat16, got {weights}")
        if weights == torch.bfloat16 and self.precision == "fp32":
            raise ValueError("precision 'fp32' needs float32 weights; this model's are bfloat16")
        self.autocast = self.precision == "bf16" and weights == torch.float32
        self.context = context
        self.after = after
        self.cache_size = cache_size
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("the ranking LM's tokenizer has neither a BOS nor an EOS token to start a sentence with")
        self.start = start
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
        # Busy cores make two OpenMP threads slower than one, for the LM as for the encoder.
        self.tuner = ThreadTuner(torch.get_num_threads(), fixed=threads)
        self.tokens_fed = 0
        # (parent window, child window) -> the change: a pair recurs for every variant
        # that makes the same swap, in this call and in the judge's later rounds.
        self.window_cache: OrderedDict[Row, float] = OrderedDict()

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length - 1)[
            "input_ids"
        ]

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        """Log-probability of each whole text (after the start token)."""
        rows = [(1, ((self.start, *ids),)) for ids in self._ids(texts)]
        return np.array([branches[0] for branches in self._score(rows)], dtype=np.float64)

    def log_prob_changes(self, parents: Sequence[str], children: Sequence[str]) -> np.ndarray:
        """log p(child) - log p(parent) of each pair, scored on the windows around the changes."""
        if len(parents) != len(children):
            raise ValueError(f"{len(parents)} parents but {len(children)} children")
        unique = list(dict.fromkeys([*parents, *children]))
        ids = dict(zip(unique, self._ids(unique)))
        windows = [self._windows_of(ids[p], ids[c]) for p, c in zip(parents, children)]
        needed = list(dict.fromkeys(row for rows in windows for row in rows if row not in self.window_cache))
        for row, (parent, child) in zip(needed, self._score(needed)):
            self.window_cache[row] = child - parent
        out = np.array([sum(self.window_cache[row] for row in rows) for rows in windows], dtype=np.float64)
        while len(self.window_cache) > self.cache_size:
            self.window_cache.popitem(last=False)
        return out

    def _windows_of(self, parent: list[int], child: list[int]) -> list[Row]:
        """One packed (parent window, child window) row per cluster of changes; none when
        the token sequences are equal."""
        from difflib import SequenceMatcher

        opcodes = SequenceMatcher(None, parent, child, autojunk=False).get_opcodes()
        clusters: list[list[int]] = []
        for _, i1, i2, j1, j2 in (op for op in opcodes if op[0] != "equal"):
            # Two changes share a window when the common stretch between them is at most
            # context + after tokens: the second window's context must be common to
            # parent and child, and splitting at shorter stretches saved 6% of the tokens
            # on Chinese variants but moved the decision on 2% more of them.
            if clusters and i1 - clusters[-1][1] <= self.context + self.after:
                clusters[-1][1], clusters[-1][3] = i2, j2
            else:
                clusters.append([i1, i2, j1, j2])
        rows = []
        for i1, i2, j1, j2 in clusters:
            # Only the first cluster can start within ``context`` of the text's start, and
            # left of every cluster parent and child agree for at least ``context`` tokens:
            # the shared left context of the row.
            begin = max(0, i1 - self.context)
            prefix = [self.start] if begin == 0 else []
            shared = prefix + parent[begin:i1]
            rows.append(
                (
                    len(shared),
                    (tuple(shared + parent[i1 : i2 + self.after]), tuple(shared + child[j1 : j2 + self.after])),
                )
            )
        return rows

    def _score(self, rows: Sequence[Row]) -> list[list[float]]:
        """For each packed row, the log-probability of each branch's tokens[first:] given
        the tokens before it in that branch; ``first >= 1``."""
        import torch

        out: list[list[float]] = [[] for _ in rows]
        order = sorted(range(len(rows)), key=lambda i: _row_length(rows[i]))  # little padding per batch
        head = self.model.get_output_embeddings()
        # The vocabulary projection of the scored positions only: the base model's hidden
        # states, then the LM head on the rows that are scored (a sixth of SmolLM2's
        # weights would otherwise run on every context and padding position).
        split = head is not None and getattr(self.model, "base_model", self.model) is not self.model
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
            for batch in self._batches(order, rows):
                packed = _Packed([rows[i] for i in batch], self.pad)
                self.tokens_fed += packed.real_tokens

                def forward(packed=packed):
                    inputs = {
                        "input_ids": packed.tokens,
                        "attention_mask": packed.mask,
                        "position_ids": packed.positions,
                    }
                    if split:
                        hidden = self.model.base_model(**inputs).last_hidden_state
                        return head(hidden[packed.row, packed.predictor])
                    return self.model(**inputs).logits[packed.row, packed.predictor]

                logits = self.tuner.run(forward, packed.real_tokens)
                # The log-softmax of the target only, in one fused pass over the logits'
                # own dtype. Widening bf16 logits to fp32 first made this step 9x slower
                # (12% of the judge's time); the bf16 result is off by at most 0.07 nats a
                # token, well inside what bf16 matmuls already move the score.
                with torch.autocast("cpu", enabled=False):
                    picked = -torch.nn.functional.cross_entropy(logits, packed.targets, reduction="none").double()
                sums = torch.zeros(packed.branches, dtype=torch.float64).index_add_(0, packed.branch, picked)
                sums = sums.tolist()
                for i, (start, count) in zip(batch, packed.branch_slices):
                    out[i] = sums[start : start + count]
        return out

    def _batches(self, order: list[int], rows: Sequence[Row]) -> list[list[int]]:
        """Rows in order (shortest first), cut into batches of at most ``batch_size`` rows
        and ``batch_tokens`` padded tokens: a few long rows would otherwise pad a whole
        batch of short ones to their length (measured on Chinese judge rounds: 5,179
        padded tokens for 3,286 real ones with fixed batches of 16), and larger batches
        than that ran slower on a 2-core CPU, not faster."""
        batches: list[list[int]] = []
        for i in order:
            width = _row_length(rows[i])  # the longest so far, rows being sorted by length
            if batches and len(batches[-1]) < self.batch_size and (len(batches[-1]) + 1) * width <= self.batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches


def scoring_model(model, precision: str = "auto", shared: bool = True):
    """The copy of ``model`` the rankers score with: bf16 weights where ``precision``
    (resolved as in :class:`CausalLMRanker`) is bf16, else ``model`` itself.

    bf16 weights instead of autocast over fp32 ones: autocast casts every weight matrix
    on every forward (14% of the judge's time in a profile) and the Chinese synonym pass
    ran 23.7-24.7 sentences/s with bf16 weights against 18.2-20.3 under autocast (fresh
    processes, 200 answers, 2 cores). The residual stream is then bf16 too: 120 of the
    200 answers got a child against 117 under autocast, the labelled precision did not
    move, and the agreement with whole fp32 texts is in docs/augmentation.md. ``shared``: the fp32 model
    is still needed (FGSM takes its gradients), so the bf16 one is a copy (two bytes a
    parameter more: 270 MB for SmolLM2-135M); otherwise it is converted in place.
    """
    import copy

    import torch

    from deepfeed.core.platform.encoders import onednn_bf16

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and onednn_bf16())
    if not bf16 or next(model.parameters()).dtype == torch.bfloat16:
        return model
    return (copy.deepcopy(model) if shared else model).to(torch.bfloat16).eval()


def _row_length(row: Row) -> int:
    first, branches = row
    return first + sum(len(branch) - first for branch in branches)


class _Packed:
    """A batch of packed rows as the model takes them, and where each scored token is."""

    def __init__(self, rows: Sequence[Row], pad: int):
        import torch

        width = max(_row_length(row) for row in rows)
        self.tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        self.positions = torch.zeros((len(rows), width), dtype=torch.long)
        # Padding attends to itself only, so no softmax row is empty.
        mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        rows_of, predictors, targets, branch_of = [], [], [], []
        self.branch_slices: list[tuple[int, int]] = []
        branches = 0
        for r, (first, seqs) in enumerate(rows):
            self.tokens[r, :first] = torch.tensor(seqs[0][:first])
            self.positions[r, :first] = torch.arange(first)
            mask[r, :first, :first] = causal[:first, :first]
            offset = first
            self.branch_slices.append((branches, len(seqs)))
            for seq in seqs:
                own = len(seq) - first
                end = offset + own
                self.tokens[r, offset:end] = torch.tensor(seq[first:])
                self.positions[r, offset:end] = torch.arange(first, len(seq))
                mask[r, offset:end, :first] = True
                mask[r, offset:end, offset:end] = causal[:own, :own]
                # seq[first] is predicted by the last shared token, seq[first + k] by the
                # branch's own token before it.
                rows_of += [r] * own
                predictors += [first - 1, *range(offset, end - 1)][:own]
                targets += seq[first:]
                branch_of += [branches] * own
                offset = end
                branches += 1
        self.mask = mask.unsqueeze(1)
        self.real_tokens = sum(_row_length(row) for row in rows)
        self.row = torch.tensor(rows_of, dtype=torch.long)
        self.predictor = torch.tensor(predictors, dtype=torch.long)
        self.targets = torch.tensor(targets, dtype=torch.long)
        self.branch = torch.tensor(branch_of, dtype=torch.long)
        self.branches = branches
