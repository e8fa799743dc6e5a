"""The interface every tokenizer shares: the ``Tokenizer`` protocol, the special tokens, and the
check of what ``encode`` accepts. The tokenizers themselves are in ``word_tokenizers`` (the
book's word-level ones) and ``tokenizer`` (GPT-2's BPE, and choosing one by name).
"""

from __future__ import annotations

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
