"""Attention, from the simplest idea to the fused kernel the model runs.

The ladder (each rung adds one idea to the previous one; tests prove the rungs agree):

1. ``simplified_self_attention`` — no weights: scores are dot products of the inputs themselves.
2. ``SelfAttentionV1`` / ``SelfAttentionV2`` — trainable query/key/value projections.
3. ``CausalAttention`` — a mask hides future tokens; dropout on the attention weights.
4. ``MultiHeadAttentionWrapper`` — several causal heads side by side, outputs concatenated.
5. ``MultiHeadAttention`` — the fast path: one fused QKV projection, heads split by reshaping,
   PyTorch's ``scaled_dot_product_attention`` (flash/efficient kernels), optional ``KVCache``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (Rungs 1-4 of the teaching ladder go above this line.)


class KVCache:
    """Keys and values of every layer for the tokens already processed, for fast generation.

    Generating one token at a time would otherwise recompute keys and values for the whole
    prefix at every step. The cache is preallocated to ``max_length`` positions: ``prefill`` a
    prompt with one forward pass, then feed one new token per step. ``length`` is the number of
    positions stored; ``reset()`` empties it for a new sequence (the memory is reused).
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, batch_size, n_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def reset(self) -> None:
        """Forget every stored position (start a new sequence)."""
        self.length = 0

    def update(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` of new positions for one layer; return all positions so far.

        The new tokens go right after ``self.length``; ``advance`` moves ``length`` once every
        layer has stored them.
        """
        n_new = keys.shape[2]  # keys: (batch, n_heads, n_new, head_dim)
        end = self.length + n_new
        if end > self.max_length:
            raise ValueError(
                f"KV cache is full: {self.length} stored + {n_new} new > {self.max_length} "
                "positions (reset it or crop the context)"
            )
        self.keys[layer_idx, :, :, self.length : end] = keys
        self.values[layer_idx, :, :, self.length : end] = values
        return self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]

    def advance(self, n_new: int) -> None:
        """Mark ``n_new`` more positions as stored (called by the model after all layers)."""
        self.length += n_new

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to roll back rejected tokens)."""
        self.length = min(self.length, max(0, length))


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, the fast path the model uses.

    Over the wrapper it adds: one fused ``qkv`` projection (one matmul instead of 3 × n_heads),
    heads split by reshaping, PyTorch's fused ``scaled_dot_product_attention`` (flash or
    memory-efficient kernels where available) and an optional ``KVCache`` for generation.
    ``use_sdpa=False`` (or ``return_weights=True``) takes a plain-matmul path that computes the
    same result step by step and can return the attention weights.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        n_heads: int,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if d_out % n_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by n_heads ({n_heads})")
        self.d_out = d_out
        self.n_heads = n_heads
        self.head_dim = d_out // n_heads
        self.context_length = context_length
        self.dropout = dropout
        self.use_sdpa = True
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)  # [queries | keys | values]
        self.out_proj = nn.Linear(d_out, d_out)

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        attn_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` (batch, n_tokens, d_in) and any cached positions.

        ``attn_mask`` (optional, bool, broadcastable to (batch, n_heads, n_tokens, n_keys),
        True = may attend) replaces the default causal mask, e.g. to hide left padding.
        """
        batch, n_tokens, _ = x.shape
        qkv = self.qkv(x)  # (batch, n_tokens, 3 * d_out)
        qkv = qkv.view(batch, n_tokens, 3, self.n_heads, self.head_dim)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # each (batch, n_heads, n_tokens, head_dim)

        n_past = 0
        if cache is not None:
            n_past = cache.length
            keys, values = cache.update(layer_idx, keys, values)  # (batch, n_heads, n_keys, head_dim)

        if attn_mask is None and n_past > 0 and n_tokens > 1:
            # Chunked prefill after earlier tokens: causal, shifted by the cached positions.
            attn_mask = causal_mask(n_tokens, n_past + n_tokens, device=x.device)

        dropout_p = self.dropout if self.training else 0.0
        if self.use_sdpa and not return_weights:
            context = F.scaled_dot_product_attention(
                queries,
                keys,
                values,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                # A single new query may see every cached key, so it needs no mask at all.
                is_causal=attn_mask is None and n_past == 0 and n_tokens > 1,
            )
            weights = None
        else:
            context, weights = _matmul_attention(queries, keys, values, attn_mask, dropout_p)

        context = context.transpose(1, 2).reshape(batch, n_tokens, self.d_out)  # (batch, n_tokens, d_out)
        out = self.out_proj(context)
        return (out, weights) if return_weights else out


def causal_mask(n_queries: int, n_keys: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask (n_queries, n_keys), True where query i (the last n_queries positions) may see key j."""
    offset = n_keys - n_queries
    query_pos = torch.arange(n_queries, device=device).unsqueeze(1) + offset
    key_pos = torch.arange(n_keys, device=device).unsqueeze(0)
    return key_pos <= query_pos


def _matmul_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out; returns (context, attention weights)."""
    n_queries, n_keys = queries.shape[-2], keys.shape[-2]
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])  # (b, h, n_q, n_k)
    if attn_mask is None:
        attn_mask = causal_mask(n_queries, n_keys, device=queries.device)
    scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ values, weights
