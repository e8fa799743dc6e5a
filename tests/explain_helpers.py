"""A tiny model and the built-in simple tokenizer for the explain tests (no files, no network)."""

from __future__ import annotations

import torch

from gptsmith.data.corpus import builtin_documents
from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.model.gpt import GPTConfig, GPTModel

TEXT = "Every effort moves you, and the next effort moves you further."
WORDS = "The king and the queen, the man and the woman."


def simple_tokenizer() -> SimpleTokenizerV2:
    """A word tokenizer over the built-in corpus plus TEXT and WORDS (about 5,000 words)."""
    return SimpleTokenizerV2.from_documents([*builtin_documents(), TEXT, WORDS])


def tiny_model(
    vocab_size: int, *, steps: int = 0, text_ids: list[int] | None = None, seed: int = 3
) -> GPTModel:
    """A 2-layer GPT; with ``steps`` it is trained for that many AdamW steps on ``text_ids``."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab_size, context_length=24, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0
    )
    model = GPTModel(cfg)
    if steps:
        ids = torch.tensor([text_ids])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(steps):
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
