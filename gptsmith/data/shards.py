"""Token shards: a corpus tokenized once onto disk, and read back as a memmap.

A shard is a directory with ``tokens.bin`` (the ids of every document, joined by
``<|endoftext|>``, as ``uint16``, or ``uint32`` when the vocabulary has more than 65,536 ids),
``docs.npy`` (where each document starts, so splits can keep documents whole) and
``meta.json`` (tokenizer, counts, source, the corpus fingerprint and the tokens' sha256).
``meta.json`` is written last: a shard without it is incomplete and is tokenized again. A shard
is reused only when its tokens still have the sha256 in ``meta.json`` (a shard changed on disk is
tokenized again, with a warning), so a run never trains on ids other than its corpus's.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptsmith.data.corpus import CorpusSource, resolve_corpus
from gptsmith.data.download import cache_dir
from gptsmith.data.text_files import safe_chunks
from gptsmith.data.tokenizer import (
    VOCAB_FILE,
    SimpleTokenizerV2,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_kind,
)
from gptsmith.errors import ConfigError, DataError
from gptsmith.storage import (  # one place for writes
    atomic_path,
    atomic_write_json,
    check_can_be_directory,
    check_writable,
    created_directory,
    write_errors,
)

# 2: meta.json records the tokenizer's fingerprint; 3: every format splits documents at <|endoftext|>
# alike (CRLF text, JSONL/Parquet records), so older shards of such corpora are tokenized again.
SHARD_FORMAT_VERSION = 3
Progress = Callable[[int, "int | None"], None]  # (bytes of text done, total bytes or None)
AGAIN = "prepare it again"  # what to do once a failed write's cause is fixed


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class TokenShard:
    """A tokenized corpus on disk: ``tokens`` (a read-only memmap), ``doc_starts``, ``meta``."""

    path: Path
    tokens: np.ndarray
    doc_starts: np.ndarray
    meta: dict[str, Any]
    reused: bool = field(default=False, compare=False)

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = False) -> TokenShard:
        """Open the shard directory ``path``; ``verify`` re-checks the tokens' sha256."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"no token shard at {path} (no meta.json); create it with `gptsmith prepare`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            dtype = np.dtype(meta["dtype"])
            n_tokens = int(meta["n_tokens"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            message = f"{meta_path} is not a gptsmith shard description ({exc}); prepare it again"
            raise DataError(message) from None
        token_path = path / "tokens.bin"
        expected = n_tokens * dtype.itemsize
        if not token_path.is_file() or token_path.stat().st_size != expected:
            raise DataError(f"{token_path} is missing or not the {expected} bytes meta.json says; re-prepare")
        if verify and _sha256_file(token_path) != meta.get("checksum"):
            raise DataError(f"{token_path} does not match the checksum in meta.json; prepare it again")
        # np.memmap cannot map an empty file, hence the plain empty array for a 0-token shard.
        tokens = np.zeros(0, dtype)
        if n_tokens:
            tokens = np.memmap(token_path, dtype=dtype, mode="r", shape=(n_tokens,))
        doc_path = path / "docs.npy"
        doc_starts = np.load(doc_path) if doc_path.is_file() else np.zeros(1, dtype=np.int64)
        return cls(path, tokens, doc_starts, meta)

    def __len__(self) -> int:
        return len(self.tokens)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shard was made with (a word-level one from the shard's vocab.json)."""
        return load_tokenizer(self.meta.get("tokenizer", "gpt2"), self.path)

    @property
    def n_documents(self) -> int:
        return len(self.doc_starts)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """What must match for a shard's ids to mean the same words: the name, or a vocabulary hash."""
    return getattr(tokenizer, "fingerprint", tokenizer.name)


def check_corpus_tokenizer(name: object) -> str:
    """The kind of tokenizer ``name`` is (``tokenizer_kind``), if it can tokenize a corpus; reads no file."""
    kind = tokenizer_kind(name)
    if kind == "simple-v1":
        raise ConfigError("tokenizer 'simple-v1' cannot tokenize a corpus: it has no <|endoftext|> to put "
                          "between documents (use --tokenizer simple, which adds it)")
    return kind


def corpus_tokenizer(name: str, source: str | Path | CorpusSource) -> Tokenizer:
    """The tokenizer ``name`` for training on ``source``: GPT-2's BPE, or for "simple" a word-level
    vocabulary built from the corpus itself (every word of it, so none is ``<|unk|>``)."""
    if check_corpus_tokenizer(name) == "simple":
        # Quietly: the corpus is read again to tokenize it, and its warnings (empty files skipped)
        # are given then, once, not once per reading.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SimpleTokenizerV2.from_documents(resolve_corpus(source).documents())
    return get_tokenizer(name)


def default_shard_dir(source: CorpusSource, tokenizer_name: str) -> Path:
    """Where ``prepare_corpus`` puts a shard when no ``out_dir`` is given (in the user cache)."""
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source.name).name or source.name)
    return cache_dir() / "shards" / f"{slug[:40]}-{tokenizer_name}-{source.fingerprint()[:8]}"


def prepare_corpus(
    source: str | Path | CorpusSource,
    tokenizer_name: str = "gpt2",
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    num_threads: int | None = None,
    force: bool = False,
) -> TokenShard:
    """Tokenize ``source`` into a token shard in ``out_dir`` (default: the user cache) and open it.

    Documents are joined with ``<|endoftext|>``. Without ``tokenizer``, ``tokenizer_name`` picks one
    (see ``corpus_tokenizer``: "simple" learns its words from this corpus). A shard already in
    ``out_dir`` for the same corpus fingerprint and tokenizer (name, and vocabulary for word-level
    ones) is reused (``shard.reused`` is True) unless ``force``; ``shard.tokenizer()`` rebuilds
    the tokenizer. A shard of another corpus there is a ``DataError`` unless ``force`` (then it is
    replaced); an ``out_dir`` that is, or lies under, a file is a ``StorageError``. ``progress``
    is called with (bytes of text done, total bytes or None).
    """
    source = resolve_corpus(source)
    name = tokenizer.name if tokenizer is not None else tokenizer_name
    out = Path(out_dir) if out_dir is not None else default_shard_dir(source, name)
    check_can_be_directory(out, "the shard directory")
    _refuse_other_files(out)
    fingerprint = source.fingerprint()
    shard = None if force else _open_existing(out)
    if shard is not None:
        meta = shard.meta
        if (
            meta.get("source_fingerprint") == fingerprint
            and meta.get("tokenizer") == name
            and meta.get("format_version") == SHARD_FORMAT_VERSION
            and (tokenizer is None or meta.get("tokenizer_fingerprint") == tokenizer_fingerprint(tokenizer))
        ):
            if _sha256_file(shard.path / "tokens.bin") == meta.get("checksum"):  # ids as prepared
                shard.reused = True
                return shard
            warnings.warn(f"{out}/tokens.bin does not match the checksum in its meta.json (it changed on "
                          "disk after it was prepared); tokenizing the corpus again", stacklevel=2)
        # The same corpus (by name, or by fingerprint under another spelling) changed or wants another
        # tokenizer: tokenize it again. Another corpus's shard is never silently replaced.
        if meta.get("source") != source.name and meta.get("source_fingerprint") != fingerprint:
            raise DataError(
                f"{out} holds a token shard of {meta.get('source')!r}, not of {source.name!r} "
                "(replace it with --force, or choose another --out)"
            )
    check_writable(out, "the shard directory")  # only now: a current shard is read from anywhere
    tokenizer = tokenizer or corpus_tokenizer(tokenizer_name, source)

    with created_directory(out):  # a failure (a bad file, a full disk) leaves no empty folder behind
        return _write_shard(out, source, tokenizer, fingerprint, progress, num_threads)


def _write_shard(out: Path, source: CorpusSource, tokenizer: Tokenizer, fingerprint: str,
                 progress: Progress | None, num_threads: int | None) -> TokenShard:
    """Tokenize ``source`` into the shard files in ``out`` (meta.json last) and open the shard."""
    tokens_path = out / "tokens.bin"
    dtype = token_dtype(tokenizer.vocab_size)
    total = source.total_bytes()
    (out / "meta.json").unlink(missing_ok=True)  # the shard is invalid until the new meta lands
    tmp_tokens = out / f".tokens.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    doc_starts: list[int] = []
    n_tokens = 0
    done_bytes = 0
    try:
        with write_errors(tokens_path, AGAIN), tmp_tokens.open("wb") as handle:
            for ids, starts_doc, separator, n_bytes in _encode_documents(source, tokenizer, num_threads):
                if separator:
                    if tokenizer.eot_id < 0:
                        raise DataError(
                            f"tokenizer {tokenizer.name} has no <|endoftext|> token to join the "
                            f"documents of {source.name} (use --tokenizer simple or gpt2)"
                        )
                    ids = np.concatenate([np.asarray([tokenizer.eot_id], dtype=ids.dtype), ids])
                if starts_doc:
                    doc_starts.append(n_tokens + int(separator))
                if ids.size and (int(ids.max()) > np.iinfo(dtype).max or int(ids.min()) < 0):
                    # Never wrap around silently: a wrong id would train the model on garbage.
                    bad = int(ids.max()) if int(ids.max()) > np.iinfo(dtype).max else int(ids.min())
                    raise DataError(
                        f"token id {bad} does not fit the shard's {dtype.name} "
                        f"(tokenizer {tokenizer.name} claims vocab_size {tokenizer.vocab_size})"
                    )
                data = ids.astype(dtype, copy=False).tobytes()
                with write_errors(tokens_path, AGAIN):
                    handle.write(data)
                digest.update(data)
                n_tokens += ids.size
                done_bytes += n_bytes
                if progress is not None:
                    progress(done_bytes, total)
            handle.flush()
            os.fsync(handle.fileno())
        if n_tokens == 0:
            raise DataError(f"corpus {source.name} has no text to tokenize")
        with write_errors(tokens_path, AGAIN):
            os.replace(tmp_tokens, tokens_path)
    except BaseException:
        tmp_tokens.unlink(missing_ok=True)
        raise
    docs_path = out / "docs.npy"
    with write_errors(docs_path, AGAIN), atomic_path(docs_path) as tmp, tmp.open("wb") as handle:
        np.save(handle, np.asarray(doc_starts, dtype=np.int64))
    with write_errors(out, AGAIN):
        save_tokenizer(tokenizer, out)  # a word-level vocabulary; nothing for GPT-2
    meta = {
        "format": "gptsmith-token-shard",
        "format_version": SHARD_FORMAT_VERSION,
        "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_documents": len(doc_starts),
        "n_bytes": done_bytes,
        "source": source.name,
        "source_kind": source.kind,
        "source_fingerprint": fingerprint,
        "checksum": digest.hexdigest(),
    }
    with write_errors(out / "meta.json", AGAIN):
        atomic_write_json(out / "meta.json", meta)
    return TokenShard.open(out)


SHARD_FILES = frozenset({"tokens.bin", "docs.npy", "meta.json", VOCAB_FILE})


def _refuse_other_files(out: Path) -> None:
    """A shard goes into a new or empty folder, or one that holds a shard (maybe half written):
    among other files its own would be mixed in, and replace any of the same names."""
    if not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir()
                    if p.name not in SHARD_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise DataError(f"{out} holds other files ({shown}), not a token shard: choose a new or empty "
                        "folder for the shard (--out)")


def _open_existing(out: Path) -> TokenShard | None:
    """The complete, readable shard in ``out``, or None (none there, or one to tokenize again)."""
    if not (out / "meta.json").is_file():
        return None
    try:
        return TokenShard.open(out)
    except DataError:
        return None


def _array_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    """text -> ids as a numpy array; tiktoken's buffer path skips the Python list of ints."""
    to_numpy = getattr(tokenizer, "encode_to_numpy", None)
    if to_numpy is not None:
        return to_numpy
    return lambda text: np.asarray(tokenizer.encode(text), dtype=np.int64)


def _encode_documents(
    source: CorpusSource, tokenizer: Tokenizer, num_threads: int | None
) -> Iterator[tuple[np.ndarray, bool, bool, int]]:
    """Yield (ids, starts a document, needs <|endoftext|> before it, n_bytes) in corpus order.

    Long documents are cut at tokenizer-safe boundaries and the pieces are encoded on a pool of
    ``num_threads`` threads (default: all cores); tiktoken releases the GIL while it encodes, so
    the pieces really run in parallel. At most a few pieces per thread are in flight, so memory
    stays bounded however large the corpus.
    """
    encode = _array_encoder(tokenizer)
    threads = num_threads or os.cpu_count() or 1
    in_flight: deque[tuple[Future, bool, bool, int]] = deque()
    n_docs = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for doc in source.documents():
            for i, piece in enumerate(safe_chunks(doc)):
                starts_doc = i == 0
                separator = starts_doc and n_docs > 0
                in_flight.append((pool.submit(encode, piece), starts_doc, separator, len(piece.encode())))
                while len(in_flight) > 4 * threads:
                    future, starts_doc, separator, n_bytes = in_flight.popleft()
                    yield future.result(), starts_doc, separator, n_bytes
            n_docs += 1
        while in_flight:
            future, starts_doc, separator, n_bytes = in_flight.popleft()
            yield future.result(), starts_doc, separator, n_bytes
