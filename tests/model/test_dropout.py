"""The CPU's faster dropout mask: the right rate, an unbiased output, the right gradient, and the
attention's written-out training path wired to it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptsmith.model.attention import MultiHeadAttention, causal_mask
from gptsmith.model.dropout import Dropout, dropout, keep_mask
from gptsmith.model.gpt import GPTConfig, GPTModel


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_the_mask_drops_the_asked_fraction(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of four lanes
    kept = keep_mask((n,), p)
    assert kept.dtype == torch.bool and kept.shape == (n,)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((1 - kept.float().mean().item()) - p) < 5 * sigma + 1 / 65536


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_the_expectation_and_its_gradient_is_the_mask(dtype):
    torch.manual_seed(1)
    x = torch.full((400, 1000), 2.0, dtype=dtype, requires_grad=True)
    out = dropout(x, 0.3)
    kept = out != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.all(out[kept] == torch.tensor(2.0 * scale, dtype=dtype))
    assert out.float().mean().item() == pytest.approx(2.0, rel=0.01)
    out.sum().backward()
    expected = kept.to(dtype) * torch.tensor(scale, dtype=dtype)
    assert torch.equal(x.grad, expected)


def test_dropout_is_reproducible_by_seed_and_the_identity_when_it_should_be():
    x = torch.randn(64, 64)
    torch.manual_seed(5)
    first = dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(dropout(x, 0.2), first)
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 1 - 1e-7), torch.zeros_like(x))  # every lane drops: PyTorch's path
    module = Dropout(0.2)
    assert module.eval()(x) is x
    torch.manual_seed(5)
    assert torch.equal(module.train()(x), first)


def test_attention_dropout_in_training_uses_the_same_mask_as_written_out():
    torch.manual_seed(2)
    att = MultiHeadAttention(d_in=32, d_out=32, context_length=16, dropout=0.5, n_heads=4).train()
    x = torch.randn(2, 16, 32)
    torch.manual_seed(7)
    out = att(x)
    # The same computation by hand, drawing the same mask from the same seed.
    q, k, v = att.qkv(x).view(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(16, 16), float("-inf"))
    torch.manual_seed(7)
    weights = dropout(torch.softmax(scores, dim=-1), 0.5)
    expected = att.out_proj((weights @ v).transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(out, expected)
    # and in eval mode it is the fused kernel's answer, with nothing dropped
    att.eval()
    fused = att(x)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 16, 32)
    torch.testing.assert_close(fused, att.out_proj(expected))


def test_a_model_with_dropout_trains_and_its_loss_falls():
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.2)
    model = GPTModel(cfg).train()
    ids = torch.arange(64).remainder(16).view(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
