"""When to stop generating: ``<|endoftext|>`` (or any eos id) and stop sequences.

Stop sequences are token-id lists (matched on the generated ids) or strings (matched on the
generated text's UTF-8 bytes, so a string is found however the model split it into tokens:
GPT-2 encodes ``"\\n\\n"`` as one token, 628, but a model may well emit 198, 198). Neither the eos
token nor a stop sequence is part of what ``generate`` returns; for a text stop, the token in
which it begins is dropped too, so the kept ids decode to text that ends before the stop.

One mechanism serves every decoder: ``StopRules`` says what stops generation, and a
``StopMatcher`` follows one growing sequence. Greedy decoding and sampling keep one matcher per
row (``StopChecker``), streaming keeps one for its text, and beam search forks a matcher whenever
it extends a beam.
"""

from __future__ import annotations

import numbers
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from gptsmith.data.token_ids import token_id_list
from gptsmith.errors import GptsmithError

StopSequence = str | Sequence[int]

NO_EOS = -1
"""``eos_id=NO_EOS``: do not stop at ``<|endoftext|>`` even though a tokenizer is given."""


def resolve_eos_id(eos_id: int | None, tokenizer: Any) -> int | None:
    """The eos id to stop at: ``eos_id``, else the tokenizer's ``<|endoftext|>``; None for ``NO_EOS``.

    A caller who passes a tokenizer expects generation to end where the text does, so that is the
    default; ``NO_EOS`` turns it off (without a tokenizer, None already means no eos).
    """
    if eos_id == NO_EOS:
        return None
    if eos_id is None:
        return getattr(tokenizer, "eot_id", None)
    return eos_id


def normalise_stops(
    stop_sequences: Sequence[StopSequence] | StopSequence | None, tokenizer: Any
) -> tuple[list[list[int]], list[bytes]]:
    """Split stop sequences into token-id lists and UTF-8 byte strings (strings are matched on bytes)."""
    if stop_sequences is None:
        return [], []
    if isinstance(stop_sequences, str | numbers.Integral) or _is_scalar(stop_sequences):
        stop_sequences = [stop_sequences]
    if isinstance(stop_sequences, bytes) or not hasattr(stop_sequences, "__iter__"):
        raise GptsmithError(f"stop_sequences must be a list of strings or of token-id lists, got "
                            f"{stop_sequences!r:.40}")
    token_stops: list[list[int]] = []
    byte_stops: list[bytes] = []
    for stop in stop_sequences:
        if isinstance(stop, str):
            if tokenizer is None:
                raise GptsmithError(f"stop sequence {stop!r} is text: pass tokenizer= to match it")
            if stop:
                byte_stops.append(stop.encode("utf-8"))
                continue
        elif (isinstance(stop, numbers.Integral) and not isinstance(stop, bool)) or _is_scalar(stop):
            token_stops.append(token_id_list([stop], "a stop sequence"))  # one token id
            continue
        elif hasattr(stop, "__len__") and len(stop):
            token_stops.append(token_id_list(stop, "a stop sequence"))
            continue
        raise GptsmithError("stop sequences must not be empty (drop the empty one)")
    return token_stops, byte_stops


def _is_scalar(value: object) -> bool:
    """A 0-d tensor or array (one token id)."""
    return getattr(value, "ndim", None) == 0


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


class Stop(NamedTuple):
    """A sequence has stopped: keep its first ``kept`` new tokens; ``reason`` is "eos" or "stop_sequence"."""

    kept: int
    reason: str


@dataclass(frozen=True)
class StopRules:
    """What ends a sequence: ``eos_id``, token-id stops, and text stops (UTF-8 bytes; need ``tokenizer``)."""

    eos_id: int | None = None
    token_stops: list[list[int]] = field(default_factory=list)
    byte_stops: list[bytes] = field(default_factory=list)
    tokenizer: Any = None

    @property
    def active(self) -> bool:
        """Whether anything but ``max_new_tokens`` can end a sequence."""
        return self.eos_id is not None or bool(self.token_stops) or bool(self.byte_stops)

    def start(self, previous: int | None = None, *, keep_text: bool = False) -> StopMatcher:
        """A matcher for a sequence whose new tokens follow ``previous`` (the prompt's last token)."""
        return StopMatcher(self, previous, keep_text or bool(self.byte_stops))


class StopMatcher:
    """Follows one sequence of new tokens and says when it meets a stop.

    With text stops (or ``keep_text``) it also keeps the decoded bytes (``text``) and the byte
    offset at which each token starts (``offsets``), so a stop found in the bytes maps back to
    the token where it begins.
    """

    def __init__(self, rules: StopRules, previous: int | None, keep_text: bool) -> None:
        self.rules = rules
        self.previous = previous  # the token before the first new one (word-level tokenizers' spaces)
        self.keep_text = keep_text
        self.new: list[int] = []
        self.text = bytearray()
        self.offsets: list[int] = []
        # A new stop can only end in the newest token, so the search starts this far back.
        self._look_back = max((len(s) for s in rules.byte_stops), default=1) - 1

    def check(self, token: int) -> Stop | None:
        """Whether appending ``token`` would stop the sequence (the matcher is unchanged)."""
        return self._evaluate(token)[0]

    def push(self, token: int) -> Stop | None:
        """Append ``token``; the stop it causes, if any."""
        stop, added = self._evaluate(token)
        self._append(token, added)
        return stop

    def fork(self, token: int) -> StopMatcher:
        """A copy of this matcher with ``token`` appended (beam search extending a beam)."""
        child = StopMatcher(self.rules, self.previous, self.keep_text)
        child.new, child.text, child.offsets = list(self.new), bytearray(self.text), list(self.offsets)
        child._append(token, self._bytes_of(token) if self.keep_text else b"")
        return child

    def kept_bytes(self, kept: int) -> int:
        """How many bytes of ``text`` the first ``kept`` tokens hold."""
        return self.offsets[kept] if kept < len(self.offsets) else len(self.text)

    def _bytes_of(self, token: int) -> bytes:
        previous = self.new[-1] if self.new else self.previous
        return token_bytes(self.rules.tokenizer, previous, token)

    def _evaluate(self, token: int) -> tuple[Stop | None, bytes]:
        rules, new = self.rules, self.new
        added = self._bytes_of(token) if self.keep_text else b""
        if token == rules.eos_id:
            return Stop(len(new), "eos"), added  # EOS itself is not returned
        n = len(new) + 1
        for stop in rules.token_stops:
            if len(stop) <= n and stop[-1] == token and new[n - len(stop) :] == stop[:-1]:
                return Stop(n - len(stop), "stop_sequence"), added
        if rules.byte_stops:
            window_start = max(0, len(self.text) - self._look_back)
            hit = find_stop(bytes(self.text[window_start:]) + added, rules.byte_stops)
            if hit is not None:
                # Drop the token in which the stop string begins, and everything after it.
                starts = [*self.offsets, len(self.text)]
                return Stop(bisect_right(starts, window_start + hit) - 1, "stop_sequence"), added
        return None, added

    def _append(self, token: int, added: bytes) -> None:
        self.new.append(token)
        self.offsets.append(len(self.text))
        self.text += added


class StopChecker:
    """Tracks, row by row, whether generation has met EOS or a stop sequence, and what to keep."""

    def __init__(self, prompt: torch.Tensor, rules: StopRules) -> None:
        self.active = rules.active
        # Prompts are left-padded, so each row's last column is its last real token.
        self.matchers = [rules.start(int(last)) for last in prompt[:, -1].tolist()] if self.active else []
        self.kept: list[int | None] = [None] * prompt.shape[0]  # new tokens kept, once a row has stopped

    def update(self, next_ids: list[int]) -> bool:
        """Record one step's tokens; True when every row has stopped."""
        for row, token in enumerate(next_ids):
            if self.kept[row] is None:
                stop = self.matchers[row].push(token)
                self.kept[row] = None if stop is None else stop.kept
        return all(k is not None for k in self.kept)

    def finish(self, prompt: torch.Tensor, new_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Prompt + new ids (batch, n); stopped rows are padded on the right with ``pad_id``."""
        n_steps = new_ids.shape[1]
        kept = [n_steps if k is None else k for k in self.kept]
        for row, k in enumerate(kept):
            new_ids[row, k:] = pad_id
        return torch.cat([prompt, new_ids[:, : max(kept, default=0)]], dim=1)
