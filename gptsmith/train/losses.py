"""Next-token cross-entropy over a large vocabulary, computed a few rows at a time on the CPU.

``F.cross_entropy(logits.float(), targets)`` on a training batch of GPT-2 logits (2,048
positions x 50,257 tokens) makes a float32 copy of the logits (411 MB), a float32 log-softmax of
the same size and, in the backward pass, a float32 gradient that is cast back to bfloat16: each of
these streams hundreds of megabytes through memory, and on a 2-core CPU the loss took more than
half of a training step of the tiny preset (242 of ~430 ms). ``cross_entropy`` gives the same
numbers from a loop over chunks of about 2 MB of float32 logits, small enough to stay in the
CPU's cache while each is upcast, exponentiated and summed: the forward keeps one log-sum-exp per
row, the backward recomputes the softmax of each chunk and writes its gradient straight into the
logits' dtype (2.7x faster in all; see BENCHMARKS.md, "Budget"). On GPUs (many small
kernels would be slow there) it is ``F.cross_entropy``.
"""

from __future__ import annotations

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
) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, ...)`` for (n_rows, vocab) logits, computed in float32.

    ``reduction`` is ``"mean"`` (over the targets that are not ``ignore_index``) or ``"sum"``.
    Any logits dtype is accepted; the gradient comes back in the logits' dtype.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.device.type != "cpu" or logits.dim() != 2:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing,
                               ignore_index=ignore_index, reduction=reduction)
    return _ChunkedCrossEntropy.apply(logits, targets, label_smoothing, ignore_index, reduction)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward: one log-sum-exp per row, chunk by chunk. Backward: softmax minus target, per chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float,
                ignore_index: int, reduction: str) -> torch.Tensor:
        n_rows, vocab = logits.shape
        valid = targets != ignore_index
        safe_targets = targets.masked_fill(~valid, 0)
        log_sum_exp = torch.empty(n_rows, dtype=torch.float32)
        row_sums = torch.empty(n_rows, dtype=torch.float32)  # for the smoothing term
        chunk_rows = max(1, CHUNK_ELEMENTS // vocab)
        chunk = torch.empty((min(chunk_rows, n_rows), vocab), dtype=torch.float32)
        for start in range(0, n_rows, chunk_rows):
            rows = slice(start, start + chunk_rows)
            x = chunk[: min(chunk_rows, n_rows - start)]
            x.copy_(logits[rows])  # (chunk_rows, vocab) float32, in cache from here on
            if label_smoothing:
                torch.sum(x, -1, out=row_sums[rows])
            row_max = x.amax(-1, keepdim=True)
            x.sub_(row_max).exp_()
            log_sum_exp[rows] = x.sum(-1).log_().add_(row_max.squeeze(1))
        picked = logits.gather(1, safe_targets[:, None]).squeeze(1).float()  # the target's logit
        per_row = log_sum_exp - picked
        if label_smoothing:  # the uniform part: mean over the vocabulary of -log p
            per_row = (1 - label_smoothing) * per_row + label_smoothing * (log_sum_exp - row_sums / vocab)
        per_row = per_row.masked_fill(~valid, 0.0)
        count = valid.sum()
        ctx.save_for_backward(logits, safe_targets, valid, log_sum_exp)
        ctx.label_smoothing, ctx.reduction, ctx.chunk_rows = label_smoothing, reduction, chunk_rows
        total = per_row.sum()
        return total / count if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, targets, valid, log_sum_exp = ctx.saved_tensors
        smoothing, chunk_rows = ctx.label_smoothing, ctx.chunk_rows
        n_rows, vocab = logits.shape
        scale = grad_output.float()
        if ctx.reduction == "mean":
            scale = scale / valid.sum()
        row_scale = valid.float() * scale  # (n_rows,): 0 for ignored targets
        grad = torch.empty_like(logits)
        chunk = torch.empty((min(chunk_rows, n_rows), vocab), dtype=torch.float32)
        for start in range(0, n_rows, chunk_rows):
            rows = slice(start, start + chunk_rows)
            x = chunk[: min(chunk_rows, n_rows - start)]
            x.copy_(logits[rows])
            x.sub_(log_sum_exp[rows, None]).exp_()  # softmax
            if smoothing:
                x.sub_(smoothing / vocab)
            x.scatter_add_(1, targets[rows, None], x.new_full((x.shape[0], 1), -(1 - smoothing)))
            x.mul_(row_scale[rows, None])
            grad[rows].copy_(x)
        return grad, None, None, None, None
