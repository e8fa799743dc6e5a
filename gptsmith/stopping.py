"""When to stop generating: ``<|endoftext|>`` (or any eos id) and stop sequences.

Stop sequences are token-id lists (matched on the generated ids) or strings (matched on the
generated text's UTF-8 bytes, so a string is found however the tokenizer split it). Neither the
eos token nor a stop sequence is part of what ``generate`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gptsmith.errors import GptsmithError

StopSequence = str | Sequence[int]


def normalise_stops(
    stop_sequences: Sequence[StopSequence] | StopSequence | None, tokenizer: Any
) -> tuple[list[list[int]], list[bytes]]:
    """Split stop sequences into token-id lists and UTF-8 byte strings (strings are matched on bytes)."""
    if stop_sequences is None:
        return [], []
    if isinstance(stop_sequences, str | int):
        stop_sequences = [stop_sequences]
    token_stops: list[list[int]] = []
    byte_stops: list[bytes] = []
    for stop in stop_sequences:
        if isinstance(stop, str):
            if tokenizer is None:
                raise GptsmithError(f"stop sequence {stop!r} is text: pass tokenizer= to match it")
            if stop:
                byte_stops.append(stop.encode("utf-8"))
                continue
        elif isinstance(stop, int):
            token_stops.append([stop])
            continue
        elif stop:
            token_stops.append([int(t) for t in stop])
            continue
        raise GptsmithError("stop sequences must not be empty (drop the empty one)")
    return token_stops, byte_stops


def token_bytes(tokenizer: Any, previous: int | None, token: int) -> bytes:
    """The bytes ``token`` adds to the text after ``previous``.

    For byte-level BPE that is just the token's own bytes; a word-level tokenizer puts a space
    between words when decoding, which only shows when the previous token is decoded with it.
    """
    if previous is None:
        return tokenizer.decode_bytes([token])
    before = tokenizer.decode_bytes([previous])
    both = tokenizer.decode_bytes([previous, token])
    return both[len(before) :] if both.startswith(before) else tokenizer.decode_bytes([token])


def find_stop(buffer: bytes | bytearray, stops: Sequence[bytes], search_from: int = 0) -> int | None:
    """Byte offset of the earliest stop string in ``buffer[search_from:]``, or None."""
    hits = [i for i in (buffer.find(stop, search_from) for stop in stops) if i >= 0]
    return min(hits) if hits else None


class StopChecker:
    """Tracks, row by row, whether generation has met EOS or a stop sequence, and what to keep."""

    def __init__(self, batch: int, eos_id: int | None, token_stops, byte_stops, tokenizer: Any) -> None:
        self.eos_id = eos_id
        self.token_stops = token_stops
        self.byte_stops = byte_stops
        self.tokenizer = tokenizer
        self.active = eos_id is not None or bool(token_stops) or bool(byte_stops)
        self.kept: list[int | None] = [None] * batch  # new tokens kept, once a row has stopped
        self.new: list[list[int]] = [[] for _ in range(batch)]
        self.text: list[bytearray] = [bytearray() for _ in range(batch)]
        self.offsets: list[list[int]] = [[] for _ in range(batch)]  # byte offset where each token starts

    def update(self, next_ids: list[int]) -> bool:
        """Record one step's tokens; True when every row has stopped."""
        for row, token in enumerate(next_ids):
            if self.kept[row] is None:
                self.kept[row] = self._check(row, token)
        return all(k is not None for k in self.kept)

    def _check(self, row: int, token: int) -> int | None:
        new = self.new[row]
        new.append(token)
        if token == self.eos_id:
            return len(new) - 1  # EOS itself is not returned
        for stop in self.token_stops:
            if new[-len(stop) :] == stop:
                return len(new) - len(stop)
        if self.byte_stops:
            text, offsets = self.text[row], self.offsets[row]
            offsets.append(len(text))
            previous = new[-2] if len(new) > 1 else None
            text += token_bytes(self.tokenizer, previous, token)
            longest = max(len(s) for s in self.byte_stops)
            hit = find_stop(text, self.byte_stops, max(0, offsets[-1] - longest + 1))
            if hit is not None:
                # Drop the token in which the stop string begins, and everything after it.
                return max(i for i, start in enumerate(offsets) if start <= hit)
        return None

    def finish(self, prompt: torch.Tensor, new_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Prompt + new ids (batch, n); stopped rows are padded on the right with ``pad_id``."""
        n_steps = new_ids.shape[1]
        kept = [n_steps if k is None else k for k in self.kept]
        for row, k in enumerate(kept):
            new_ids[row, k:] = pad_id
        return torch.cat([prompt, new_ids[:, : max(kept, default=0)]], dim=1)
