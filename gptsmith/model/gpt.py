"""The GPT-2 architecture: LayerNorm, GELU, FeedForward, TransformerBlock and GPTModel.

Data flow (shapes in comments where they change)::

    token ids (batch, n_tokens)
      -> token embedding + learned position embedding -> dropout   (batch, n_tokens, emb_dim)
      -> n_layers x TransformerBlock (pre-norm attention and feed-forward, each with a shortcut)
      -> final LayerNorm -> linear head over the vocabulary         (batch, n_tokens, vocab_size)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.model.attention import KVCache, MultiHeadAttention, causal_mask
from gptsmith.model.config import PRESETS, GPTConfig  # noqa: F401 (part of this module's API)
from gptsmith.model.dropout import Dropout
from gptsmith.model.fast_linear import FastLinear
from gptsmith.model.memory import check_model_fits


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * scale + shift`` with the biased variance (divide by n),
    as GPT-2 does. The forward calls PyTorch's fused kernel; ``layer_norm_reference`` is the
    same computation written out.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


def layer_norm_reference(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm step by step (the teaching version of ``LayerNorm.forward``)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * scale + shift


class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """The tanh-approximated GELU written out (the teaching version of ``GELU.forward``)."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class FeedForward(nn.Module):
    """Position-wise MLP: expand to 4·emb_dim, GELU, project back to emb_dim."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            FastLinear(emb_dim, 4 * emb_dim),  # (batch, n_tokens, 4 * emb_dim)
            GELU(),
            FastLinear(4 * emb_dim, emb_dim),  # (batch, n_tokens, emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + drop(attn(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim,
            d_out=cfg.emb_dim,
            context_length=cfg.context_length,
            dropout=cfg.drop_rate,
            n_heads=cfg.n_heads,
            qkv_bias=cfg.qkv_bias,
        )
        self.ff = FeedForward(cfg.emb_dim)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = Dropout(cfg.drop_rate)

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_shortcut(
            self.att(self.norm1(x), cache=cache, layer_idx=layer_idx, attn_mask=attn_mask)
        )
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """A GPT-2-style decoder-only transformer language model."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise ConfigError("GPTModel takes a GPTConfig (GPTConfig(...) or "
                                f"GPTConfig.from_preset('tiny')), got {type(cfg).__name__}")
        if torch.empty(0).device.type == "cpu":  # not on "meta" (build_model) or a GPU default device
            # before allocating: a size typo is one line, not an allocator error
            check_model_fits(cfg, torch.empty(0).element_size())
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = FastLinear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.out_head.pad_outputs = True  # inference pads the vocabulary to a multiple of 64 (a cached copy)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation for training from scratch.

        Linear and embedding weights ~ N(0, 0.02), biases 0, LayerNorm scale 1 and shift 0; the
        two projections that write into the residual stream (attention ``out_proj`` and the
        feed-forward's second linear) use std 0.02/√(2·n_layers), so the residual stream's
        variance does not grow with depth.
        """
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith("att.out_proj") or name.endswith("ff.layers.2")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.scale)
                nn.init.zeros_(module.shift)

    def new_cache(
        self, batch_size: int, max_length: int | None = None, *, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_length`` tokens."""
        cfg = self.cfg
        weight = self.tok_emb.weight
        return KVCache(
            cfg.n_layers,
            batch_size,
            cfg.n_heads,
            cfg.head_dim,
            max_length or cfg.context_length,
            device=weight.device,
            dtype=dtype or weight.dtype,
        )

    def forward(
        self,
        token_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_token_only: bool = False,
        head_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits over the vocabulary for each position of ``token_ids`` (batch, n_tokens).

        - ``cache``: keys/values of earlier positions; new tokens continue after them.
        - ``attention_mask``: (batch, n_cached + n_tokens), 1 for real tokens and 0 for padding;
          padded keys are hidden from every query (for batches of prompts of different lengths).
        - ``position_ids``: (batch, n_tokens) positions to embed; default: n_cached, n_cached+1, ...
        - ``last_token_only``: compute the head only for the last position (generation), giving
          (batch, 1, vocab_size) — the head is the biggest matmul of a small model.
        - ``head_rows``: token ids (n_rows,) whose logits alone are computed, in that order, giving
          (batch, n_tokens, n_rows) — training on the tokens a corpus uses (train/vocab_trim.py).
        """
        self._check_input(token_ids, cache, position_ids)
        batch, n_tokens = token_ids.shape
        n_past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(n_past, n_past + n_tokens, device=token_ids.device)

        x = self.tok_emb(token_ids) + self.pos_emb(position_ids)  # (batch, n_tokens, emb_dim)
        x = self.drop_emb(x)
        attn_mask = None
        if attention_mask is not None:
            keys = (batch, n_past + n_tokens)
            is_tensor = isinstance(attention_mask, torch.Tensor)
            if not is_tensor or tuple(attention_mask.shape) != keys:
                got = tuple(attention_mask.shape) if is_tensor else attention_mask
                raise GptsmithError("attention_mask must be a tensor of shape (batch, cached + new "
                                    f"tokens) = {keys}, got {got!r:.60}")
            attn_mask = padding_causal_mask(attention_mask, n_tokens)  # (batch, 1, n_tokens, n_keys)
        for layer_idx, block in enumerate(self.trf_blocks):
            x = block(x, cache=cache, layer_idx=layer_idx, attn_mask=attn_mask)
        if cache is not None:
            cache.advance(n_tokens)
        if last_token_only:
            x = x[:, -1:, :]
        x = self.final_norm(x)
        if head_rows is not None:
            return F.linear(x, self.out_head.weight.index_select(0, head_rows))  # (batch, n_tokens, n_rows)
        return self.out_head(x)  # (batch, n_tokens, vocab_size)

    def _check_input(
        self, token_ids: torch.Tensor, cache: KVCache | None, position_ids: torch.Tensor | None
    ) -> None:
        """Turn bad ids or lengths into a clear error instead of an index error or CUDA assert."""
        if not isinstance(token_ids, torch.Tensor):
            raise GptsmithError(f"token_ids must be a tensor of shape (batch, n_tokens), got "
                                f"{type(token_ids).__name__} (torch.tensor([ids]), or generate() for lists)")
        if token_ids.dim() != 2:
            raise GptsmithError(
                f"token_ids must have shape (batch, n_tokens), got {tuple(token_ids.shape)} "
                "(add a batch dimension with .unsqueeze(0))"
            )
        if token_ids.dtype not in (torch.int64, torch.int32):
            raise GptsmithError(f"token_ids must be integers (torch.long), got {token_ids.dtype}")
        n_past = cache.length if cache is not None else 0
        if cache is not None and cache.batch_size != token_ids.shape[0]:
            raise GptsmithError(
                f"the KV cache holds {cache.batch_size} sequence(s) but token_ids has a batch of "
                f"{token_ids.shape[0]} (make the cache with model.new_cache({token_ids.shape[0]}))"
            )
        if position_ids is not None and (not isinstance(position_ids, torch.Tensor)
                                         or position_ids.shape[-1] != token_ids.shape[1]
                                         or position_ids.dtype not in (torch.int64, torch.int32)):
            shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else position_ids
            raise GptsmithError(f"position_ids must be integer positions, one per token: shape "
                                f"(batch, {token_ids.shape[1]}) or ({token_ids.shape[1]},), got {shape}")
        total = n_past + token_ids.shape[1]
        if position_ids is None and total > self.cfg.context_length:
            raise GptsmithError(
                f"sequence of {total} tokens is longer than the model's context_length "
                f"{self.cfg.context_length} (crop the input to the last {self.cfg.context_length} tokens)"
            )
        if torch.compiler.is_compiling():
            # Reading values back (int(...)) syncs with the device and breaks the compiled graph on
            # every forward; the shape checks above stay (they are free), the value checks go.
            return
        if position_ids is not None and position_ids.numel():
            first_position, last_position = int(position_ids.min()), int(position_ids.max())
            if first_position < 0:
                raise GptsmithError(f"position ids must be >= 0, got {first_position}")
            if last_position >= self.cfg.context_length:
                raise GptsmithError(
                    f"position {last_position} is beyond the model's context_length "
                    f"{self.cfg.context_length} (crop the input to fit)"
                )
        if token_ids.numel():
            low, high = int(token_ids.min()), int(token_ids.max())
            if low < 0 or high >= self.cfg.vocab_size:
                bad = high if high >= self.cfg.vocab_size else low
                raise GptsmithError(
                    f"token id {bad} is outside the model's vocabulary of {self.cfg.vocab_size} "
                    "(was the text encoded with a different tokenizer? From a token shard: prepare it "
                    "again with `gptsmith prepare CORPUS --force`)"
                )

    def num_parameters(self, *, count_tied_once: bool = True) -> int:
        """Number of parameters; with tied weights the shared matrix counts once unless asked."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if self.cfg.tie_weights and not count_tied_once:
            n += self.out_head.weight.numel()
        return n


def check_gpt_model(model: object, what: str = "model") -> None:
    """Raise ``ConfigError`` unless ``model`` is a GPT model (one with a ``GPTConfig`` as ``cfg``: a
    ``GPTModel``, or one wrapped by LoRA or an instruction template); a path or None is named."""
    if not isinstance(getattr(model, "cfg", None), GPTConfig):
        raise ConfigError(f"{what} must be a GPTModel (e.g. load_model('runs/main')), "
                          f"got {type(model).__name__}")


def padding_causal_mask(attention_mask: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Bool mask (batch, 1, n_queries, n_keys): causal, and padded keys hidden.

    ``attention_mask`` is (batch, n_keys) with 1 for real tokens. A padded query still sees
    itself, so no row of the softmax is empty (an all-masked row would give NaN).
    """
    n_keys = attention_mask.shape[1]
    causal = causal_mask(n_queries, n_keys, device=attention_mask.device)  # (n_queries, n_keys)
    query_pos = torch.arange(n_queries, device=attention_mask.device) + (n_keys - n_queries)
    is_self = query_pos.unsqueeze(1) == torch.arange(n_keys, device=attention_mask.device)
    keep = attention_mask.bool()[:, None, None, :] | is_self  # (batch, 1, n_queries, n_keys)
    return causal & keep


@dataclass(frozen=True)
class ModelSummary:
    """Sizes of a model for ``gptsmith info``: parameter counts, a layer table and memory needs."""

    cfg: GPTConfig
    params_tied: int  # output head shares the token embedding (counted once)
    params_untied: int  # output head as a separate matrix
    layers: list[tuple[str, str, int]]  # (name, shape, parameters); a block's rows stand for every block

    @property
    def params(self) -> int:
        """Parameters this model actually holds (tied or not, per its config)."""
        return self.params_tied if self.cfg.tie_weights else self.params_untied

    def memory_bytes(self, bytes_per_value: int) -> dict[str, int]:
        """Bytes for weights, gradients and AdamW's two moment estimates at one precision."""
        weights = self.params * bytes_per_value
        return {"weights": weights, "gradients": weights, "adamw_states": 2 * weights, "total": 4 * weights}


# Sizes of the stand-in model ``summarize`` builds: distinct, and no one a multiple of another's.
_PROBE_SIZES = {"vocab_size": 7, "context_length": 11, "emb_dim": 13}


def summarize(cfg: GPTConfig) -> ModelSummary:
    """Count parameters and list layers for ``cfg`` without allocating any weights.

    A one-block stand-in with tiny, distinct sizes (``_PROBE_SIZES``) is built on the meta device
    for the parameters' names and shapes; each of its dimensions (7 = vocabulary, 11 = context,
    a multiple of 13 = that multiple of emb_dim) is then scaled to ``cfg``'s with Python integers,
    so any size works, even one whose tensors torch could not describe (more than 2**63 elements).
    The blocks are all alike, so the block's count times ``n_layers`` is the total.
    """
    with torch.device("meta"):
        model = GPTModel(dataclasses.replace(cfg, n_layers=1, n_heads=1, **_PROBE_SIZES))

    def real(dim: int) -> int:
        if dim == _PROBE_SIZES["vocab_size"]:
            return cfg.vocab_size
        if dim == _PROBE_SIZES["context_length"]:
            return cfg.context_length
        return dim // _PROBE_SIZES["emb_dim"] * cfg.emb_dim

    layers: list[tuple[str, str, int]] = []
    held = 0
    for name, param in model.named_parameters():  # a tied head is yielded once, as tok_emb.weight
        shape = [real(d) for d in param.shape]
        count = math.prod(shape)
        held += count * (cfg.n_layers if name.startswith("trf_blocks.0.") else 1)
        label = name.replace("trf_blocks.0.", f"trf_blocks.[0-{cfg.n_layers - 1}].", 1)
        layers.append((label, " x ".join(map(str, shape)), count))
    if cfg.tie_weights:
        layers.append(("out_head.weight (tied to tok_emb.weight)", f"{cfg.vocab_size} x {cfg.emb_dim}", 0))
    head = cfg.vocab_size * cfg.emb_dim
    tied, untied = (held, held + head) if cfg.tie_weights else (held - head, held)
    return ModelSummary(cfg=cfg, params_tied=tied, params_untied=untied, layers=layers)
