"""The KV cache of a running batch whose rows come and go: continuous batching's memory.

Every live request owns one row of one preallocated cache. The rows are *right-aligned*: each
row's newest position is the same column (``length``), so one decode step writes every row's new
key and value at that column — exactly how ``generate`` decodes a batch of left-padded prompts
(``KVCache`` + ``attention_mask`` + ``position_ids``). What differs is that rows start at
different columns (``starts``): a row that joins later starts further right, and the columns
before its start are hidden by the attention mask, whatever an earlier request left there. A
row's positions count from its own start, so it sees the positions 0, 1, 2... it would see alone.

::

    columns   0    1    2    3    4    5    6    length=7
    row 0     p    p    p    g    g    g    g  |  <- joined first (3-token prompt)
    row 1     .    .    .    p    p    g    g  |  <- joined at column 5 (2-token prompt)
    row 2     .    .    .    .    .    p    p  |  <- just prefilled

When ``length`` reaches the allocated columns, every row is shifted left by the smallest start
(a copy of the cache, rarely needed); the allocation grows only when that frees nothing. A row
that leaves is replaced by the last row, so the live rows are always ``0 .. n_rows - 1`` and a
decode step reads them as one view, without gathering.
"""

from __future__ import annotations

import torch

from gptsmith.errors import GptsmithError
from gptsmith.model.attention import KVCache


class BatchCache:
    """Rows of a continuous batch: ``add_row`` prefills a prompt, ``step`` decodes one token for
    every row, ``remove_row`` frees a row. Rows are numbered ``0 .. n_rows - 1``.

    ``max_span`` is the most positions one row may hold (prompt + new tokens, at most the model's
    context); columns are allocated as needed up to ``max_span`` plus a quarter for slack.
    """

    def __init__(self, model: torch.nn.Module, max_rows: int, max_span: int, initial_columns: int = 256):
        if max_span > model.cfg.context_length:
            raise GptsmithError(
                f"max_span {max_span} is longer than the model's context_length {model.cfg.context_length}"
            )
        self.model = model
        self.max_rows = max_rows
        self.max_span = max_span
        self.column_limit = max_span + max(16, max_span // 4)
        self.store: KVCache = model.new_cache(max_rows, max_length=min(initial_columns, self.column_limit))
        self.starts: list[int] = []  # first column of each live row
        self.length = 0  # columns filled; every row's newest position is column length - 1

    @property
    def n_rows(self) -> int:
        return len(self.starts)

    @property
    def columns(self) -> int:
        """Columns allocated (grows on demand)."""
        return self.store.max_length

    def add_row(self, prompt_ids: list[int]) -> torch.Tensor:
        """Prefill ``prompt_ids`` into a new last row; returns its next-token logits (vocab_size,), fp32."""
        return self.add_rows([prompt_ids])[0]

    def add_rows(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill several prompts into new last rows with one forward pass (the weights are read once
        for all of them); returns their next-token logits (len(prompts), vocab_size), fp32.

        The prompts are left-padded to the longest; a padded column of a row lies before the row's
        start, so it is masked from then on, like any column left of a start.
        """
        lengths = [len(p) for p in prompts]
        if not prompts or not all(0 < n <= self.max_span for n in lengths):
            raise GptsmithError(f"a prompt must have 1 to {self.max_span} tokens, got {lengths}")
        if self.n_rows + len(prompts) > self.max_rows:
            raise GptsmithError(f"the batch is full ({self.max_rows} rows)")
        if self.n_rows == 0:
            self.length = 0
        longest = max(lengths)
        if longest > self.length:  # the prompts need more columns to their left than there are: shift right
            if longest > self.columns:
                self._grow(longest)
            self._shift(longest - self.length)
        first, device = self.n_rows, self.store.keys.device
        view = self.store.view_rows(first, first + len(prompts), length=self.length - longest)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)  # (k, longest), left-padded
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        starts = [self.length - n for n in lengths]
        mask = positions = None
        if len(prompts) > 1 or starts[0] > 0:  # hide the columns left of each row's start
            starts_t = torch.tensor(starts).unsqueeze(1)  # (k, 1)
            mask = (torch.arange(self.length).unsqueeze(0) >= starts_t).long().to(device)  # (k, length)
            offsets = torch.tensor([longest - n for n in lengths]).unsqueeze(1)  # (k, 1) padding per row
            positions = (torch.arange(longest).unsqueeze(0) - offsets).clamp(min=0).to(device)  # (k, longest)
        logits = self.model(ids.to(device), cache=view, attention_mask=mask, position_ids=positions,
                            last_token_only=True)
        self.starts.extend(starts)
        return logits[:, -1].float()  # (k, vocab_size)

    def step(self, token_ids: list[int]) -> torch.Tensor:
        """Feed one token per row (row order); returns next-token logits (n_rows, vocab_size), float32."""
        n_rows = self.n_rows
        if len(token_ids) != n_rows or n_rows == 0:
            raise GptsmithError(f"step needs one token for each of the {n_rows} rows, got {len(token_ids)}")
        if self.length >= self.columns and min(self.starts) > 0:
            self._shift(-min(self.starts))  # drop the columns no live row uses
        if self.length >= self.columns:
            self._grow(self.length + 1)
        device = self.store.keys.device
        view = self.store.view_rows(0, n_rows, length=self.length)
        ids = torch.tensor(token_ids, dtype=torch.long, device=device).unsqueeze(1)  # (n_rows, 1)
        mask = positions = None
        if any(self.starts):
            starts = torch.tensor(self.starts, device=device).unsqueeze(1)  # (n_rows, 1)
            columns = torch.arange(self.length + 1, device=device).unsqueeze(0)  # (1, length + 1)
            mask = (columns >= starts).long()  # (n_rows, length + 1)
            positions = self.length - starts  # (n_rows, 1)
        logits = self.model(ids, cache=view, attention_mask=mask, position_ids=positions,
                            last_token_only=True)
        self.length += 1
        return logits[:, -1].float()  # (n_rows, vocab_size)

    def remove_row(self, row: int) -> int | None:
        """Free ``row``; the last row moves into it. Returns the old index of the row that moved (or None)."""
        last = self.n_rows - 1
        if not 0 <= row <= last:
            raise GptsmithError(f"no row {row} (the batch has {self.n_rows})")
        moved = None
        if row != last:
            start = self.starts[last]
            for tensor in (self.store.keys, self.store.values):
                tensor[:, row, :, start : self.length] = tensor[:, last, :, start : self.length]
            self.starts[row] = start
            moved = last
        self.starts.pop()
        if not self.starts:
            self.length = 0
        return moved

    def _grow(self, columns: int) -> None:
        """Allocate at least ``columns`` columns (at least double), keeping what is stored."""
        new_columns = min(self.column_limit, max(columns, 2 * self.columns))
        if columns > new_columns:
            raise GptsmithError(f"the batch cache cannot hold {columns} columns (limit {self.column_limit})")
        old = self.store
        self.store = self.model.new_cache(self.max_rows, max_length=new_columns, dtype=old.keys.dtype)
        self.store.keys[:, :, :, : self.length] = old.keys[:, :, :, : self.length]
        self.store.values[:, :, :, : self.length] = old.values[:, :, :, : self.length]

    def _shift(self, by: int) -> None:
        """Move every live row's columns ``by`` to the right (negative: to the left)."""
        if by == 0:
            return
        n_rows, length = self.n_rows, self.length
        if n_rows:
            lo = min(self.starts)
            for tensor in (self.store.keys, self.store.values):
                # clone: source and destination overlap
                tensor[:, :n_rows, :, lo + by : length + by] = tensor[:, :n_rows, :, lo:length].clone()
        self.starts = [s + by for s in self.starts]
        self.length = length + by
