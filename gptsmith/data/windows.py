"""From a corpus to batches: token shards on disk, train/val/test splits, sliding windows, loaders.

The path of the data, step by step:

1. ``resolve_corpus`` (in ``gptsmith.data.corpus``) says where the documents come from.
2. ``prepare_corpus`` (in ``gptsmith.data.shards``) tokenizes them once into a *token shard*: a flat
   ``uint16`` array on disk (``tokens.bin``, read back as a ``np.memmap``) with documents joined
   by ``<|endoftext|>``, the start of every document (``docs.npy``) and a small ``meta.json``
   (tokenizer, counts, source, checksum). Re-running on an unchanged corpus reuses the shard.
3. ``split_tokens`` cuts it into train/val/test views (no copies).
4. ``SlidingWindowDataset`` serves (input, target) windows computed on the fly from the memmap,
   so memory stays at the size of the token array however small the stride.
5. ``create_dataloader`` batches them; ``input_embeddings`` is the model's first step.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptsmith.data.corpus import CorpusSource, resolve_corpus
from gptsmith.data.shards import TokenShard, prepare_corpus, token_dtype
from gptsmith.data.token_ids import token_id_array
from gptsmith.data.tokenizer import Tokenizer, as_tokenizer
from gptsmith.device import check_seed
from gptsmith.errors import ConfigError, DataError

__all__ = [
    "CorpusSource",
    "SlidingWindowDataset",
    "count_windows",
    "TokenShard",
    "create_dataloader",
    "input_embeddings",
    "prepare_corpus",
    "resolve_corpus",
    "split_tokens",
    "token_dtype",
]

SPLIT_NAMES = ("train", "val", "test")


def check_split_fractions(fractions: Sequence[float]) -> list[float]:
    """``fractions`` as floats; a ``ConfigError`` unless they are 1-3 non-negative numbers summing to 1."""
    fractions = [float(f) for f in fractions]
    if not all(math.isfinite(f) for f in fractions):  # nan compares false with everything: check first
        raise ConfigError(f"split fractions {fractions} must be finite numbers (e.g. 0.8,0.1,0.1)")
    if not 1 <= len(fractions) <= 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {fractions} must be 1-3 non-negative numbers summing to 1")
    return fractions


def split_tokens(
    shard_or_tokens: TokenShard | np.ndarray | Sequence[int] | torch.Tensor,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, np.ndarray]:
    """Cut tokens into "train"/"val"/"test" views by ``fractions`` of the tokens, deterministically.

    For a shard with several documents the cuts snap to the nearest document starts, so no
    document is split across two parts; otherwise they fall at the exact positions. The parts are
    contiguous views of the same array (no copies), in corpus order.
    """
    fractions = check_split_fractions(fractions)
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


def count_windows(n_tokens: int, max_length: int, stride: int) -> int:
    """How many (input, target) windows of ``max_length`` tokens, ``stride`` apart, fit in ``n_tokens``."""
    return max(0, (n_tokens - max_length - 1) // stride + 1)


class SlidingWindowDataset(Dataset):
    """(input_ids, target_ids) windows of ``max_length`` tokens every ``stride`` tokens.

    Window ``i`` starts at ``i * stride``; the targets are the inputs shifted by one token. The
    windows are sliced from ``tokens`` on demand (a memmap stays a memmap), never stored.
    """

    def __init__(self, tokens: np.ndarray | Sequence[int] | torch.Tensor, max_length: int, stride: int):
        max_length = whole_number("max_length", max_length)
        stride = whole_number("stride", stride)
        self.tokens = token_id_array(tokens, "tokens")
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
        self._length = count_windows(n, max_length, stride)

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

    def batch(self, indices: np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` stacked in one gather: (inputs, targets), each (len(indices), max_length).

        The same windows as ``__getitem__`` (the trainer draws its batches this way, without a
        DataLoader, so that its data position is two integers it can checkpoint).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._length):
            raise IndexError(f"window indices must be in 0..{self._length - 1}, "
                             f"got {indices.min()}..{indices.max()}")
        starts = indices * self.stride
        offsets = np.arange(self.max_length + 1)
        rows = np.asarray(self.tokens[starts[:, None] + offsets[None, :]], dtype=np.int64)  # (batch, L + 1)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def __getstate__(self) -> dict[str, Any]:
        # A memmap would pickle as a full in-memory copy; worker processes reopen the file instead.
        state = dict(self.__dict__)
        location = _memmap_location(self.tokens)
        if location is not None:
            state["tokens"] = ("memmap", *location)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens and tokens[0] == "memmap":
            _, filename, dtype, offset, shape = tokens
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


def whole_number(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int (numpy integers too) if it is a whole number >= ``minimum``, else a ConfigError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {number}")
    return number


def _memmap_location(tokens: np.ndarray) -> tuple[str, str, int, tuple[int, ...]] | None:
    """(filename, dtype, byte offset in the file, shape) of a contiguous view of a file memmap, else None.

    A slice of a memmap (a split) keeps its parent's ``offset`` attribute, so the view's own start
    in the file is worked out from how far its data lies past the mapped file's.
    """
    root = tokens
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not isinstance(root, np.memmap) or not getattr(root, "filename", None):
        return None
    if not tokens.flags.c_contiguous:
        return None
    past_root = tokens.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return root.filename, tokens.dtype.str, root.offset + past_root, tokens.shape


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
    batch_size = whole_number("batch_size", batch_size)
    data = tokens_or_text_or_dataset
    if isinstance(data, str):
        data = as_tokenizer(tokenizer or "gpt2").encode(data)
    if isinstance(data, TokenShard):
        data = data.tokens
    dataset = data if isinstance(data, Dataset) else SlidingWindowDataset(data, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise DataError(
            f"only {len(dataset)} window(s) of {max_length} tokens, fewer than batch_size {batch_size}, so "
            "drop_last would leave no batch; lower batch_size, max_length or stride, or use more text"
        )
    generator = torch.Generator().manual_seed(check_seed(seed)) if seed is not None else None
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
