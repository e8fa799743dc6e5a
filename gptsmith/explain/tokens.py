"""Stage 1, tokens: the text cut into the model's tokenizer pieces, and the simple word view beside it.

A piece is shown with its boundaries visible: a space becomes ``␣``, a newline ``↵``, a tab ``⇥``,
and the bytes of a character that BPE split across two tokens are shown as ``<e2 80>``, as are
those of any other control character (``<1b>`` for an escape, ``<c2 92>`` for U+0092), which a
terminal would otherwise act on and an HTML page may not hold, and of a direction mark
(``<e2 80 ae>`` for U+202E), which would reorder the pieces on the screen.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from gptsmith.data.tokenizer import Tokenizer, get_tokenizer, split_words

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def _as_bytes(data: bytes) -> str:
    return "<" + " ".join(f"{b:02x}" for b in data) + ">"


# The invisible marks that reorder how the text after them is displayed (U+202E shows it right to
# left): passed on, they would rearrange the pieces on the screen, so they are shown as bytes too.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def without_controls(text: str, keep: str = "") -> str:
    """``text`` with its control characters and direction marks (those in ``keep`` aside) shown as
    their bytes, ``<1b>``, ``<e2 80 ae>``."""
    return "".join(_as_bytes(c.encode("utf-8"))
                   if c not in keep and (unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS) else c
                   for c in text)


def visible(text: str) -> str:
    """``text`` with whitespace made visible (``" the"`` -> ``"␣the"``) and other control
    characters shown as their bytes."""
    return without_controls("".join(VISIBLE.get(char, char) for char in text))


def piece_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The text of one token, whitespace visible; bytes of a split character as ``<e2 80>``.

    An id the tokenizer does not have (a model vocabulary padded beyond the tokenizer's) is ``<id N>``.
    """
    try:
        data = tokenizer.decode_bytes([token_id])
    except (ValueError, KeyError, IndexError):
        return f"<id {token_id}>"
    try:
        return visible(data.decode("utf-8"))
    except UnicodeDecodeError:
        return _as_bytes(data)


@dataclass(frozen=True)
class TokenView:
    """How one tokenizer cuts the text: ``pieces[i]`` (whitespace visible) has id ``ids[i]``."""

    tokenizer: str
    ids: list[int]
    pieces: list[str]

    def as_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "ids": self.ids, "pieces": self.pieces}

    def line(self) -> str:
        """``The│␣cat│␣sat`` — the pieces with their boundaries."""
        return "│".join(self.pieces)


def token_view(tokenizer: Tokenizer, ids: Sequence[int]) -> TokenView:
    """The pieces of ``ids`` under ``tokenizer``."""
    ids = [int(i) for i in ids]
    return TokenView(tokenizer.name, ids, [piece_text(tokenizer, i) for i in ids])


def simple_view(text: str) -> TokenView:
    """The simple word tokenizer's view: words and punctuation (whitespace dropped), with their ids
    in the built-in corpus's vocabulary (a word it never saw is ``<|unk|>``)."""
    simple = get_tokenizer("simple")
    pieces = split_words(text)
    ids = [simple.str_to_int.get(piece, simple.unk_id) for piece in pieces]
    name = f"{simple.name} ({simple.vocab_size:,} words of the built-in corpus; id {simple.unk_id} = <|unk|>)"
    return TokenView(name, ids, [visible(piece) for piece in pieces])
