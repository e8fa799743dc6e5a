"""The book's word-level tokenizers: a vocabulary of the words and punctuation of a text.

- ``SimpleTokenizerV1``: an unknown word is an error. The idea of tokenization in twenty lines.
- ``SimpleTokenizerV2``: adds ``<|unk|>`` for unknown words and ``<|endoftext|>`` between texts.
- ``split_words`` / ``join_words``: the regex split both use, and its inverse for decoding.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

from gptsmith.data.token_ids import token_id_list
from gptsmith.data.tokenizer_protocol import DEFAULT_ALLOWED_SPECIAL, ENDOFTEXT, UNKNOWN, as_text, special_set
from gptsmith.errors import DataError

# ---------------------------------------------------------------------------------------------
# Simple word-level tokenizers
# ---------------------------------------------------------------------------------------------

# Split on whitespace and the punctuation ,.:;?_!"()' and the double dash; the capture group keeps
# the punctuation as tokens of its own.
_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
# When decoding, closing punctuation sticks to the word before it, an opening parenthesis to the
# word after it, and a double dash to both; quotes alternate between opening and closing.
_CLOSING = frozenset(",.:;?!)")
_QUOTES = ('"', "_", "'")


def join_words(pieces: Sequence[str]) -> str:
    """Undo ``split_words`` as well as the lost whitespace allows: words separated by one space.

    ``'`` between two words is an apostrophe (``it's``); otherwise it, ``"`` and ``_`` (the
    italics of plain-text books) alternate between opening and closing quote.
    """
    out: list[str] = []
    is_open = dict.fromkeys(_QUOTES, False)
    glue_next = False  # no space after the previous piece
    for i, piece in enumerate(pieces):
        space = bool(out) and not glue_next
        glue_next = False
        if piece in _CLOSING:
            space = False
        elif piece == "(":
            glue_next = True
        elif piece == "--":
            space, glue_next = False, True
        elif (piece == "'" and not is_open["'"] and i + 1 < len(pieces)
              and out and out[-1][-1:].isalnum() and pieces[i + 1][:1].isalnum()):
            space, glue_next = False, True  # an apostrophe
        elif piece in is_open:
            if is_open[piece]:
                space = False  # a closing quote sticks to what it closes
            else:
                glue_next = True  # an opening quote sticks to what it opens
            is_open[piece] = not is_open[piece]
        if space:
            out.append(" ")
        out.append(piece)
    return "".join(out)


def _around_specials(text: str, allowed: Iterable[str]) -> list[str]:
    """``text`` cut around the ``allowed`` special tokens, each a part of its own, so the regex
    split never breaks one apart (nor glues one to the word beside it)."""
    if not allowed:
        return [text]
    return re.split("(" + "|".join(re.escape(s) for s in sorted(allowed)) + ")", text)


def split_words(text: str) -> list[str]:
    """The simple tokenizers' pieces of ``text``: words and punctuation, whitespace dropped."""
    return [piece for piece in (p.strip() for p in _SPLIT.split(text)) if piece]


class SimpleTokenizerV1:
    """Word-level tokenizer over a fixed vocabulary; unknown words are an error."""

    name = "simple-v1"

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in self.str_to_int.items()}
        self.vocab_size = len(self.str_to_int)
        self.eot_id = self.str_to_int.get(ENDOFTEXT, -1)

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizerV1:
        """Build the vocabulary from every distinct piece of ``text`` (sorted, so ids are deterministic)."""
        return cls({piece: i for i, piece in enumerate(sorted(set(split_words(text))))})

    @property
    def fingerprint(self) -> str:
        """A hash of the vocabulary: two tokenizers with the same fingerprint give the same ids."""
        items = json.dumps(sorted(self.str_to_int.items()), ensure_ascii=False)
        return f"{self.name}-{hashlib.sha256(items.encode('utf-8')).hexdigest()[:16]}"

    def _lookup(self, piece: str) -> int:
        try:
            return self.str_to_int[piece]
        except KeyError:
            raise DataError(
                f"word {piece!r} is not in the {self.vocab_size}-entry vocabulary of {type(self).__name__}; "
                "build the vocabulary from a text that contains it, or use SimpleTokenizerV2 "
                "(maps it to <|unk|>)"
            ) from None

    def encode(self, text: str, allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL) -> list[int]:
        """Ids of the words and punctuation of ``text``."""
        return [self._lookup(piece) for piece in split_words(as_text(text))]

    def decode(self, ids: Sequence[int]) -> str:
        """The pieces joined back into text (``join_words``: no space before closing punctuation)."""
        try:
            pieces = [self.int_to_str[i] for i in token_id_list(ids)]
        except KeyError as exc:
            bad = exc.args[0]
            raise DataError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})") from None
        return join_words(pieces)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """``decode`` as UTF-8 bytes (the simple tokenizers never split a character)."""
        return self.decode(ids).encode("utf-8")


class SimpleTokenizerV2(SimpleTokenizerV1):
    """Like V1, plus ``<|unk|>`` for unknown words and ``<|endoftext|>`` to separate texts."""

    name = "simple"

    def __init__(self, vocab: dict[str, int]):
        vocab = dict(vocab)
        for special in (ENDOFTEXT, UNKNOWN):
            vocab.setdefault(special, len(vocab))
        super().__init__(vocab)
        self.unk_id = self.str_to_int[UNKNOWN]

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizerV2:
        """Vocabulary of ``text``'s distinct pieces, then ``<|endoftext|>`` and ``<|unk|>`` at the end."""
        return cls.from_documents([text])

    @classmethod
    def from_documents(cls, documents: Iterable[str]) -> SimpleTokenizerV2:
        """Like ``from_text`` over several texts, read one at a time (a corpus need not fit in memory)."""
        words: set[str] = set()
        for document in documents:
            # Cut as encode() cuts (a record's "end.<|endoftext|>Next" holds the word "Next", which
            # must not come out <|unk|>), so every word of the documents is in the vocabulary.
            for part in _around_specials(document, DEFAULT_ALLOWED_SPECIAL):
                words.update(split_words(part))
        words -= {ENDOFTEXT, UNKNOWN}
        return cls({piece: i for i, piece in enumerate(sorted(words))})

    def encode(self, text: str, allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL) -> list[int]:
        """Ids of ``text``'s pieces; unknown words become ``<|unk|>``; allowed specials are kept whole.

        A special token that is not allowed is plain text, which is not a word of the vocabulary:
        it becomes ``<|unk|>``, never the special id.
        """
        text = as_text(text)
        allowed = special_set(allowed_special)
        specials = {ENDOFTEXT, UNKNOWN} - allowed
        ids: list[int] = []
        for part in _around_specials(text, allowed):
            if part in allowed and part in self.str_to_int:
                ids.append(self.str_to_int[part])
                continue
            ids.extend(
                self.unk_id if piece in specials else self.str_to_int.get(piece, self.unk_id)
                for piece in split_words(part)
            )
        return ids
