"""Tokenizers: text -> token ids -> text.

Three tokenizers share one interface (``Tokenizer``) so the data pipeline, the model, generation
and serving never care which one is in use:

- ``SimpleTokenizerV1``: a vocabulary of the words and punctuation seen in a text (regex split);
  an unknown word is an error. The idea of tokenization in twenty lines.
- ``SimpleTokenizerV2``: adds ``<|unk|>`` for unknown words and ``<|endoftext|>`` between texts.
- ``GPT2Tokenizer`` (here): GPT-2's byte-pair encoding (50,257 ids) through tiktoken's fast Rust
  encoder.

The word-level two live in ``word_tokenizers``, the interface in ``tokenizer_protocol``; this
module imports them all, so ``from gptsmith.data.tokenizer import ...`` reaches every one.
``get_tokenizer(name)`` picks one by name. GPT-2's BPE files are found offline-first, see
``gptsmith.download.resolve_gpt2_bpe``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

from gptsmith.data.download import resolve_gpt2_bpe
from gptsmith.data.token_ids import token_id_list
from gptsmith.data.tokenizer_protocol import (  # noqa: F401 (re-exported: the tokenizers' one import)
    DEFAULT_ALLOWED_SPECIAL,
    ENDOFTEXT,
    UNKNOWN,
    Tokenizer,
    as_text,
    special_set,
)
from gptsmith.data.word_tokenizers import SimpleTokenizerV1, SimpleTokenizerV2, join_words, split_words  # noqa: F401
from gptsmith.errors import ConfigError, DataError
from gptsmith.storage import atomic_write_json

GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
# GPT-2's pre-tokenization pattern in tiktoken's faster but equivalent form (tiktoken_ext.openai_public).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


# ---------------------------------------------------------------------------------------------
# GPT-2 byte-pair encoding
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_encoding(
    kind: str, files: tuple[Path, ...], stamps: tuple[tuple[int, int], ...]
) -> tiktoken.Encoding:
    """Build tiktoken's Encoding from local files.

    Cached, because parsing 50k ranks takes a moment; ``stamps`` (size, mtime) of the files are
    part of the key so an edited file is read again.
    """
    # tiktoken's loaders copy even local files into its download cache unless TIKTOKEN_CACHE_DIR is
    # "" (and would then serve the stale copy after the file changes), so switch that off here.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        if kind == "tiktoken":
            ranks = load_tiktoken_bpe(str(files[0]))
        else:
            ranks = data_gym_to_mergeable_bpe_ranks(str(files[0]), str(files[1]))
    except (ValueError, AssertionError, KeyError, UnicodeDecodeError, OSError) as exc:
        names = " + ".join(str(f) for f in files)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read GPT-2 BPE files {names}: {reason} (the file is damaged: delete it "
                        "and run `gptsmith download gpt2-bpe`)") from None
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    if len(ranks) != GPT2_VOCAB_SIZE - 1:
        names = " + ".join(str(f) for f in files)
        raise DataError(
            f"{names} holds {len(ranks)} ranks, not GPT-2's {GPT2_VOCAB_SIZE - 1}; "
            "use GPT-2's files (`gptsmith download gpt2-bpe`)"
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding (vocabulary 50,257, ``<|endoftext|>`` = 50256) on tiktoken."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID

    fingerprint = "gpt2"  # the ranks are checked to be GPT-2's when they are loaded

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding

    @classmethod
    def from_files(cls, path: str | Path | None = None) -> GPT2Tokenizer:
        """Load from a ``.tiktoken`` file, ``vocab.bpe``/``encoder.json``, a dir, or (None) the chain."""
        kind, files = resolve_gpt2_bpe(path)
        files = tuple(f.resolve() for f in files)
        stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        return cls(_load_encoding(kind, files, stamps))

    def encode(self, text: str, allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL) -> list[int]:
        """Ids of ``text``. Special tokens not in ``allowed_special`` are encoded as plain text."""
        return self.encoding.encode(as_text(text), allowed_special=special_set(allowed_special),
                                    disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text`` treating every special token as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(
        self,
        texts: Sequence[str],
        allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """Encode many texts in parallel on ``num_threads`` threads (default: all cores)."""
        threads = num_threads or os.cpu_count() or 1
        return self.encoding.encode_batch(
            list(texts), num_threads=threads, allowed_special=special_set(allowed_special),
            disallowed_special=(),
        )

    def encode_to_numpy(
        self, text: str, allowed_special: Iterable[str] = DEFAULT_ALLOWED_SPECIAL
    ) -> np.ndarray:
        """Like ``encode`` but a ``uint32`` array straight from tiktoken's buffer (no Python ints).

        tiktoken releases the GIL while encoding, so threads calling this run in parallel.
        """
        allowed = special_set(allowed_special)
        return self.encoding.encode_to_numpy(as_text(text), allowed_special=allowed, disallowed_special=())

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = token_id_list(ids)
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise DataError(f"token id {bad} is outside GPT-2's vocabulary (0..{self.vocab_size - 1})")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; a character split across ids at the end decodes to U+FFFD."""
        return self.encoding.decode(self._check_ids(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes of ``ids`` (for streaming: join bytes first, decode when characters are whole)."""
        return self.encoding.decode_bytes(self._check_ids(ids))

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size})"


# The tokenizer files a Hugging Face model folder may carry beside its weights.
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json")


def _data_gym_bytes() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte in its vocab.json/merges.txt (``Ġ`` for a space)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def hf_tokenizer_mismatch(directory: str | Path) -> str | None:
    """How the tokenizer files of a Hugging Face model folder (``HF_TOKENIZER_FILES``) differ from
    GPT-2's BPE, in a few words naming the file; None when they are GPT-2's or absent.

    gptsmith tokenizes such a model with GPT-2's BPE, so other files (another vocabulary, other
    merges, added tokens, a normalizer or a prefix space) would give its ids other text. Checked
    against GPT-2's ranks (the BPE files must be at hand); cached while the files are unchanged.
    """
    files = tuple(Path(directory) / name for name in HF_TOKENIZER_FILES if (Path(directory) / name).is_file())
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _tokenizer_mismatch(files, stamps) if files else None


@functools.lru_cache(maxsize=8)
def _tokenizer_mismatch(files: tuple[Path, ...], stamps: tuple[tuple[int, int], ...]) -> str | None:
    found = {f.name: f for f in files}
    try:
        encoding = GPT2Tokenizer.from_files().encoding
    except DataError:  # nothing to compare with: weights-only work (convert, info) needs no BPE files,
        return None    # and whatever tokenizes asks for them in its own error
    try:
        if "tokenizer.json" in found:
            data = json.loads(found["tokenizer.json"].read_text(encoding="utf-8"))
            model, pre = data["model"], data.get("pre_tokenizer") or {}
            why = (f"a {model.get('type')} model, not byte-level BPE" if model.get("type") != "BPE" else
                   f"a {data['normalizer'].get('type')} normalizer" if data.get("normalizer") else
                   f"a {pre.get('type')} pre-tokenizer" if pre.get("type") != "ByteLevel" else
                   "add_prefix_space" if pre.get("add_prefix_space") else None)
            added = {t["content"]: t["id"] for t in data.get("added_tokens") or []}
            why = why or _bpe_mismatch(encoding, model["vocab"], model.get("merges"), added)
            if why:
                return f"tokenizer.json: {why}"
        if "vocab.json" in found:
            vocab = json.loads(found["vocab.json"].read_text(encoding="utf-8"))
            merges = None
            if "merges.txt" in found:  # a "#version" line, then one "first second" pair a line
                lines = found["merges.txt"].read_text(encoding="utf-8").split("\n")
                merges = [line for line in lines if line and not line.startswith("#version")]
            added = json.loads(found["added_tokens.json"].read_text(encoding="utf-8")) \
                if "added_tokens.json" in found else {}
            why = _bpe_mismatch(encoding, vocab, merges, added)
            if why:
                return f"vocab.json/merges.txt: {why}"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{', '.join(found)} cannot be read as a tokenizer ({type(exc).__name__}: {exc})"
    return None


def _bpe_mismatch(encoding: tiktoken.Encoding, vocab: dict, merges: list | None, added: dict) -> str | None:
    """The first difference between a byte-level BPE (token -> id, merges as "a b" or [a, b], added
    tokens) and GPT-2's (``encoding``), in words; None when there is none."""
    to_byte = _data_gym_bytes()
    if len(vocab) != GPT2_VOCAB_SIZE:
        return f"{len(vocab)} tokens where GPT-2 has {GPT2_VOCAB_SIZE}"
    for token, token_id in {**vocab, **added}.items():
        try:
            rank = encoding.encode_single_token(bytes(to_byte[char] for char in token))
        except KeyError:
            rank = None
        if rank != token_id:
            where = "not in GPT-2's" if rank is None else f"GPT-2's {rank}"
            return f"token {token!r} is id {token_id} ({where})"
    if merges is not None and len(merges) != GPT2_VOCAB_SIZE - 257:
        return f"{len(merges)} merges where GPT-2 has {GPT2_VOCAB_SIZE - 257}"
    for number, merge in enumerate(merges or []):
        first, second = merge.split(" ") if isinstance(merge, str) else merge
        try:
            rank = encoding.encode_single_token(bytes(to_byte[char] for char in first + second))
        except KeyError:
            rank = None
        if rank != 256 + number:
            return f"merge {number + 1} ({first} {second}) is not GPT-2's"
    return None


# ---------------------------------------------------------------------------------------------
# Choosing by name
# ---------------------------------------------------------------------------------------------

TOKENIZER_NAMES = ("gpt2", "simple")
# Every spelling ``get_tokenizer`` takes (any case) -> the tokenizer it means.
_SPELLINGS = {"gpt2": "gpt2", "gpt-2": "gpt2", "r50k_base": "gpt2",
              "simple": "simple", "simple-v2": "simple", "simple-v1": "simple-v1"}
VOCAB_FILE = "vocab.json"  # a word-level tokenizer's vocabulary, saved beside a shard or a model


@functools.lru_cache(maxsize=1)
def _builtin_simple_tokenizer() -> SimpleTokenizerV2:
    from gptsmith.data.corpus import builtin_documents

    return SimpleTokenizerV2.from_text("\n".join(builtin_documents()))


def as_tokenizer(tokenizer: Tokenizer | str, what: str = "tokenizer") -> Tokenizer:
    """``tokenizer`` itself, or the tokenizer a name such as ``"gpt2"`` stands for; anything that
    cannot encode and decode is a ``DataError`` naming ``what``."""
    if isinstance(tokenizer, str):
        return get_tokenizer(tokenizer)
    if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
        raise DataError(f"{what} must be a tokenizer (e.g. get_tokenizer('gpt2')) or its name, "
                        f"got {type(tokenizer).__name__}")
    return tokenizer


def _tokenizer_name(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"a tokenizer is named by a string ({', '.join(TOKENIZER_NAMES)}), got {name!r}")
    return name


def tokenizer_kind(name: object) -> str:
    """Which tokenizer ``name`` means: "gpt2", "simple" or "simple-v1" (any spelling, any case).

    Reads no file, so a mistyped name is refused before any slow work (reading a corpus, say).
    """
    kind = _SPELLINGS.get(_tokenizer_name(name).lower())
    if kind is None:
        raise ConfigError(f"unknown tokenizer {name!r} (known: {', '.join(TOKENIZER_NAMES)})")
    return kind


def get_tokenizer(
    name: str = "gpt2", *, bpe_path: str | Path | None = None, text: str | None = None
) -> Tokenizer:
    """The tokenizer called ``name``.

    ``"gpt2"``: GPT-2 BPE (files from ``bpe_path`` or the offline-first chain of ``resolve_gpt2_bpe``).
    ``"simple"``: ``SimpleTokenizerV2`` over the words of ``text`` (default: the built-in corpus,
    whose vocabulary depends on the Python version that ships it).
    """
    kind = tokenizer_kind(name)
    if kind == "gpt2":
        return GPT2Tokenizer.from_files(bpe_path)
    if kind == "simple":
        return SimpleTokenizerV2.from_text(text) if text is not None else _builtin_simple_tokenizer()
    if text is None:
        raise ConfigError("tokenizer 'simple-v1' needs text= to build its vocabulary from")
    return SimpleTokenizerV1.from_text(text)


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path | None:
    """Save what it takes to rebuild ``tokenizer`` into ``directory``: a simple tokenizer's
    vocabulary as ``vocab.json``. GPT-2's BPE is found by name, so nothing is written for it."""
    if not isinstance(tokenizer, SimpleTokenizerV1):
        return None
    vocab = {"tokenizer": tokenizer.name, "vocab": tokenizer.str_to_int}
    return atomic_write_json(Path(directory) / VOCAB_FILE, vocab)


def load_tokenizer(name: str, directory: str | Path | None = None) -> Tokenizer:
    """The tokenizer called ``name`` that a shard or model in ``directory`` was made with.

    A simple tokenizer's vocabulary comes from ``directory/vocab.json`` (``save_tokenizer``);
    without one, ``get_tokenizer(name)`` decides (for "simple": the built-in corpus's words).
    """
    path = Path(directory) / VOCAB_FILE if directory is not None else None
    word_level = _tokenizer_name(name).lower() in {"simple", "simple-v2", "simple-v1"}
    if word_level and path is not None and path.is_file():
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))["vocab"]
            vocab = {str(word): int(i) for word, i in vocab.items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path} is not a gptsmith vocabulary ({exc}); create it again") from None
        return SimpleTokenizerV1(vocab) if name.lower() == "simple-v1" else SimpleTokenizerV2(vocab)
    return get_tokenizer(name)
