"""The pieces of the decoding loop: the growing batch with its KV cache, and the logits processors.

``sample_steps`` puts them together for greedy decoding and sampling (``generation.py`` and
``streaming.py`` drive it); ``beam_search.py`` reuses ``DecodeState``. One step::

    DecodeState.next_logits()         logits of the next position            (batch, vocab_size)
      -> apply_repetition_penalty     tokens already in the sequence made less likely
      -> temperature / top_k / top_p  (TokenPicker; temperature 0 = greedy argmax)
      -> DecodeState.append(next_ids) the chosen tokens join the sequences   (batch,)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from gptsmith.errors import NonFiniteError

if TYPE_CHECKING:
    from gptsmith.generate.config import GenerationConfig

# ---------------------------------------------------------------------------------------------
# Logits processors: each takes logits (batch, vocab_size) and returns new logits of that shape.
# ---------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens in ``seen`` (bool, (batch, vocab_size)) less likely, as in CTRL (Keskar et al. 2019).

    A positive logit is divided by ``penalty`` and a negative one multiplied by it, so for
    ``penalty > 1`` a seen token always loses probability (dividing a negative logit would raise it).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row; the others become -inf (probability 0)."""
    if top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probabilities add up to at least ``top_p``; the most likely token is always kept."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p on their own.
    mass_above = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_above >= top_p
    drop_sorted[..., 0] = False  # even a top_p that rounds to 0 in float32 keeps the best token
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


class TokenPicker:
    """Chooses the next token of every row from the logits: greedy or sampled, with the processors.

    Keeps a (batch, vocab_size) record of the tokens seen so far for the repetition penalty.
    """

    def __init__(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor | None,
        vocab_size: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.generator = generator
        self.seen: torch.Tensor | None = None
        if repetition_penalty != 1.0:
            real = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.long()
            counts = torch.zeros(prompt_ids.shape[0], vocab_size, dtype=torch.long, device=prompt_ids.device)
            self.seen = counts.scatter_add_(1, prompt_ids, real) > 0  # padding does not count

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits after the repetition penalty and (when sampling) temperature, top-k and top-p."""
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.repetition_penalty)
            logits = logits.clamp(max=torch.finfo(logits.dtype).max)  # a tiny penalty may overflow to inf
        if self.temperature > 0:
            # Less each row's largest logit (no probability changes), divided in float64 (where even
            # 5e-324 is not 0), so a tiny temperature sends the others to -inf and the best to 0, not
            # inf - inf = nan: its limit, greedy, not a crash.
            shifted = (logits - logits.amax(dim=-1, keepdim=True)).double()
            logits = (shifted / self.temperature).to(logits.dtype)
            if self.top_k is not None:
                logits = top_k_filter(logits, self.top_k)
            if self.top_p is not None:
                logits = top_p_filter(logits, self.top_p)
        return logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token id of each row (batch,), from logits (batch, vocab_size)."""
        logits = self.process(logits)
        if self.temperature > 0:
            probs = torch.softmax(logits, dim=-1)
            next_ids = torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)
        else:
            next_ids = torch.argmax(logits, dim=-1)  # temperature 0: greedy
        self.mark_seen(next_ids)
        return next_ids

    def mark_seen(self, next_ids: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen[torch.arange(next_ids.shape[0], device=next_ids.device), next_ids] = True


def non_finite_message(logits: torch.Tensor) -> str:
    """The one line for a model whose logits hold NaN or inf (broken weights, not bad options)."""
    kind = "nan" if bool(torch.isnan(logits).any()) else "inf"
    return (f"the model's next-token logits are not finite ({kind}): its weights are broken, e.g. a "
            "checkpoint of a run that diverged (load an earlier checkpoint, or train again with a "
            "lower --lr)")


# ---------------------------------------------------------------------------------------------
# The growing batch and its KV cache.
# ---------------------------------------------------------------------------------------------


class DecodeState:
    """Sequences being extended one token per step, and how the model sees them.

    With ``use_cache`` the prompt is prefilled once and each later step feeds only the newest
    token. The model has learned absolute positions 0..context_length-1 only, so once a sequence
    outgrows the context every step must re-read the most recent ``context_length`` tokens at
    positions 0.. (the window slides by one, which shifts every position and invalidates every
    cached key). From then on each step is a full forward pass over that window — exactly the
    computation of the cache-less path, so both give the same tokens.

    ``mask`` (batch, n_prompt) marks real tokens (1) and left padding (0) of batched prompts.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        max_new_tokens: int,
        *,
        use_cache: bool = True,
    ) -> None:
        self.model = model
        self.context_length = model.cfg.context_length
        batch, n_prompt = ids.shape
        total = n_prompt + max_new_tokens
        # Buffers of room for a context's worth of new tokens, doubled when full (``append``), so
        # memory follows the tokens generated, never max_new_tokens. Columns [0, length) are filled.
        room = n_prompt + min(max_new_tokens, self.context_length)
        self.seq = ids.new_zeros((batch, room))
        self.seq[:, :n_prompt] = ids
        self.mask = None
        if mask is not None and not bool(mask.all()):
            self.mask = mask.new_ones((batch, room))
            self.mask[:, :n_prompt] = mask
        self.length = n_prompt
        self.cache = None
        self.cache_start = 0  # the column the cache's position 0 holds
        if use_cache and max_new_tokens > 0:
            # The last generated token is never fed to the model, hence total - 1.
            self.cache = model.new_cache(batch, max_length=min(self.context_length, total - 1))

    @property
    def batch_size(self) -> int:
        return self.seq.shape[0]

    def tokens(self) -> torch.Tensor:
        """All columns so far (batch, length): prompt (with its padding) then generated tokens."""
        return self.seq[:, : self.length]

    def next_logits(self) -> torch.Tensor:
        """Float32 logits of the next token of each row (batch, vocab_size)."""
        cache = self.cache
        if cache is not None and 0 < cache.length < cache.max_length:
            # Decode step: only the newest token; the cache holds columns [cache_start, length - 1).
            start, new = self.cache_start, self.length - 1
            mask = None if self.mask is None else self.mask[:, start : self.length]
            positions = None if mask is None else (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
            logits = self.model(
                self.seq[:, new : self.length],
                cache=cache,
                attention_mask=mask,
                position_ids=positions,
                last_token_only=True,
            )
        else:
            if cache is not None and cache.length > 0:
                self.cache = cache = None  # past the context: a full window every step (see class doc)
            start = max(0, self.length - self.context_length)
            self.cache_start = start
            mask = None if self.mask is None else self.mask[:, start : self.length]
            # Positions count real tokens only, so a left-padded row sees 0, 1, 2... as it would alone.
            positions = None if mask is None else (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = self.model(
                self.seq[:, start : self.length],
                cache=cache,
                attention_mask=mask,
                position_ids=positions,
                last_token_only=True,
            )
        logits = logits[:, -1, :].float()  # (batch, vocab_size)
        # Every decoder picks from here: one check for all. A sum is one pass over the logits and is
        # finite whenever they all are (isfinite().all() takes four); only a sum that overflowed or
        # met a nan/inf pays for the exact check.
        if not math.isfinite(float(logits.sum())) and not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(non_finite_message(logits))
        return logits

    def append(self, next_ids: torch.Tensor) -> None:
        """Add one token to every row (batch,), doubling the buffers when they are full."""
        if self.length == self.seq.shape[1]:
            self.seq = torch.cat([self.seq, torch.zeros_like(self.seq)], dim=1)
            if self.mask is not None:
                self.mask = torch.cat([self.mask, torch.ones_like(self.mask)], dim=1)
        self.seq[:, self.length] = next_ids
        self.length += 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Make row i a copy of row ``rows[i]`` (with its cache) — how beam search keeps its best beams."""
        self.seq[:, : self.length] = self.seq[rows, : self.length]
        if self.mask is not None:
            self.mask[:, : self.length] = self.mask[rows, : self.length]
        if self.cache is not None and self.cache.length > 0:
            stored = self.cache.length
            self.cache.keys[:, :, :, :stored] = self.cache.keys[:, rows, :, :stored]
            self.cache.values[:, :, :, :stored] = self.cache.values[:, rows, :, :stored]


def sample_steps(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, cfg: GenerationConfig
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (batch,), one step at a time (greedy or sampled).

    Inference mode is entered for each step only, so the caller's code between steps runs normally.
    """
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
    with torch.inference_mode():
        state = DecodeState(model, ids, mask, cfg.max_new_tokens, use_cache=cfg.use_cache)
        picker = TokenPicker(
            ids,
            mask,
            model.cfg.vocab_size,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
            generator=generator,
        )
    for _ in range(cfg.max_new_tokens):
        with torch.inference_mode():
            next_ids = picker(state.next_logits())  # (batch,)
            state.append(next_ids)
        yield next_ids
