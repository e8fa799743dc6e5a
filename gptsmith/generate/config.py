"""``GenerationConfig``: how to decode (greedy or sampling, stops, beams), checked once.

It lives below every decoder (``decoding``, ``beam_search``, ``streaming``, ``generation``) so
they can all take it without importing each other.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptsmith.device import check_seed
from gptsmith.errors import ConfigError
from gptsmith.generate.stopping import NO_EOS, StopSequence
from gptsmith.model import memory
from gptsmith.model.gpt import check_gpt_model


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Field names are ``generate``'s keywords: ``generate(model, ids, **asdict(cfg))``."""

    max_new_tokens: int = 50
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_id: int | None = None  # None: the tokenizer's <|endoftext|> if one is given; NO_EOS: never
    stop_sequences: Sequence[StopSequence] | None = None
    seed: int | None = None
    use_cache: bool = True
    num_beams: int = 1
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        # numpy's scalars are numbers too (as for every other setting): held as Python's, which
        # torch.Generator.manual_seed and the checks below take (np.int64 seeds were a TypeError).
        for name in ("max_new_tokens", "top_k", "num_beams", "seed", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool | int):
                object.__setattr__(self, name, int(value))
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool | int | float):
                object.__setattr__(self, name, float(value))
        _check_int("max_new_tokens", self.max_new_tokens, 0, "use 0 or more new tokens")
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1, "use top_k >= 1, or leave it unset to sample from all tokens")
        if self.top_p is not None:
            _check_number("top_p", self.top_p)
            if not 0 < self.top_p <= 1:
                raise ConfigError(f"top_p must be in (0, 1], got {self.top_p} (1 keeps every token)")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ConfigError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty} (1 = none, 1.2 is typical)"
            )
        _check_int("num_beams", self.num_beams, 1, "use 1 for greedy/sampling, more for beam search")
        _check_number("length_penalty", self.length_penalty)
        if self.num_beams > 1 and (self.temperature > 0 or self.top_k is not None or self.top_p is not None):
            raise ConfigError(
                "beam search (num_beams > 1) is deterministic: temperature, top_k and top_p apply to "
                "sampling only (drop them, or use num_beams=1 to sample)"
            )
        if self.eos_id is not None and self.eos_id != NO_EOS:
            _check_int("eos_id", self.eos_id, 0, "pass a token id of the vocabulary, or NO_EOS (-1) for none")
        if self.seed is not None:
            check_seed(self.seed)
        if not isinstance(self.use_cache, bool):
            raise ConfigError(f"use_cache must be True or False, got {self.use_cache!r}")

    def check_model(self, model: Any) -> None:
        """The checks that need the model: ids, top_k and beams must fit its vocabulary, and the
        beams' KV caches its device's memory (see ``gptsmith.model.memory``)."""
        check_gpt_model(model)
        self.check_vocab(model.cfg.vocab_size)
        if self.num_beams > 1:
            weight = next(model.parameters())
            need = memory.generation_memory(model.cfg, self.num_beams, model.cfg.context_length,
                                            bytes_per_value=weight.element_size())
            available = memory.available_memory(weight.device)
            if available is not None and need > available:
                raise ConfigError(f"beam search with {self.num_beams} beams needs about "
                                  f"{memory.gib(need)} but only {memory.gib(available)} of memory is "
                                  f"available on {weight.device} (lower num_beams)")

    def check_vocab(self, vocab_size: int) -> None:
        """The checks that need the vocabulary size: ids, top_k and num_beams must fit it."""
        if self.num_beams > vocab_size:
            raise ConfigError(f"num_beams must be at most the vocabulary size {vocab_size}, got "
                              f"{self.num_beams} (each beam ends in a different token)")
        if self.top_k is not None and self.top_k > vocab_size:
            raise ConfigError(f"top_k must be at most the vocabulary size {vocab_size}, got {self.top_k}")
        if self.eos_id is not None and self.eos_id != NO_EOS and self.eos_id >= vocab_size:
            raise ConfigError(f"eos_id {self.eos_id} is outside the model's vocabulary of {vocab_size}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


def _check_int(name: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r} ({fix})")
