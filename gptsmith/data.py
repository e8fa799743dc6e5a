"""From a corpus to batches: token shards on disk, train/val/test splits, sliding windows, loaders.

The path of the data, step by step:

1. ``resolve_corpus`` (in ``gptsmith.corpus``) says where the documents come from.
2. ``prepare_corpus`` tokenizes them once into a *token shard*: a flat ``uint16`` array on disk
   (``tokens.bin``, read back as a ``np.memmap``) with documents joined by ``<|endoftext|>``, the
   start of every document (``docs.npy``) and a small ``meta.json`` (tokenizer, counts, source,
   checksum). Re-running on an unchanged corpus reuses the shard.
3. ``split_tokens`` cuts it into train/val/test views (no copies).
4. ``SlidingWindowDataset`` serves (input, target) windows computed on the fly from the memmap,
   so memory stays at the size of the token array however small the stride.
5. ``create_dataloader`` batches them; ``input_embeddings`` is the model's first step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptsmith.corpus import CorpusSource, resolve_corpus, safe_chunks
from gptsmith.download import cache_dir
from gptsmith.errors import ConfigError, DataError
from gptsmith.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "CorpusSource",
    "SlidingWindowDataset",
    "TokenShard",
    "create_dataloader",
    "input_embeddings",
    "prepare_corpus",
    "resolve_corpus",
    "split_tokens",
]

SHARD_FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
# Encode in batches of about this many characters, spread over all cores.
BATCH_CHARS = 1 << 23
Progress = Callable[[int, "int | None"], None]  # (bytes done, bytes total or None)


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

    @property
    def n_documents(self) -> int:
        return len(self.doc_starts)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    Documents are joined with ``<|endoftext|>``. A shard already in ``out_dir`` for the same corpus
    fingerprint and tokenizer is reused (``shard.reused`` is True) unless ``force``. ``progress`` is
    called with (bytes of text done, total bytes or None).
    """
    source = resolve_corpus(source)
    tokenizer = tokenizer or get_tokenizer(tokenizer_name)
    out = Path(out_dir) if out_dir is not None else default_shard_dir(source, tokenizer.name)
    fingerprint = source.fingerprint()
    if not force and (out / "meta.json").is_file():
        try:
            shard = TokenShard.open(out)
        except DataError:
            shard = None
        if (
            shard is not None
            and shard.meta.get("source_fingerprint") == fingerprint
            and shard.meta.get("tokenizer") == tokenizer.name
            and shard.meta.get("format_version") == SHARD_FORMAT_VERSION
        ):
            shard.reused = True
            return shard

    dtype = token_dtype(tokenizer.vocab_size)
    total = source.total_bytes()
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the shard is invalid until the new meta lands
    tmp_tokens = out / f".tokens.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    doc_starts: list[int] = []
    n_tokens = 0
    done_bytes = 0
    try:
        with tmp_tokens.open("wb") as handle:
            for ids, doc_offset, n_bytes in _encode_documents(source, tokenizer, num_threads):
                if doc_offset is not None:
                    doc_starts.append(n_tokens + doc_offset)
                array = np.asarray(ids, dtype=np.int64)
                if array.size and int(array.max()) > np.iinfo(dtype).max:
                    raise DataError(
                        f"token id {int(array.max())} does not fit the shard's {dtype.name} "
                        f"(tokenizer {tokenizer.name} claims vocab_size {tokenizer.vocab_size})"
                    )
                data = array.astype(dtype).tobytes()
                handle.write(data)
                digest.update(data)
                n_tokens += array.size
                done_bytes += n_bytes
                if progress is not None:
                    progress(done_bytes, total)
            handle.flush()
            os.fsync(handle.fileno())
        if n_tokens == 0:
            raise DataError(f"corpus {source.name} has no text to tokenize")
        os.replace(tmp_tokens, out / "tokens.bin")
    except BaseException:
        tmp_tokens.unlink(missing_ok=True)
        raise
    from gptsmith.weights import atomic_path, atomic_write_json  # one place for atomic writes

    with atomic_path(out / "docs.npy") as tmp, tmp.open("wb") as handle:
        np.save(handle, np.asarray(doc_starts, dtype=np.int64))
    meta = {
        "format": "gptsmith-token-shard",
        "format_version": SHARD_FORMAT_VERSION,
        "tokenizer": tokenizer.name,
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
    atomic_write_json(out / "meta.json", meta)
    return TokenShard.open(out)


def _encode_documents(source: CorpusSource, tokenizer: Tokenizer, num_threads: int | None):
    """Yield (ids, offset of a document's first token in ids or None, n_bytes) piece by piece.

    Documents are separated by ``<|endoftext|>``. Long documents are cut at tokenizer-safe
    boundaries, and pieces are encoded in batches on all cores when the tokenizer offers
    ``encode_batch`` (GPT-2 BPE through tiktoken does).
    """
    batch_encode = getattr(tokenizer, "encode_batch", None)
    pending: list[tuple[str, bool, bool]] = []  # (text, starts a document, <|endoftext|> before it)
    pending_chars = 0
    n_docs = 0

    def flush():
        texts = [text for text, _, _ in pending]
        if batch_encode is not None:
            encoded = batch_encode(texts, num_threads=num_threads)
        else:
            encoded = [tokenizer.encode(text) for text in texts]
        for (text, starts_doc, separator), ids in zip(pending, encoded, strict=True):
            prefix = [tokenizer.eot_id] if separator else []
            yield prefix + ids, (len(prefix) if starts_doc else None), len(text.encode("utf-8"))

    for doc in source.documents():
        for i, piece in enumerate(safe_chunks(doc)):
            pending.append((piece, i == 0, i == 0 and n_docs > 0))
            pending_chars += len(piece)
        n_docs += 1
        if pending_chars >= BATCH_CHARS:
            yield from flush()
            pending, pending_chars = [], 0
    if pending:
        yield from flush()


def split_tokens(
    shard_or_tokens: TokenShard | np.ndarray | Sequence[int] | torch.Tensor,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, np.ndarray]:
    """Cut tokens into "train"/"val"/"test" views by ``fractions`` of the tokens, deterministically.

    For a shard with several documents the cuts snap to the nearest document starts, so no
    document is split across two parts; otherwise they fall at the exact positions. The parts are
    contiguous views of the same array (no copies), in corpus order.
    """
    fractions = [float(f) for f in fractions]
    if not 1 <= len(fractions) <= 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {fractions} must be 1-3 non-negative numbers summing to 1")
    if isinstance(shard_or_tokens, TokenShard):
        tokens, doc_starts = shard_or_tokens.tokens, shard_or_tokens.doc_starts
    else:
        tokens = shard_or_tokens.numpy() if isinstance(shard_or_tokens, torch.Tensor) else shard_or_tokens
        tokens, doc_starts = np.asarray(tokens), np.zeros(1, dtype=np.int64)
    n = len(tokens)
    positive = [i for i, f in enumerate(fractions) if f > 0]
    # Ideal cut positions between the parts that were asked for (zero-fraction parts stay empty).
    targets = np.cumsum([fractions[i] for i in positive])[:-1] * n
    starts = np.asarray(doc_starts[1:], dtype=np.int64)  # where a cut keeps documents whole
    if len(starts) >= len(targets) > 0:
        cuts, lo = [], 0
        for k, target in enumerate(targets):
            # Nearest document start, leaving one later start for each cut still to make, so no
            # part that was asked for comes out empty.
            hi = len(starts) - (len(targets) - 1 - k)
            j = lo + int(np.abs(starts[lo:hi] - target).argmin())
            cuts.append(int(starts[j]))
            lo = j + 1
    else:
        cuts = [int(round(t)) for t in targets]
    ends = iter([*cuts, n])
    parts, begin = {}, 0
    for i in range(len(fractions)):
        end = next(ends) if fractions[i] > 0 else begin
        parts[SPLIT_NAMES[i]] = tokens[begin:end]
        begin = end
    return parts


class SlidingWindowDataset(Dataset):
    """(input_ids, target_ids) windows of ``max_length`` tokens every ``stride`` tokens.

    Window ``i`` starts at ``i * stride``; the targets are the inputs shifted by one token. The
    windows are sliced from ``tokens`` on demand (a memmap stays a memmap), never stored.
    """

    def __init__(self, tokens: np.ndarray | Sequence[int] | torch.Tensor, max_length: int, stride: int):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a whole number >= 1, got {max_length!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"stride must be a whole number >= 1, got {stride!r}")
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens, dtype=np.int64)
        if self.tokens.ndim != 1:
            raise DataError(f"tokens must be a flat sequence of ids, got shape {tuple(self.tokens.shape)}")
        self.max_length = max_length
        self.stride = stride
        n = len(self.tokens)
        if n < max_length + 1:
            raise DataError(
                f"corpus has {n} tokens, fewer than max_length + 1 = {max_length + 1} needed for one "
                "window; use a smaller max_length (context length) or a longer corpus"
            )
        self._length = (n - max_length - 1) // stride + 1

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"window {index} out of range for {self._length} windows")
        start = index * self.stride
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.max_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]  # (max_length,), (max_length,)

    def __getstate__(self) -> dict[str, Any]:
        # A memmap would pickle as a full in-memory copy; worker processes reopen the file instead.
        state = dict(self.__dict__)
        base = self.tokens
        if isinstance(base, np.memmap) and getattr(base, "filename", None):
            state["tokens"] = ("memmap", base.filename, base.dtype.str, base.offset, base.shape)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens and tokens[0] == "memmap":
            _, filename, dtype, offset, shape = tokens
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


def create_dataloader(
    tokens_or_text_or_dataset: str | np.ndarray | Sequence[int] | torch.Tensor | TokenShard | Dataset,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> DataLoader:
    """A ``DataLoader`` of (input_ids, target_ids) batches, each ``(batch_size, max_length)``.

    Text is encoded with ``tokenizer`` (default GPT-2, ``<|endoftext|>`` allowed); tokens and shards
    are wrapped in a ``SlidingWindowDataset``; a dataset is used as is. ``seed`` makes the
    shuffle order reproducible.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    data = tokens_or_text_or_dataset
    if isinstance(data, str):
        data = (tokenizer or get_tokenizer("gpt2")).encode(data)
    if isinstance(data, TokenShard):
        data = data.tokens
    dataset = data if isinstance(data, Dataset) else SlidingWindowDataset(data, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise DataError(
            f"only {len(dataset)} window(s) of {max_length} tokens, fewer than batch_size {batch_size}, so "
            "drop_last would leave no batch; lower batch_size, max_length or stride, or use more text"
        )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )


def input_embeddings(
    batch_ids: torch.Tensor, tok_emb: torch.nn.Embedding, pos_emb: torch.nn.Embedding
) -> torch.Tensor:
    """Token embedding plus absolute position embedding: the model's first step.

    ``batch_ids`` (batch, n_tokens) -> (batch, n_tokens, emb_dim); position ``t`` gets row ``t``
    of ``pos_emb``, the same for every sequence in the batch (broadcast).
    """
    if batch_ids.ndim != 2:
        raise DataError(f"batch_ids must be (batch, n_tokens), got shape {tuple(batch_ids.shape)}")
    n_tokens = batch_ids.shape[1]
    if n_tokens > pos_emb.num_embeddings:
        raise DataError(f"{n_tokens} tokens exceed the {pos_emb.num_embeddings} positions of pos_emb")
    if int(batch_ids.max()) >= tok_emb.num_embeddings or int(batch_ids.min()) < 0:
        raise DataError(f"token ids must lie in 0..{tok_emb.num_embeddings - 1}")
    token_vectors = tok_emb(batch_ids)  # (batch, n_tokens, emb_dim)
    position_vectors = pos_emb(torch.arange(n_tokens, device=batch_ids.device))  # (n_tokens, emb_dim)
    return token_vectors + position_vectors  # (batch, n_tokens, emb_dim)
