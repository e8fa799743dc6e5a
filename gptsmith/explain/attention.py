"""Stage 3, attention: the weights every head of every layer gives each earlier token.

The model's fast path runs PyTorch's fused ``scaled_dot_product_attention``, which never builds
the weight matrix. So this module listens instead of changing it: forward hooks on each
attention module record its input ``x``, its fused query/key/value projection ``qkv(x)`` and its
output during one ordinary forward pass; the weights are then recomputed from those::

    q, k, v = split(qkv(x))                                   each (batch, n_heads, n_tokens, head_dim)
    weights = softmax(mask(q @ k^T / sqrt(head_dim)))         (batch, n_heads, n_tokens, n_tokens)
    output  = out_proj(merge_heads(weights @ v))              (batch, n_tokens, emb_dim)

and ``output`` is compared with what the module really returned (``max_error``): the pictures
are provably the model's own attention, not a re-implementation that might differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptsmith.model.attention import MultiHeadAttention, causal_mask
from gptsmith.model.gpt import GPTModel


@dataclass(frozen=True)
class AttentionCapture:
    """The attention weights of one forward pass, and how well they reproduce the model's output."""

    weights: torch.Tensor  # (n_layers, n_heads, n_tokens, n_tokens), float32, zero above the diagonal
    max_error: float  # max |recomputed output - module output| over every layer


def recompute_attention(
    att: MultiHeadAttention, x: torch.Tensor, qkv: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, output) of ``att`` on its input ``x`` (batch, n_tokens, d_in), written out step by step.

    ``qkv``: the module's own ``qkv(x)`` if it was recorded (saves computing the projection again).
    """
    batch, n_tokens, _ = x.shape
    qkv = att.qkv(x) if qkv is None else qkv  # (batch, n_tokens, 3 * d_out)
    qkv = qkv.view(batch, n_tokens, 3, att.n_heads, att.head_dim)
    queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # each (batch, n_heads, n_tokens, head_dim)
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(att.head_dim)  # (batch, heads, n_tokens, n_tokens)
    hidden = ~causal_mask(n_tokens, n_tokens, device=x.device)  # True above the diagonal: the future
    weights = torch.softmax(scores.float().masked_fill(hidden, float("-inf")), dim=-1)
    context = weights.to(values.dtype) @ values  # (batch, n_heads, n_tokens, head_dim)
    context = context.transpose(1, 2).reshape(batch, n_tokens, att.d_out)  # (batch, n_tokens, d_out)
    return weights, att.out_proj(context)


@torch.no_grad()
def run_with_attention(model: GPTModel, ids: torch.Tensor) -> tuple[torch.Tensor, AttentionCapture]:
    """One forward pass of ``model`` on ``ids`` (1, n_tokens): (logits, the attention of every layer).

    The model runs exactly as always (fast path, eval mode); hooks only record each attention
    module's input, its query/key/value projection and its output, and are removed afterwards.
    """
    modules = [block.att for block in model.trf_blocks]
    seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(modules))}
    handles = []
    for i, att in enumerate(modules):
        def record_qkv(module: torch.nn.Module, args: tuple, output: torch.Tensor, i: int = i) -> None:
            seen[i]["qkv"] = output

        def record(module: torch.nn.Module, args: tuple, output: torch.Tensor, i: int = i) -> None:
            seen[i]["x"], seen[i]["output"] = args[0], output

        handles += [att.qkv.register_forward_hook(record_qkv), att.register_forward_hook(record)]
    was_training = model.training
    model.eval()
    try:
        logits = model(ids)  # (1, n_tokens, vocab_size)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    layers, max_error = [], 0.0
    for i, att in enumerate(modules):
        weights, recomputed = recompute_attention(att, seen[i]["x"], seen[i]["qkv"])
        max_error = max(max_error, float((recomputed.float() - seen[i]["output"].float()).abs().max()))
        layers.append(weights[0])  # (n_heads, n_tokens, n_tokens)
    return logits, AttentionCapture(torch.stack(layers), max_error)


@dataclass(frozen=True)
class FocusView:
    """For one position: the earlier tokens each head attends to most."""

    position: int
    # top[layer][head] = [(position, weight), ...], strongest first
    top: list[list[list[tuple[int, float]]]]

    def as_dict(self) -> dict:
        return {
            "position": self.position,
            "top": [
                [[{"position": p, "weight": w} for p, w in head] for head in layer] for layer in self.top
            ],
        }


def focus_view(weights: torch.Tensor, position: int, k: int = 3) -> FocusView:
    """The ``k`` most attended earlier positions of ``position`` for every layer and head."""
    row = weights[:, :, position, : position + 1]  # (n_layers, n_heads, position + 1)
    values, where = row.topk(min(k, position + 1), dim=-1)
    top = [
        [
            [
                (int(p), round(float(w), 4))
                for w, p in zip(values[layer, head], where[layer, head], strict=True)
            ]
            for head in range(row.shape[1])
        ]
        for layer in range(row.shape[0])
    ]
    return FocusView(position, top)
