"""A GPT with a classification head read at each text's last real token, and its batches.

Why the last real token: in a causal model only the last position has attended to every token
of the text. Batches are padded on the right, only to their own longest text, so a text's real
tokens sit at positions ``0 .. length-1``; the causal mask already hides the padding after them
from every real token, so no padding mask is needed and attention keeps its fused causal kernel.
The final norm and the head run on one vector per text: the vocabulary head is never computed.
The last block, too, computes only what the last real token needs: keys and values at every
position, but the query, attention output, out-projection and feed-forward at that one position
(the outputs of the last block at the other positions would feed nothing).

Data flow::

    token ids (batch, n_tokens), lengths (batch,)
      -> GPT embeddings and all blocks but the last     (batch, n_tokens, emb_dim)
      -> last block, for position length-1 of each row  (batch, emb_dim)
      -> final LayerNorm -> linear head                 (batch, n_classes)
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptsmith.model.gpt import GPTModel, TransformerBlock

PAD_ID = 0  # any valid id: padding sits after the last real token, so no real token ever sees it


class GPTClassifier(nn.Module):
    """``gpt`` (a ``GPTModel``, its vocabulary head unused) plus ``head``: emb_dim -> n_classes."""

    def __init__(self, gpt: GPTModel, n_classes: int) -> None:
        super().__init__()
        self.gpt = gpt
        weight = gpt.tok_emb.weight
        self.head = nn.Linear(gpt.cfg.emb_dim, n_classes, device=weight.device, dtype=weight.dtype)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def features(self, token_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The final-normed hidden state at each row's last real token: (batch, emb_dim).

        ``lengths`` (batch,) are the rows' real lengths (default: every row is all real tokens).
        """
        gpt = self.gpt
        gpt._check_input(token_ids, None, None)
        n_tokens = token_ids.shape[1]
        if lengths is None:
            lengths = torch.full((token_ids.shape[0],), n_tokens, dtype=torch.long)
        positions = torch.arange(n_tokens, device=token_ids.device)
        x = gpt.drop_emb(gpt.tok_emb(token_ids) + gpt.pos_emb(positions))  # (batch, n_tokens, emb_dim)
        for block in gpt.trf_blocks[:-1]:
            x = block(x)
        last = last_token_block(gpt.trf_blocks[-1], x, lengths.to(x.device))  # (batch, emb_dim)
        return gpt.final_norm(last)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (batch, n_classes) for right-padded ``token_ids`` with real ``lengths``
        (default: no padding)."""
        return self.head(self.features(token_ids, lengths))


def last_token_block(block: TransformerBlock, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``block(x)`` at position ``lengths - 1`` of each row only.

    (batch, n_tokens, emb_dim) -> (batch, emb_dim).

    The same computation as ``TransformerBlock.forward`` (and ``MultiHeadAttention``'s fused
    ``[queries | keys | values]`` layout) restricted to one query per row, which attends to the
    row's real tokens; the tests check it against the full block.
    """
    att = block.att
    batch, n_tokens, _ = x.shape
    rows = torch.arange(batch, device=x.device)
    last = lengths - 1
    qkv = att.qkv(block.norm1(x)).view(batch, n_tokens, 3, att.n_heads, att.head_dim)
    queries = qkv[rows, last, 0].unsqueeze(2)  # (batch, n_heads, 1, head_dim)
    keys = qkv[:, :, 1].transpose(1, 2)  # (batch, n_heads, n_tokens, head_dim)
    values = qkv[:, :, 2].transpose(1, 2)
    visible = torch.arange(n_tokens, device=x.device) < lengths[:, None]  # (batch, n_tokens)
    context = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=visible[:, None, None, :],
        dropout_p=att.dropout if att.training else 0.0)  # (batch, n_heads, 1, head_dim)
    h = x[rows, last] + block.drop_shortcut(att.out_proj(context.reshape(batch, att.d_out)))  # (batch, emb)
    return h + block.drop_shortcut(block.ff(block.norm2(h)))


@dataclass
class EncodedTexts:
    """Token ids of each text (truncated to ``max_length``) and class ids; ``truncated`` counts cuts."""

    ids: list[list[int]]
    labels: list[int]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def encode_texts(texts: Sequence[str], tokenizer, max_length: int,
                 labels: Sequence[int] | None = None) -> EncodedTexts:
    """Encode ``texts``, keeping the first ``max_length`` tokens of longer ones (counted)."""
    if hasattr(tokenizer, "encode_batch"):
        all_ids = tokenizer.encode_batch(list(texts))
    else:
        all_ids = [tokenizer.encode(text) for text in texts]
    truncated = sum(1 for ids in all_ids if len(ids) > max_length)
    all_ids = [list(ids[:max_length]) or [PAD_ID] for ids in all_ids]
    return EncodedTexts(all_ids, list(labels) if labels is not None else [0] * len(all_ids), truncated)


def pad_batch(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: ids (batch, longest) and lengths (batch,)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, lengths


def batch_order(lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                pool_batches: int = 32) -> list[list[int]]:
    """Indices grouped into batches of similar lengths (less padding), in random order if ``shuffle``.

    Training shuffles the texts, sorts each pool of ``pool_batches`` batches' worth by length,
    cuts it into batches and shuffles the batches: every epoch sees every text once, in a new
    order, with little padding. Evaluation sorts everything by length.
    """
    indices = list(range(len(lengths)))
    rng = random.Random(seed)
    if not shuffle:
        indices.sort(key=lambda i: lengths[i])
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(indices)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(indices), pool):
        chunk = sorted(indices[start:start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def iterate_batches(data: EncodedTexts, batch_size: int, *, shuffle: bool, seed: int = 0
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ids (batch, longest), lengths (batch,), labels (batch,)) over ``data``, dynamically padded."""
    for indices in batch_order([len(ids) for ids in data.ids], batch_size, shuffle=shuffle, seed=seed):
        ids, lengths = pad_batch([data.ids[i] for i in indices])
        yield ids, lengths, torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
