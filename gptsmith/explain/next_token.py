"""Stage 4, next token: what the model expects after each position, temperature, and the text's loss.

The logits at position ``i`` score every vocabulary entry as the token after ``i``; softmax turns
them into probabilities. Dividing the logits by a temperature ``T`` before the softmax sharpens
(``T < 1``) or flattens (``T > 1``) the distribution. The loss of the text is the mean over
positions of ``-log p(actual next token)``, and the perplexity is ``exp(loss)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptsmith.data.tokenizer import Tokenizer
from gptsmith.explain.tokens import piece_text
from gptsmith.train.evaluation import perplexity

TEMPERATURES = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Candidate:
    token_id: int
    piece: str
    probability: float


@dataclass(frozen=True)
class NextTokenView:
    """Top-k next tokens at each position, the last position at several temperatures, the loss."""

    top_k: list[list[Candidate]]  # one list per position, most likely first
    temperatures: list[float]
    last_ids: list[int]  # the tokens shown in the temperature picture (the top ones at T=1)
    last_pieces: list[str]
    last_probabilities: dict[str, list[float]]  # str(T) -> probability of each of last_ids
    entropies: dict[str, float]  # str(T) -> entropy (nats) of the whole distribution
    token_losses: list[float]  # -log p(token i+1 | tokens..i), one per position but the last
    loss: float | None  # mean of token_losses (None for a one-token text)
    perplexity: float | None

    def as_dict(self) -> dict:
        return {
            "top_k": [[c.__dict__ for c in row] for row in self.top_k],
            "temperatures": self.temperatures,
            "last_ids": self.last_ids,
            "last_pieces": self.last_pieces,
            "last_probabilities": self.last_probabilities,
            "entropies": self.entropies,
            "token_losses": self.token_losses,
            "loss": self.loss,
            "perplexity": self.perplexity,
        }


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Loss of each actual next token: logits (n_tokens, vocab), ids (n_tokens,) -> (n_tokens - 1,)."""
    return F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")


def next_token_view(
    logits: torch.Tensor,
    ids: torch.Tensor,
    tokenizer: Tokenizer,
    *,
    k: int = 5,
    temperatures: Sequence[float] = TEMPERATURES,
    n_shown: int = 10,
) -> NextTokenView:
    """The next-token stage from one forward pass: ``logits`` (n_tokens, vocab), ``ids`` (n_tokens,)."""
    probs = torch.softmax(logits.float(), dim=-1)  # (n_tokens, vocab)
    values, where = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (n_tokens, k)
    top = [
        [
            Candidate(int(i), piece_text(tokenizer, int(i)), float(p))
            for p, i in zip(row_p, row_i, strict=True)
        ]
        for row_p, row_i in zip(values, where, strict=True)
    ]
    last = logits[-1].float()  # (vocab,)
    shown = torch.softmax(last, dim=-1).topk(min(n_shown, last.shape[-1])).indices
    by_temperature, entropies = {}, {}
    for t in temperatures:
        dist = torch.softmax(last / t, dim=-1)  # (vocab,)
        by_temperature[str(t)] = [float(p) for p in dist[shown]]
        entropies[str(t)] = float(-(dist * torch.log(dist.clamp_min(1e-30))).sum())
    losses = token_losses(logits, ids)
    loss = float(losses.mean()) if len(losses) else None
    return NextTokenView(
        top_k=top,
        temperatures=list(temperatures),
        last_ids=[int(i) for i in shown],
        last_pieces=[piece_text(tokenizer, int(i)) for i in shown],
        last_probabilities=by_temperature,
        entropies=entropies,
        token_losses=[float(x) for x in losses],
        loss=loss,
        perplexity=perplexity(loss) if loss is not None else None,
    )
