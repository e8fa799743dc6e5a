"""The chunked cross-entropy gives F.cross_entropy's loss and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptsmith.train import losses
from gptsmith.train.losses import IGNORE_INDEX, cross_entropy


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # 7 rows of a 101-token vocabulary per chunk: a batch of 30 rows is 4 full chunks and a rest.
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * 101)


def both(logits, targets, **kwargs):
    """(ours, reference): loss and gradient of each."""
    results = []
    for fn in (cross_entropy, lambda x, t, **kw: F.cross_entropy(x.float(), t, **kw)):
        x = logits.detach().clone().requires_grad_(True)
        loss = fn(x, targets, **kwargs)
        (loss * 3.0).backward()  # a grad_output other than 1
        results.append((loss.detach(), x.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_gradient_match_torch(dtype, smoothing, reduction):
    torch.manual_seed(0)
    logits = (torch.randn(30, 101) * 4).to(dtype)
    targets = torch.randint(0, 101, (30,))
    targets[[3, 17, 29]] = IGNORE_INDEX
    (ours, our_grad), (ref, ref_grad) = both(logits, targets, label_smoothing=smoothing, reduction=reduction)
    assert ours.dtype == torch.float32 and our_grad.dtype == dtype
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: one rounding of each gradient
    torch.testing.assert_close(our_grad.float(), ref_grad.float(), rtol=tolerance, atol=tolerance * 1e-2)
    assert our_grad[[3, 17, 29]].abs().sum() == 0  # ignored rows get no gradient


def test_a_large_vocabulary_in_one_call_and_a_bad_reduction():
    torch.manual_seed(1)
    logits = torch.randn(5, 50257, dtype=torch.bfloat16)
    targets = torch.randint(0, 50257, (5,))
    (ours, _), (ref, _) = both(logits, targets)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="reduction must be"):
        cross_entropy(logits, targets, reduction="none")
