"""BatchCache (gptsmith/serve/batch.py): rows that join and leave a running batch each get the
logits they would get alone, through shifts, growth and row moves."""

from __future__ import annotations

import random

import pytest
import torch
from generation_helpers import tiny_model

from gptsmith.errors import GptsmithError
from gptsmith.model.attention import KVCache
from gptsmith.serve.batch import BatchCache


def _alone(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of ``ids`` by a plain forward pass, no cache."""
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0, -1].float()


def test_view_rows_shares_memory():
    cache = KVCache(2, 3, 2, 4, max_length=8)
    view = cache.view_rows(1, 3, length=2)
    assert view.batch_size == 2 and view.length == 2 and cache.length == 0
    view.update(1, torch.ones(2, 2, 1, 4), torch.full((2, 2, 1, 4), 2.0))
    assert cache.keys[1, 1:, :, 2].eq(1).all() and cache.values[1, 1:, :, 2].eq(2).all()
    assert cache.keys[1, 0].eq(0).all() and cache.keys[:, :, :, :2].eq(0).all()


def test_rows_joining_and_leaving_get_their_own_logits():
    model = tiny_model(vocab_size=97, context_length=40)
    rng = random.Random(1)
    # Few columns to start with: the run must shift rows left, shift them right and grow.
    batch = BatchCache(model, max_rows=4, max_span=40, initial_columns=4)
    seqs: list[list[int]] = []  # seqs[row]: prompt + tokens fed so far
    budget: list[int] = []  # tokens each row may still take
    joined = 0
    for _ in range(80):
        if batch.n_rows < 4 and rng.random() < 0.4:  # one or more requests join, prefilled together
            prompts = [[rng.randrange(97) for _ in range(rng.randint(1, 25))]
                       for _ in range(rng.randint(1, 4 - batch.n_rows))]
            logits = batch.add_rows(prompts) if len(prompts) > 1 or rng.random() < 0.5 else \
                batch.add_row(prompts[0]).unsqueeze(0)
            for prompt, row_logits in zip(prompts, logits, strict=True):
                torch.testing.assert_close(row_logits, _alone(model, prompt), atol=1e-4, rtol=1e-4)
                seqs.append(prompt)
                budget.append(40 - len(prompt))
            joined += len(prompts)
        for row in reversed(range(batch.n_rows)):
            if budget[row] <= 1 or rng.random() < 0.05:
                moved = batch.remove_row(row)
                if moved is not None:
                    seqs[row], budget[row] = seqs[moved], budget[moved]
                seqs.pop()
                budget.pop()
        if not batch.n_rows:
            continue
        tokens = [rng.randrange(97) for _ in range(batch.n_rows)]
        logits = batch.step(tokens)
        for row, token in enumerate(tokens):
            seqs[row].append(token)
            budget[row] -= 1
            torch.testing.assert_close(logits[row], _alone(model, seqs[row]), atol=1e-4, rtol=1e-4)
    assert joined > 10 and batch.columns > 4


def test_bad_use_is_an_error():
    model = tiny_model(vocab_size=97, context_length=16)
    with pytest.raises(GptsmithError, match="context_length"):
        BatchCache(model, 2, 32)
    batch = BatchCache(model, max_rows=1, max_span=16)
    with pytest.raises(GptsmithError, match="1 to 16 tokens"):
        batch.add_row([])
    batch.add_row([1, 2])
    with pytest.raises(GptsmithError, match="full"):
        batch.add_row([3])
    with pytest.raises(GptsmithError, match="one token for each"):
        batch.step([1, 2])
