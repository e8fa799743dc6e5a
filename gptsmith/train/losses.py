"""Next-token cross-entropy over a large vocabulary, computed a few rows at a time on the CPU.

``F.cross_entropy(logits.float(), targets)`` on a training batch of GPT-2 logits (2,048
positions x 50,257 tokens) makes a float32 copy of the logits (411 MB), a float32 log-softmax of
the same size and, in the backward pass, a float32 gradient that is cast back to bfloat16: each of
these streams hundreds of megabytes through memory, and on a 2-core CPU the loss took more than
half of a training step of the tiny preset (242 of ~430 ms). ``cross_entropy`` gives the same
numbers from a loop over chunks of about 2 MB of float32 logits, small enough to stay in the
CPU's cache while each is upcast, exponentiated and summed: one pass keeps one log-sum-exp per
row and, when a gradient will be needed, turns the chunk's exponentials into its gradient and
writes that straight into the logits' dtype (2.7x faster in all than ``F.cross_entropy``, see
BENCHMARKS.md, "Budget"; a single pass instead of recomputing the softmax in the backward saved
another ~20 ms of a ~165 ms tiny-preset step). Each chunk's softmax is PyTorch's own fused kernel,
run in place, and each row's log-sum-exp comes from its target's probability: on a 2-core Zen 5
EPYC the loss of a 1,024-row batch took 27-30 ms instead of 40-46 with separate max, exp and sum
passes (``torch.exp`` alone was slower than the whole softmax). On GPUs (many small
kernels would be slow there) it is ``F.cross_entropy``.

The trimmed head of ``vocab_trim.py`` (one column standing for every token the corpus never uses)
takes the same path, told how many tokens each column stands for (``column_counts``): 8.5 ms for
its 1,024 x 11,266 logits of the tinyshakespeare recipe, where the same loss written with slices
of the logits took 42 ms (each slice's gradient is a zero-filled buffer of the logits' size).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets equal to this are skipped (as in F.cross_entropy)
CHUNK_ELEMENTS = 1 << 19  # float32 logits per chunk (2 MB): rows per chunk = this // vocab size


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    column_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, ...)`` for (n_rows, vocab) logits, computed in float32.

    ``reduction`` is ``"mean"`` (over the targets that are not ``ignore_index``) or ``"sum"``.
    Any logits dtype is accepted; the gradient comes back in the logits' dtype.

    ``column_counts`` (vocab,), when given, says how many tokens of the full vocabulary share each
    column's logit (the trimmed head of ``vocab_trim.py``: 1 for each used token, the number of
    unused tokens for their shared column): the loss is then the full vocabulary's, with the
    softmax and the label smoothing spread over ``column_counts.sum()`` tokens, and a target names
    one token of its column.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.device.type != "cpu" or logits.dim() != 2:
        if column_counts is not None:
            return _shared_columns_cross_entropy(logits.float(), targets, column_counts, label_smoothing,
                                                 ignore_index, reduction)
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing,
                               ignore_index=ignore_index, reduction=reduction)
    # Decided here: inside the Function's forward, grad mode is always off.
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    return _ChunkedCrossEntropy.apply(logits, targets, label_smoothing, ignore_index, reduction, want_grad,
                                      column_counts)


def _shared_columns_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, column_counts: torch.Tensor,
                                  label_smoothing: float, ignore_index: int, reduction: str) -> torch.Tensor:
    """``cross_entropy`` with ``column_counts`` from whole-tensor operations (GPUs; the CPU chunks)."""
    counts = column_counts.to(logits.dtype)
    valid = targets != ignore_index
    safe_targets = targets.masked_fill(~valid, 0)
    # A column of c tokens adds c x exp(logit): log c added to its logit.
    log_sum_exp = torch.logsumexp(logits + counts.log(), dim=-1)
    per_row = log_sum_exp - logits.gather(1, safe_targets[:, None]).squeeze(1)
    if label_smoothing:  # the uniform part: the mean of -log p over every token of the vocabulary
        per_row = ((1 - label_smoothing) * per_row
                   + label_smoothing * (log_sum_exp - logits @ counts / counts.sum()))
    total = per_row.masked_fill(~valid, 0.0).sum()
    return total / valid.sum().clamp(min=1) if reduction == "mean" else total


@functools.cache
def softmax_in_place_works() -> bool:
    """Whether ``torch.softmax(x, -1, out=x)`` gives the softmax (it does in torch 2.4-2.13, whose
    last-dimension kernel reads each row's element before writing it; checked once per process)."""
    x = torch.randn(3, 257, generator=torch.Generator().manual_seed(0)) * 4  # not the global RNG's draws
    expected = torch.softmax(x, -1)
    return torch.equal(torch.softmax(x, -1, out=x), expected)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """One pass over the logits, chunk by chunk: each row's log-sum-exp and, when a gradient is
    wanted, the gradient itself (softmax minus the target, for a ``grad_output`` of 1) while the
    chunk's softmax is still in cache; the backward only scales it by ``grad_output``.

    The gradient is kept in the logits' dtype (float32 for float16 logits, whose range would flush
    the small per-row values to zero before a loss scale could lift them). For a ``grad_output`` of
    1 the backward hands that buffer on as it is: changing the returned gradient in place and then
    running a retained graph backward again is refused by autograd's version check."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float,
                ignore_index: int, reduction: str, want_grad: bool,
                column_counts: torch.Tensor | None) -> torch.Tensor:
        n_rows, vocab = logits.shape
        # Shared columns (``cross_entropy``'s ``column_counts``): log(count) added to each logit
        # makes the softmax the columns' shares; the smoothing spreads over every token.
        counts = log_counts = None
        n_tokens = vocab  # the tokens the smoothing spreads over
        if column_counts is not None:
            counts = column_counts.float()
            log_counts = counts.log()
            n_tokens = float(counts.sum())
        valid = targets != ignore_index
        safe_targets = targets.masked_fill(~valid, 0)
        count = valid.sum()
        # d(loss)/d(logit) of each row is row_scale × (softmax − smoothed one-hot target).
        row_scale = valid.float() / count.clamp(min=1) if reduction == "mean" else valid.float()
        grad_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
        grad = torch.empty_like(logits, dtype=grad_dtype) if want_grad else None
        log_sum_exp = torch.empty(n_rows, dtype=torch.float32)
        row_sums = torch.empty(n_rows, dtype=torch.float32)  # for the smoothing term
        chunk_rows = max(1, CHUNK_ELEMENTS // vocab)
        chunk = torch.empty((min(chunk_rows, n_rows), vocab), dtype=torch.float32)
        # softmax's own kernel (max, exp, sum and scale, vectorised) in place: ~40% faster here than
        # amax, sub_, exp_ and sum, whose exp_ alone took longer; a spare buffer where it cannot be.
        spare = None if softmax_in_place_works() else torch.empty_like(chunk)
        picked = logits.gather(1, safe_targets[:, None]).squeeze(1).float()  # the target's logit
        picked_shifted = picked if log_counts is None else picked + log_counts[safe_targets]  # as softmaxed
        target_probs = torch.empty(n_rows, dtype=torch.float32)
        for start in range(0, n_rows, chunk_rows):
            rows = slice(start, start + chunk_rows)
            x = chunk[: min(chunk_rows, n_rows - start)]
            x.copy_(logits[rows])  # (chunk_rows, vocab) float32, in cache from here on
            if label_smoothing:
                if counts is None:
                    torch.sum(x, -1, out=row_sums[rows])
                else:
                    torch.mv(x, counts, out=row_sums[rows])
            if log_counts is not None:
                x.add_(log_counts)
            x = torch.softmax(x, -1, out=x if spare is None else spare[: x.shape[0]])
            # log p(target) = logit(target) - log-sum-exp: the log-sum-exp from the target's probability.
            torch.gather(x, 1, safe_targets[rows, None], out=target_probs[rows, None])
            log_sum_exp[rows] = picked_shifted[rows] - target_probs[rows].log()
            if grad is not None:
                scale = row_scale[rows]
                x.mul_(scale[:, None])  # softmax × row scale
                if label_smoothing and counts is None:
                    x.sub_((label_smoothing / n_tokens) * scale[:, None])
                elif label_smoothing:  # each column's share of the smoothing: its tokens' count
                    x.addr_(scale, counts, alpha=-label_smoothing / n_tokens)
                x.scatter_add_(1, safe_targets[rows, None], (-(1 - label_smoothing) * scale)[:, None])
                grad[rows].copy_(x)
        # A target whose probability is below float32's normal range (a loss over ~69 nats) gives no
        # exact logarithm: those rows' log-sum-exp directly (their gradient, the softmax, is exact).
        lost = (target_probs < 1e-30) & valid
        if lost.any():
            lost_logits = logits[lost].float()
            if log_counts is not None:
                lost_logits += log_counts
            log_sum_exp[lost] = torch.logsumexp(lost_logits, -1)
        per_row = log_sum_exp - picked
        if label_smoothing:  # the uniform part: mean over the vocabulary of -log p
            per_row = (1 - label_smoothing) * per_row + label_smoothing * (log_sum_exp - row_sums / n_tokens)
        per_row = per_row.masked_fill(~valid, 0.0)
        if grad is not None:
            ctx.save_for_backward(grad)
            ctx.logits_dtype = logits.dtype
        total = per_row.sum()
        return total / count if reduction == "mean" else total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        factor = float(grad_output)  # the loss is a scalar
        if factor != 1.0:  # e.g. a loss divided by the accumulation steps
            grad = grad * factor  # a Python float: the scale is not rounded to the gradient's dtype
        return grad.to(ctx.logits_dtype), None, None, None, None, None, None
