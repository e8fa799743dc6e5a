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

from gptsmith.errors import GptsmithError
from gptsmith.model.dropout import dropout
from gptsmith.model.fast_linear import FastLinear

# --- Rung 1: no weights at all -------------------------------------------------------------------


def simplified_self_attention(
    inputs: torch.Tensor, *, return_weights: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Self-attention with no trainable weights: the idea in three lines.

    Each token's *context vector* is an average of all token vectors, weighted by how similar
    they are to it: scores are dot products of the inputs with each other, softmax turns each
    row of scores into weights that sum to 1, and the weights mix the inputs.
    ``inputs`` is (n_tokens, d) or (batch, n_tokens, d).
    """
    scores = inputs @ inputs.transpose(-2, -1)  # (..., n_tokens, n_tokens)
    weights = torch.softmax(scores, dim=-1)
    context = weights @ inputs  # (..., n_tokens, d)
    return (context, weights) if return_weights else context


# --- Rung 2: trainable query, key and value projections ---------------------------------------


class SelfAttentionV1(nn.Module):
    """Self-attention with trainable query/key/value matrices, as raw ``nn.Parameter``s.

    Over rung 1 it adds three learned projections: a token asks with its *query*, is matched by
    the others' *keys*, and contributes their *values*. Scores are ``Q @ K.T / sqrt(d_k)``: the
    scaling keeps dot products of large vectors from saturating the softmax.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        # Random uniform init, as a first illustration; rung 2b uses nn.Linear's better init.
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = x @ self.W_query  # (..., n_tokens, d_out)
        keys = x @ self.W_key
        values = x @ self.W_value
        scores = queries @ keys.transpose(-2, -1)  # (..., n_tokens, n_tokens)
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        return weights @ values  # (..., n_tokens, d_out)


class SelfAttentionV2(nn.Module):
    """The same computation with ``nn.Linear`` projections (no bias by default).

    Over V1 it changes only the bookkeeping: ``nn.Linear`` stores the matrix transposed (out, in),
    initialises it with a scale suited to training, and can add a bias. Copy ``linear.weight.T``
    into V1's parameters and the outputs match exactly.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = self.W_query(x)  # (..., n_tokens, d_out)
        keys = self.W_key(x)
        values = self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)  # (..., n_tokens, n_tokens)
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        return weights @ values  # (..., n_tokens, d_out)


# --- Rung 3: hide the future -------------------------------------------------------------------


class CausalAttention(nn.Module):
    """Causal self-attention over batches: a token may only attend to itself and earlier tokens.

    Over V2 it adds: an upper-triangular mask (a registered buffer, so it follows the module
    to the GPU) that sets scores of future positions to -inf before the softmax, so their
    weights are exactly 0; dropout on the attention weights (training only); batched inputs
    (batch, n_tokens, d_in).
    """

    def __init__(
        self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        self.d_out = d_out
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # True above the diagonal = "future, hide it". Not persistent: it is derived, not learned.
        mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, _ = x.shape
        if n_tokens > self.context_length:
            raise ValueError(f"{n_tokens} tokens exceed context_length {self.context_length}")
        queries = self.W_query(x)  # (batch, n_tokens, d_out)
        keys = self.W_key(x)
        values = self.W_value(x)
        scores = queries @ keys.transpose(1, 2)  # (batch, n_tokens, n_tokens)
        scores = scores.masked_fill(self.mask[:n_tokens, :n_tokens], float("-inf"))
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        weights = self.dropout(weights)
        return weights @ values  # (batch, n_tokens, d_out)


# --- Rung 4: several heads ---------------------------------------------------------------------


class MultiHeadAttentionWrapper(nn.Module):
    """Multi-head attention as ``n_heads`` independent ``CausalAttention`` modules side by side.

    Over rung 3 it adds heads: each head has its own projections of size d_out // n_heads and
    can learn to look for a different relation; their outputs are concatenated back to d_out.
    (It runs the heads one after another; rung 5, ``MultiHeadAttention``, computes all of them
    with one fused matmul and adds an output projection.)
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
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out // n_heads, context_length, dropout, qkv_bias) for _ in range(n_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (batch, n_tokens, d_out)


# --- Rungs 5 and 6: the fast path the model runs, and its key/value cache ---------------------


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
            raise GptsmithError(
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

    def view_rows(self, start: int, stop: int, length: int | None = None) -> KVCache:
        """A cache over rows ``[start, stop)`` that shares this one's memory: what the model stores
        through it lands here. ``length`` (default: this cache's) is where its new positions go.

        Lets a server run a changing subset of rows (the live requests of a batch) without copying.
        """
        view = object.__new__(KVCache)
        view.keys = self.keys[:, start:stop]  # (n_layers, stop - start, n_heads, max_length, head_dim)
        view.values = self.values[:, start:stop]
        view.max_length = self.max_length
        view.length = self.length if length is None else length
        return view


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, the fast path the model uses.

    Over the wrapper it adds: one fused ``qkv`` projection (one matmul instead of 3 × n_heads),
    heads split by reshaping, PyTorch's fused ``scaled_dot_product_attention`` (flash or
    memory-efficient kernels where available) and an optional ``KVCache`` for generation.
    Setting the attribute ``use_sdpa = False`` (or calling with ``return_weights=True``) takes a
    plain-matmul path that computes the same result step by step and can return the weights.
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
        self.qkv = FastLinear(d_in, 3 * d_out, bias=qkv_bias)  # [queries | keys | values]
        self.out_proj = FastLinear(d_out, d_out)

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
        if cache is None and n_tokens > self.context_length:  # a cache checks its own capacity
            raise ValueError(f"{n_tokens} tokens exceed context_length {self.context_length}")
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
        # With dropout on the CPU, SDPA falls back to its unfused path with PyTorch's slow dropout
        # mask; written out here it is the same computation with ``keep_mask``'s faster one.
        fused = self.use_sdpa and not return_weights and not (dropout_p > 0 and x.device.type == "cpu")
        if fused:
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
    # In place: the division's backward needs neither its output nor its input, so one (n_q, n_k)
    # buffer serves the scores and the masked scores (the training path keeps less memory).
    scores = scores.masked_fill_(~attn_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    del scores
    kept = dropout(weights, dropout_p) if dropout_p > 0 else weights
    return kept @ values, weights


@torch.no_grad()
def copy_wrapper_to_fused(
    wrapper: MultiHeadAttentionWrapper, fused: MultiHeadAttention
) -> MultiHeadAttention:
    """Copy the wrapper's per-head weights into ``fused`` so both compute the same function.

    The fused ``qkv`` weight is the per-head query matrices stacked, then the keys', then the
    values' (the order its reshape into heads expects). The wrapper has no output projection,
    so ``fused.out_proj`` becomes the identity. Returns ``fused``.
    """
    heads = wrapper.heads
    if len(heads) != fused.n_heads or heads[0].d_out != fused.head_dim:
        raise ValueError(
            f"wrapper has {len(heads)} heads of size {heads[0].d_out}, fused module has "
            f"{fused.n_heads} of size {fused.head_dim}"
        )
    if heads[0].W_query.bias is not None and fused.qkv.bias is None:
        raise ValueError("wrapper has qkv biases but the fused module has none (build it with qkv_bias=True)")
    for part, name in enumerate(("W_query", "W_key", "W_value")):
        rows = slice(part * fused.d_out, (part + 1) * fused.d_out)
        fused.qkv.weight[rows] = torch.cat([getattr(h, name).weight for h in heads], dim=0)
        if fused.qkv.bias is not None:
            biases = [getattr(h, name).bias for h in heads]
            fused.qkv.bias[rows] = torch.cat(biases) if biases[0] is not None else 0.0
    fused.out_proj.weight.copy_(torch.eye(fused.d_out))
    fused.out_proj.bias.zero_()
    return fused
