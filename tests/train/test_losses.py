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
@pytest.mark.parametrize("in_place", [True, False])
def test_loss_and_gradient_match_torch(dtype, smoothing, reduction, in_place, monkeypatch):
    if not in_place:  # the spare buffer a torch whose softmax cannot run in place would get
        monkeypatch.setattr(losses, "softmax_in_place_works", lambda: False)
    assert losses.softmax_in_place_works() is in_place  # torch 2.4-2.13 can
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_target_whose_probability_underflows_still_gets_its_exact_loss(dtype):
    # The loss comes from the target's probability, which float32 cannot hold below ~1e-38: such a
    # row (a loss over ~69 nats, e.g. a diverging run) is computed from its logits instead.
    logits = torch.zeros(20, 101, dtype=dtype)
    targets = torch.arange(20)
    logits[4, 4] = logits[11, 11] = -150.0  # probability ~e^-155: zero in float32
    logits[7, 3] = 120.0  # the row's max far above its target's logit
    (ours, our_grad), (ref, ref_grad) = both(logits, targets, label_smoothing=0.1)
    assert torch.isfinite(ours) and ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(our_grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-6)


def test_a_large_vocabulary_in_one_call_and_a_bad_reduction():
    torch.manual_seed(1)
    logits = torch.randn(5, 50257, dtype=torch.bfloat16)
    targets = torch.randint(0, 50257, (5,))
    (ours, _), (ref, _) = both(logits, targets)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="reduction must be"):
        cross_entropy(logits, targets, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gradient_made_in_the_forward_pass_is_used_as_it_is_for_a_grad_output_of_one(dtype):
    torch.manual_seed(2)
    logits = (torch.randn(30, 101) * 3).to(dtype)
    targets = torch.randint(0, 101, (30,))
    x = logits.clone().requires_grad_(True)
    cross_entropy(x, targets, label_smoothing=0.1).backward()
    y = logits.float().requires_grad_(True)
    F.cross_entropy(y, targets, label_smoothing=0.1).backward()
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(x.grad.float(), y.grad, rtol=tolerance, atol=1e-7)
    # retain_graph: a second backward gives the same gradient again (nothing was scaled in place)
    x.grad = None
    loss = cross_entropy(x, targets)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward(torch.tensor(2.0))
    torch.testing.assert_close(x.grad, first * 3)


def test_no_gradient_is_computed_without_autograd_and_all_ignored_targets_give_zero_gradient():
    logits = torch.randn(12, 101)
    with torch.no_grad():
        loss = cross_entropy(logits.requires_grad_(True), torch.randint(0, 101, (12,)))
    assert loss.grad_fn is None and torch.isfinite(loss)
    x = torch.randn(12, 101, requires_grad=True)
    loss = cross_entropy(x, torch.full((12,), IGNORE_INDEX), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().sum() == 0


def test_float16_logits_keep_their_small_gradients_for_a_loss_scale():
    """A GradScaler multiplies the loss by ~65,536: per-row gradients of 1/n_rows must survive."""
    torch.manual_seed(3)
    logits = torch.randn(2048, 512).half()
    targets = torch.randint(0, 512, (2048,))
    x = logits.clone().requires_grad_(True)
    (cross_entropy(x, targets) * 65536.0).backward()
    y = logits.clone().requires_grad_(True)
    (F.cross_entropy(y.float(), targets) * 65536.0).backward()
    assert x.grad.dtype == torch.float16
    assert (x.grad != 0).float().mean() == (y.grad != 0).float().mean()
    torch.testing.assert_close(x.grad.float(), y.grad.float(), rtol=1e-3, atol=1e-6)


def test_under_no_grad_no_gradient_buffer_is_made(monkeypatch):
    made = []
    real_empty_like = torch.empty_like
    monkeypatch.setattr(losses.torch, "empty_like",
                        lambda *args, **kwargs: made.append(1) or real_empty_like(*args, **kwargs))
    logits = torch.randn(12, 101, requires_grad=True)
    with torch.no_grad():
        cross_entropy(logits, torch.randint(0, 101, (12,)))
    assert not made
    cross_entropy(logits, torch.randint(0, 101, (12,)))
    assert made  # with autograd on, the gradient is made in the forward pass


def test_the_in_place_softmax_check_leaves_the_global_random_state_alone():
    # It runs at a run's first loss: drawing from torch's generator there would change the data
    # order and dropout of a fresh process, and a resumed run would no longer match (it did).
    losses.softmax_in_place_works.cache_clear()
    before = torch.get_rng_state()
    assert losses.softmax_in_place_works()
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("path", ["chunks", "whole tensors"])  # the CPU's, and the GPU's fallback
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shared_columns_give_the_loss_and_gradient_of_the_expanded_vocabulary(path, smoothing, reduction):
    # 101 columns, the last standing for 400 tokens with its logit: a 500-token vocabulary.
    torch.manual_seed(0)
    counts = torch.ones(101)
    counts[-1] = 400
    logits = torch.randn(30, 101) * 4
    logits[5, 7] = -150.0  # a target whose probability underflows float32 (computed from its logits)
    targets = torch.randint(0, 100, (30,))
    targets[5], targets[8] = 7, 100  # row 8's target is one of the 400 tokens of the shared column
    targets[[3, 17]] = IGNORE_INDEX
    expanded = torch.cat([logits, logits[:, -1:].expand(30, 399)], dim=1).detach().requires_grad_(True)
    reference = F.cross_entropy(expanded, targets, label_smoothing=smoothing, reduction=reduction)
    reference.backward()
    x = logits.clone().requires_grad_(True)
    if path == "chunks":
        ours = cross_entropy(x, targets, label_smoothing=smoothing, reduction=reduction, column_counts=counts)
    else:
        ours = losses._shared_columns_cross_entropy(x, targets, counts, smoothing, IGNORE_INDEX, reduction)
    ours.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    expected_grad = torch.cat([expanded.grad[:, :100], expanded.grad[:, 100:].sum(1, keepdim=True)], dim=1)
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-4, atol=1e-6)
