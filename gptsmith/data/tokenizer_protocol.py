"""The interface every tokenizer shares: the ``Tokenizer`` protocol, the special tokens, and the
check of what ``encode`` accepts. The tokenizers themselves are in ``word_tokenizers`` (the
book's word-level ones) and ``tokenizer`` (GPT-2's BPE, and choosing one by name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from gptsmith.errors import DataError

ENDOFTEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"
DEFAULT_ALLOWED_SPECIAL = frozenset({ENDOFTEXT})


def as_text(text: object) -> str:
    """``text``, which must be a ``str`` (anything else is a one-line ``DataError``)."""
    if not isinstance(text, str):
        raise DataError(f"the text to encode must be a str, got {type(text).__name__} (decode bytes first)")
    return text


def special_set(allowed_special: Iterable[str] | str) -> set[str]:
    """``allowed_special`` as a set: a single token's name (or tiktoken's ``"all"``) counts as one."""
    if isinstance(allowed_special, str):
        return {ENDOFTEXT, UNKNOWN} if allowed_special == "all" else {allowed_special}
    return set(allowed_special)


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers; code that only needs ids and text depends on this alone."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str, allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: object, where: str) -> str:
    """``value`` as text; a lone surrogate (JSON allows the escape ``"\\ud800"``, UTF-8 cannot hold
    it) becomes U+FFFD, as tiktoken makes it when encoding (so a corpus reads as fine-tuning data does)."""
    if not isinstance(value, str):
        raise DataError(f"{where} holds {type(value).__name__} values, not text")
    if LONE_SURROGATE.search(value):
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value
