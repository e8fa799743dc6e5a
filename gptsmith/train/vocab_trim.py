"""Training on the vocabulary the corpus uses: the output head's rows for tokens the training split
never contains share one row, so each step computes logits for the used tokens plus that one row.

A small corpus uses a fraction of GPT-2's 50,257 tokens (tinyshakespeare's training split 11,265,
the built-in corpus 5,029), and in a small model the output head and its loss are most of a training
step. A token that never occurs in the training text is never a target and never an input, so
nothing in the data tells its row apart from any other such row: all of them share one row (the
lowest unused token id holds it; the others are copies, rewritten after every optimizer step). It
starts at zero, the mean of the random rows it replaces: started at one random row instead, its
pull on the hidden states was ~sqrt(n_unused) times what the rows' random directions exert
together, and AdamW runs on the-verdict ended 0.3 nats worse (6.60 against 6.31; 6.34 from zero).
The logit of every unused token is then the same number ``z``, their total share of the softmax
is ``n_unused * exp(z)``, and the full-vocabulary loss, label smoothing included, comes exactly
from the used tokens' logits and ``z``: the model trained and the model saved are one ordinary
GPT whose evaluation, generation and export see all 50,257 rows. On a 2-core Zen 5 CPU the main
job (`gptsmith train`, 500 steps) took 52 instead of 84 seconds (best val loss 3.370 against
3.382), and tinyshakespeare's tiny preset ran 1,500 steps in 2.72 instead of 3.97 minutes (val
4.744 against 4.759; BENCHMARKS.md, "A Zen 5 host").

Only for a model trained from scratch (``TrainConfig.trim_vocab``, the recipes' setting): tying
the unused rows overwrites whatever they held, which in pretrained weights is knowledge.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from gptsmith.errors import DataError
from gptsmith.train.losses import cross_entropy

COUNT_CHUNK = 1 << 24  # tokens counted at a time (a memmapped corpus is never read whole)


def used_token_ids(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The sorted ids in ``tokens`` (a flat array, possibly a memmap), checked against ``vocab_size``.

    Counted a chunk at a time, and it stops early once every id has been seen (a large corpus).
    """
    used = np.zeros(vocab_size, dtype=bool)
    for start in range(0, len(tokens), COUNT_CHUNK):
        chunk = np.asarray(tokens[start:start + COUNT_CHUNK])
        if chunk.size == 0:
            continue
        if chunk.min() < 0 or chunk.max() >= vocab_size:
            raise DataError(f"the training tokens hold ids outside 0..{vocab_size - 1}, the model's "
                            "vocabulary (use a model whose vocab_size covers the tokenizer's)")
        used |= np.bincount(chunk, minlength=vocab_size) > 0
        if used.all():
            break
    return np.flatnonzero(used)


@dataclass
class TrimmedVocab:
    """The head rows one training step computes: the used tokens' rows, then the shared row."""

    rows: torch.Tensor  # (n_used + 1,) token ids: the used ones, sorted, then shared_id
    column: torch.Tensor  # (vocab_size,) each token's column in the trimmed logits; unused -> n_used
    # (n_unused,) ids of the tokens that share the row, shared_id first: indexing by ids, not by a
    # mask, keeps the per-step copy free of a device sync on a GPU (a mask's nonzero() needs one)
    unused: torch.Tensor
    shared_id: int
    vocab_size: int

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, vocab_size: int) -> TrimmedVocab | None:
        """The trimmed vocabulary of ``tokens``; ``None`` when they use every token (nothing to trim)."""
        used = torch.from_numpy(used_token_ids(tokens, vocab_size)).long()
        if len(used) == vocab_size:
            return None
        is_unused = torch.ones(vocab_size, dtype=torch.bool)
        is_unused[used] = False
        unused = torch.nonzero(is_unused).squeeze(1)
        shared_id = int(unused[0])
        column = torch.full((vocab_size,), len(used), dtype=torch.long)
        column[used] = torch.arange(len(used))
        return cls(torch.cat([used, torch.tensor([shared_id])]), column, unused, shared_id, vocab_size)

    @property
    def n_used(self) -> int:
        return len(self.rows) - 1

    @property
    def n_unused(self) -> int:
        return len(self.unused)

    def to(self, device: torch.device) -> TrimmedVocab:
        return TrimmedVocab(self.rows.to(device), self.column.to(device), self.unused.to(device),
                            self.shared_id, self.vocab_size)

    @torch.no_grad()
    def zero_rows(self, weight: torch.Tensor) -> None:
        """Start the unused rows of ``weight`` (vocab_size, emb_dim), the shared one included, at zero."""
        weight[self.unused] = 0

    @torch.no_grad()
    def tie_rows(self, weight: torch.Tensor) -> None:
        """Copy the shared row into every unused token's row of ``weight`` (vocab_size, emb_dim)."""
        weight[self.unused] = weight[self.shared_id].clone()

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor,
                      label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean full-vocabulary cross-entropy (as ``F.cross_entropy(..., label_smoothing=...)`` over
        all ``vocab_size`` tokens) from the trimmed logits (n_rows, n_used + 1) of a model whose
        unused rows are tied, for targets (n_rows,) given as token ids."""
        # Every unused token has the shared column's logit: that column counts n_unused tokens.
        return cross_entropy(logits, self.column[targets], label_smoothing=label_smoothing,
                             column_counts=self.column_counts)

    @functools.cached_property
    def column_counts(self) -> torch.Tensor:
        """(n_used + 1,) how many tokens each trimmed column stands for: 1, ..., 1, n_unused (made
        once, not on every training step)."""
        counts = torch.ones(len(self.rows), device=self.rows.device)
        counts[-1] = self.n_unused
        return counts


def start_trimmed_vocab(model: torch.nn.Module, train_tokens: np.ndarray,
                        device: torch.device) -> TrimmedVocab | None:
    """The trimmed vocabulary of a run of ``model`` (a ``GPTModel``) on ``train_tokens``, on
    ``device``, with the model's unused head rows set to zero (a resumed run then loads its own);
    ``None`` when the tokens use the whole vocabulary."""
    trimmed = TrimmedVocab.from_tokens(train_tokens, model.cfg.vocab_size)
    if trimmed is None:
        return None
    trimmed = trimmed.to(device)
    trimmed.zero_rows(model.out_head.weight)
    return trimmed
