"""Turn a model into text: greedy decoding, sampling, beam search, batches and streaming.

``generate(model, token_ids, max_new_tokens)`` decodes greedily by default and returns the prompt
followed by the new ids, shape (batch, n). Options:

- ``temperature`` (0 = greedy), ``top_k``, ``top_p``: sampling, reproducible with ``seed``
  (``top_k`` and ``top_p`` shape sampling only: with temperature 0 they have no effect);
- ``repetition_penalty``: make tokens already in the text less likely;
- ``eos_id`` (default: the ``tokenizer``'s ``<|endoftext|>`` when one is given; ``NO_EOS`` for
  none) and ``stop_sequences`` (token-id lists, or strings with ``tokenizer=``): stop early;
- ``num_beams`` > 1: beam search (``length_penalty``, stops on ``eos_id``), see ``beam_search.py``;
- a batch of prompts of different lengths (a list of id lists, or left-padded ids with
  ``attention_mask``) — every row gets what it would get alone;
- ``use_cache`` (default): prefill the prompt once, then feed one token per step.

Every caller gets the fast CPU decoding kernels with no extra call: the model's linear layers
are ``FastLinear`` (``fast_linear.py``), which pick them whenever autograd is off.

Prompts longer than the model's context are cropped to their most recent tokens (with a warning),
and the window keeps sliding as text is generated. ``stream_text`` yields text as it is produced
(``streaming.py``); when to stop is decided in ``stopping.py``, for every decoder alike.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from gptsmith.data.token_ids import token_id_list
from gptsmith.data.tokenizer import as_tokenizer
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.config import GenerationConfig
from gptsmith.generate.decoding import (  # noqa: F401 (DecodeState, TokenPicker: public API)
    DecodeState,
    TokenPicker,
    sample_steps,
)
from gptsmith.generate.stopping import (  # noqa: F401 (NO_EOS: public API)
    NO_EOS,
    StopChecker,
    StopRules,
    normalise_stops,
    resolve_eos_id,
)
from gptsmith.generate.streaming import TextStream

# Keywords of ``generate`` that are not GenerationConfig fields: listed as known in the message
# about an unknown option.
GENERATE_ONLY = ("attention_mask", "pad_id", "tokenizer")


def _checked_config(model: torch.nn.Module, tokenizer: Any, *, also: Sequence[str] = (),
                    **fields: Any) -> GenerationConfig:
    """The config of one call, checked against the model, with ``eos_id`` resolved (see
    ``resolve_eos_id``: the tokenizer's ``<|endoftext|>`` by default, None for ``NO_EOS``).

    Every public decoder takes its options as ``**options`` and passes them here, so a misspelt
    one (``topk=``) is a ``ConfigError`` naming it and the known ones (``also``: the caller's
    own keywords), never Python's bare ``TypeError``.
    """
    known = {f.name for f in dataclasses.fields(GenerationConfig)} | set(also)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown generation option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    cfg = GenerationConfig(**fields)
    eos_id = resolve_eos_id(cfg.eos_id, tokenizer)
    vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if cfg.eos_id is None and eos_id is not None and vocab_size is not None and eos_id >= vocab_size:
        raise GptsmithError(f"the tokenizer's <|endoftext|> (id {eos_id}) is outside the model's vocabulary "
                            f"of {vocab_size}: use the tokenizer the model was trained with")
    cfg = dataclasses.replace(cfg, eos_id=eos_id)
    cfg.check_model(model)
    token_stops, _ = normalise_stops(cfg.stop_sequences, tokenizer)
    outside = [token for stop in token_stops for token in stop if not 0 <= token < model.cfg.vocab_size]
    if outside:  # it could never match: the stop would be ignored without a word
        raise ConfigError(f"stop sequence token id {outside[0]} is outside the model's vocabulary of "
                          f"{model.cfg.vocab_size} (ids 0..{model.cfg.vocab_size - 1})")
    return cfg


def _stop_rules(cfg: GenerationConfig, tokenizer: Any) -> StopRules:
    token_stops, byte_stops = normalise_stops(cfg.stop_sequences, tokenizer)
    return StopRules(cfg.eos_id, token_stops, byte_stops, tokenizer)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def text_to_token_ids(text: str, tokenizer: Any) -> torch.Tensor:
    """Encode ``text`` as a (1, n) batch; empty text starts from ``<|endoftext|>``."""
    if not isinstance(text, str):
        raise GptsmithError(f"text must be a str, got {type(text).__name__}")
    tokenizer = as_tokenizer(tokenizer)
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)  # (1, n_tokens)


def token_ids_to_text(token_ids: torch.Tensor | Sequence[int], tokenizer: Any) -> str:
    """Decode one sequence of ids, (n,) or (1, n), to text."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() == 2:
            if token_ids.shape[0] != 1:
                raise GptsmithError(
                    f"token_ids_to_text decodes one sequence, got a batch of {token_ids.shape[0]} "
                    "(decode each row: token_ids_to_text(ids[i], tokenizer))"
                )
            token_ids = token_ids[0]
    return as_tokenizer(tokenizer).decode(token_id_list(token_ids, "token_ids"))


def _prepare_prompt(
    model: torch.nn.Module,
    token_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None,
    start_id: int | None,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ids (batch, n) on the model's device and a left-padding mask (or None when nothing is padded)."""
    _reject_text(token_ids)
    device = next(model.parameters()).device
    if not isinstance(token_ids, torch.Tensor):
        if token_ids is None or not hasattr(token_ids, "__len__"):
            raise GptsmithError("token_ids must be token ids (a list, or a tensor of shape (batch, "
                                f"n_tokens)), got {token_ids!r:.40}")
        first = token_ids[0] if len(token_ids) else 0
        one_row = not hasattr(first, "__len__") or getattr(first, "ndim", 1) == 0
        rows = [token_id_list(row, "token_ids") for row in ([token_ids] if one_row else token_ids)]
        if attention_mask is not None:  # the caller's own padding: rows of one length, as a tensor
            if len({len(row) for row in rows}) > 1:
                raise GptsmithError("with attention_mask, token_ids must be rows of one length (or leave "
                                    "the mask out: lists of different lengths are left-padded for you)")
            token_ids = torch.tensor(rows, dtype=torch.long)  # (batch, n): one_row gave batch 1
    if not isinstance(token_ids, torch.Tensor):
        rows = [row or _start_ids(start_id) for row in rows]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        attention_mask = mask if width > min(len(r) for r in rows) else None  # None: nothing padded
    else:
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)  # a list of 0/1 works too
        if token_ids.dim() == 1:
            token_ids = token_ids.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1 and token_ids.shape[0] == 1:
            attention_mask = attention_mask.reshape(1, -1)
        if token_ids.dim() != 2 or token_ids.dtype not in (torch.int64, torch.int32):
            raise GptsmithError(
                f"token_ids must be integer ids of shape (batch, n_tokens), got {tuple(token_ids.shape)} "
                f"{token_ids.dtype} (encode text with text_to_token_ids)"
            )
        ids = token_ids.long()
        if ids.shape[1] == 0:
            ids = torch.tensor(_start_ids(start_id), dtype=torch.long).expand(ids.shape[0], 1)
            attention_mask = None
    longest = ids.shape[1]
    if attention_mask is not None:
        attention_mask = _check_mask(attention_mask, ids)
        longest = int(attention_mask.sum(dim=1).max())
    context_length = model.cfg.context_length
    if longest > context_length:
        warnings.warn(
            f"prompt of {longest} tokens is longer than the model's context of {context_length}; "
            f"the model sees only the last {context_length}",
            stacklevel=3,
        )
    return ids.to(device), None if attention_mask is None else attention_mask.to(device)


def _reject_text(token_ids: Any) -> None:
    """Text where ids belong would otherwise fail deep inside as "invalid literal for int()"."""
    is_text = isinstance(token_ids, str | bytes)
    if not is_text and isinstance(token_ids, Sequence) and len(token_ids):
        is_text = isinstance(token_ids[0], str | bytes)
    if is_text:
        raise GptsmithError(
            f"token_ids must be token ids, got text {token_ids!r:.60} "
            "(encode it first: text_to_token_ids(text, tokenizer))"
        )


def _start_ids(start_id: int | None) -> list[int]:
    if start_id is None:
        raise GptsmithError(
            "empty prompt: give at least one token id, or eos_id= (or tokenizer=) to start from <|endoftext|>"
        )
    return [start_id]


def _check_mask(mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    if tuple(mask.shape) != tuple(ids.shape):
        raise GptsmithError(
            f"attention_mask shape {tuple(mask.shape)} != token_ids shape {tuple(ids.shape)} (match them)"
        )
    # Checked before the cast to integers, which would cut 0.5 to 0: a token silently taken for padding.
    if bool(((mask != 0) & (mask != 1)).any()):
        raise GptsmithError("attention_mask must hold only 1 (token) and 0 (padding), got "
                            f"{mask.unique().tolist()}")
    mask = mask.long()
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise GptsmithError("attention_mask must describe left padding (zeros before the tokens of each row)")
    if bool((mask.sum(dim=1) == 0).any()):
        raise GptsmithError("a row of attention_mask has no tokens (give every prompt at least one token)")
    return mask


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def generate(
    model: torch.nn.Module,
    token_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    tokenizer: Any = None,
    pad_id: int | None = None,
    **options: Any,
) -> torch.Tensor:
    """Extend each prompt by up to ``max_new_tokens`` tokens; returns prompt + new ids (batch, n).

    ``token_ids``: (batch, n) or (n,) ids, or a list of id lists of different lengths (left-padded
    here); encode text first with ``text_to_token_ids``. ``attention_mask`` (batch, n) marks real
    tokens (1) of prompts that are already left-padded. Generation stops at ``eos_id`` or a stop
    sequence, neither of which is returned (for a text stop sequence, the token where it begins is
    dropped).

    ``options`` are ``GenerationConfig``'s fields, with its defaults: ``temperature`` (0.0:
    greedy), ``top_k``, ``top_p``, ``repetition_penalty`` (1.0), ``eos_id``, ``stop_sequences``,
    ``seed``, ``use_cache`` (True), ``num_beams`` (1), ``length_penalty`` (1.0). They are taken as
    ``**options``, as ``stream_text`` and ``ask`` take them, so that one check names a misspelt
    option (``topk=``) and lists the known ones, raising ``ConfigError`` rather than ``TypeError``.

    Padding: prompts of different lengths are padded on the left with ``pad_id`` (default:
    ``eos_id``, which is ``<|endoftext|>`` when ``tokenizer`` is given, else id 0, an ordinary
    token), and rows that stop early are padded on the right with it. The padding stays in the
    result: with ``width`` the longest prompt's length (``token_ids.shape[1]`` for a tensor),
    ``out[:, width:]`` holds every row's new tokens, and row ``i`` of a list of prompts is
    ``width - len(prompts[i])`` pad ids, then the prompt, then its new tokens, so
    ``out[i, width - len(prompts[i]):]`` is prompt and continuation without the left padding (with
    ``attention_mask``, row ``i`` has ``int((attention_mask[i] == 0).sum())`` pad ids). Right
    padding by the default ``eos_id`` is never a generated token: drop the trailing ones.

    ``eos_id`` defaults to the tokenizer's ``<|endoftext|>`` when ``tokenizer`` is given;
    ``eos_id=NO_EOS`` (-1) disables it, and without a tokenizer nothing but ``max_new_tokens`` and
    the stop sequences ends generation. ``top_k`` and ``top_p`` apply to sampling
    (``temperature`` > 0) only. An empty prompt starts from ``eos_id`` (or the tokenizer's
    ``<|endoftext|>``). The model runs in eval mode (restored afterwards).
    """
    tokenizer = None if tokenizer is None else as_tokenizer(tokenizer)
    cfg = _checked_config(model, tokenizer, also=GENERATE_ONLY, max_new_tokens=max_new_tokens, **options)
    stops = _stop_rules(cfg, tokenizer)
    start_id = cfg.eos_id if cfg.eos_id is not None else getattr(tokenizer, "eot_id", None)
    if pad_id is not None:  # a float would be cut to another id, a string fail inside torch.tensor
        vocab_size = model.cfg.vocab_size
        whole = isinstance(pad_id, numbers.Integral) and not isinstance(pad_id, bool)
        if not whole or not 0 <= pad_id < vocab_size:
            raise ConfigError(f"pad_id must be a token id of the model's vocabulary (0..{vocab_size - 1}), "
                              f"got {pad_id!r}")
    pad = int(pad_id) if pad_id is not None else (cfg.eos_id or 0)
    ids, mask = _prepare_prompt(model, token_ids, attention_mask, start_id, pad)

    was_training = model.training
    model.eval()
    try:
        if cfg.num_beams > 1:
            from gptsmith.generate.beam_search import beam_search_batch

            return beam_search_batch(model, ids, mask, cfg, stops, pad)
        stopper = StopChecker(ids, stops)
        steps = []
        for next_ids in sample_steps(model, ids, mask, cfg):
            steps.append(next_ids)
            if stopper.active and stopper.update(next_ids.tolist()):
                break
        new_ids = torch.stack(steps, dim=1) if steps else ids.new_zeros((ids.shape[0], 0))
        return stopper.finish(ids, new_ids, pad)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


def stream_text(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | torch.Tensor | Sequence[int],
    max_new_tokens: int,
    **options: Any,
) -> TextStream:
    """Iterate over the generated text (not the prompt) piece by piece as tokens arrive.

    ``options`` are ``generate``'s (``temperature``, ``top_k``, ``eos_id``, ``stop_sequences``...),
    for one prompt; as there, generation stops at the tokenizer's ``<|endoftext|>`` unless
    ``eos_id`` says otherwise (``NO_EOS``: never). A chunk never ends inside a UTF-8 character,
    and text that could be the start of a stop sequence is held back until it is clear that it is
    not (see ``streaming.py``). With ``num_beams`` > 1 the text comes in one piece. After the
    loop, the stream's ``token_ids`` and ``stop_reason`` say what was generated and why it ended
    (``"eos"``, ``"stop_sequence"``, ``"max_new_tokens"``, or ``"interrupted"`` by Ctrl-C, which
    is re-raised); the text is the decoding of ``token_ids`` (the stream's ``text``), except that
    a character left incomplete by the last token (``max_new_tokens`` cut it) is not emitted. A
    prompt longer than the context is cropped with a warning, issued here rather than during the
    iteration.
    """
    tokenizer = as_tokenizer(tokenizer)  # a name such as "gpt2" works too
    cfg = _checked_config(model, tokenizer, max_new_tokens=max_new_tokens, **options)
    ids = text_to_token_ids(prompt, tokenizer) if isinstance(prompt, str) else prompt
    ids, _ = _prepare_prompt(model, ids, None, tokenizer.eot_id, 0)
    if ids.shape[0] != 1:
        raise GptsmithError(f"stream_text streams one prompt, got a batch of {ids.shape[0]} (use generate)")
    return TextStream(model, tokenizer, ids, cfg, _stop_rules(cfg, tokenizer))
