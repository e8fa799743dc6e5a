"""Stage 5, random versus trained: the same text scored by fresh weights and by the model's own.

A freshly initialised GPT spreads its probability almost evenly over the vocabulary, so its loss
on any text is close to ``ln(vocab_size)`` (10.8 for GPT-2's 50,257 tokens); training is what
brings the loss down. Both models see the same tokens; the per-token losses show where the
trained model learned something (low loss) and where it is still surprised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptsmith.explain.next_token import token_losses
from gptsmith.model.gpt import GPTModel
from gptsmith.train.evaluation import perplexity


@dataclass(frozen=True)
class CompareView:
    """Per-token losses of a random and the trained model on the same text."""

    uniform_loss: float  # ln(vocab_size): the loss of a model that knows nothing
    random_losses: list[float]
    trained_losses: list[float]
    random_loss: float | None
    trained_loss: float | None
    seed: int

    def as_dict(self) -> dict:
        return {
            **self.__dict__,
            "random_perplexity": _ppl(self.random_loss),
            "trained_perplexity": _ppl(self.trained_loss),
        }


def _ppl(loss: float | None) -> float | None:
    return perplexity(loss) if loss is not None else None


@torch.no_grad()
def random_model_like(model: GPTModel, seed: int = 0) -> GPTModel:
    """A freshly initialised model of ``model``'s config, dtype and device (global RNG untouched)."""
    weight = model.tok_emb.weight
    with torch.device("meta"):  # shapes only: skip nn.Linear's own init, which reset_parameters redoes
        fresh = GPTModel(model.cfg)
    fresh = fresh.to_empty(device=weight.device)
    if model.cfg.tie_weights:  # to_empty gives the head its own tensor: tie it again, as GPTModel does
        fresh.out_head.weight = fresh.tok_emb.weight
    with torch.random.fork_rng(devices=[weight.device] if weight.device.type == "cuda" else []):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    return fresh.to(dtype=weight.dtype).eval()


@torch.no_grad()
def compare_view(
    model: GPTModel, ids: torch.Tensor, trained_logits: torch.Tensor, *, seed: int = 0
) -> CompareView:
    """Score ``ids`` (n_tokens,) with a fresh model of the same config; ``trained_logits`` (n_tokens, vocab)
    are the trained model's, from the pass that recorded the attention."""
    fresh = random_model_like(model, seed)
    random_logits = fresh(ids.unsqueeze(0))[0]  # (n_tokens, vocab)
    random = token_losses(random_logits, ids)
    trained = token_losses(trained_logits, ids)
    return CompareView(
        uniform_loss=math.log(model.cfg.vocab_size),
        random_losses=[float(x) for x in random],
        trained_losses=[float(x) for x in trained],
        random_loss=float(random.mean()) if len(random) else None,
        trained_loss=float(trained.mean()) if len(trained) else None,
        seed=seed,
    )
