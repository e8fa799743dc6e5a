"""Stage 2, embeddings: the vectors the model starts from, a 2-D PCA map of them, nearest neighbours.

The model's input for token ``i`` is ``tok_emb[id_i] + pos_emb[i]``: the token's row of the
embedding table plus its position's row. The picture projects token rows (the text's tokens, or
chosen words) onto their first two principal components, the seeds' word-vector scatter made from
the model's own table; neighbours are the table's rows closest by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gptsmith.data.tokenizer import Tokenizer
from gptsmith.errors import GptsmithError
from gptsmith.explain.tokens import piece_text
from gptsmith.model.gpt import GPTModel


@dataclass(frozen=True)
class Neighbour:
    token_id: int
    piece: str
    cosine: float


@dataclass(frozen=True)
class EmbeddingView:
    """Shapes of the embeddings for the text, a 2-D PCA of some token vectors, and neighbours."""

    shapes: dict[str, list[int]]  # token / position / input embeddings: [n_tokens, emb_dim]
    source: str  # "text" (the text's distinct tokens) or "words" (--words)
    labels: list[str]  # one per point
    point_ids: list[list[int]]  # token ids behind each point (a word of several tokens: their mean)
    coords: list[list[float]]  # (n_points, 2): the PCA projection
    explained_variance: list[float]  # share of the variance along each of the two axes
    neighbours_of: str
    neighbours: list[Neighbour]

    def as_dict(self) -> dict:
        return {
            "shapes": self.shapes,
            "source": self.source,
            "labels": self.labels,
            "point_ids": self.point_ids,
            "pca_2d": self.coords,
            "explained_variance": self.explained_variance,
            "neighbours_of": self.neighbours_of,
            "neighbours": [n.__dict__ for n in self.neighbours],
        }


def word_ids(tokenizer: Tokenizer, word: str) -> list[int]:
    """The token ids of ``word`` as it appears inside a sentence.

    BPE marks a word after a space with the space (``" king"`` is one GPT-2 token, ``"king"``
    another), so the spaced form is tried first; the first form that is a single token wins, and
    otherwise the spaced form's tokens are returned (their vectors are averaged).
    """
    word = word.strip()
    if not word:
        raise GptsmithError("an empty word in --words (give words separated by commas, e.g. king,queen)")
    forms = [tokenizer.encode(" " + word), tokenizer.encode(word)]
    for ids in forms:
        if len(ids) == 1:
            return ids
    return forms[0] or forms[1]


def pca_2d(vectors: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project (n, d) vectors onto their first two principal components: ((n, 2), variance shares)."""
    centred = vectors.float() - vectors.float().mean(dim=0, keepdim=True)  # (n, d)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(n, d), d)
    axes = vh[:2]
    coords = centred @ axes.T  # (n, <=2)
    if coords.shape[1] < 2:  # one point: a single (zero) component
        coords = torch.nn.functional.pad(coords, (0, 2 - coords.shape[1]))
    total = float((singular**2).sum())
    shares = [float(s**2) / total if total > 0 else 0.0 for s in singular[:2]]
    return coords, shares + [0.0] * (2 - len(shares))


def nearest_neighbours(
    table: torch.Tensor,
    vector: torch.Tensor,
    tokenizer: Tokenizer,
    *,
    k: int = 8,
    exclude: Sequence[int] = (),
) -> list[Neighbour]:
    """The ``k`` rows of ``table`` (vocab, d) most similar to ``vector`` by cosine, ``exclude`` left out.

    Only ids the tokenizer has are considered (a padded vocabulary's extra rows are not words).
    """
    rows = table[: tokenizer.vocab_size].float()  # (vocab, d)
    cosine = (rows @ vector.float()) / (rows.norm(dim=1) * vector.float().norm()).clamp_min(1e-12)  # (vocab,)
    cosine[list(exclude)] = -2.0
    values, ids = cosine.topk(min(k, rows.shape[0] - len(set(exclude))))
    return [
        Neighbour(int(i), piece_text(tokenizer, int(i)), round(float(v), 4))
        for v, i in zip(values, ids, strict=True)
    ]


@torch.no_grad()
def embedding_view(
    model: GPTModel,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    *,
    words: Sequence[str] | None = None,
    neighbours_of: str | None = None,
    n_neighbours: int = 8,
) -> EmbeddingView:
    """Embeddings of the text ``ids`` (shapes), a PCA map of its distinct tokens (or of ``words``),
    and the nearest neighbours of ``neighbours_of`` (default: the first word, or the last token)."""
    table = model.tok_emb.weight  # (vocab, emb_dim)
    n, dim = len(ids), model.cfg.emb_dim
    shapes = {"token_embeddings": [n, dim], "position_embeddings": [n, dim], "input_embeddings": [n, dim]}
    if words:
        point_ids = [word_ids(tokenizer, w) for w in words]
        labels = [w.strip() for w in words]
        source = "words"
    else:
        distinct = list(dict.fromkeys(int(i) for i in ids))  # first-appearance order
        point_ids = [[i] for i in distinct]
        labels = [piece_text(tokenizer, i) for i in distinct]
        source = "text"
    vectors = torch.stack([table[p].float().mean(dim=0) for p in point_ids])  # (n_points, emb_dim)
    coords, shares = pca_2d(vectors)
    if neighbours_of is not None:
        if not neighbours_of.strip():
            raise GptsmithError("--neighbours is empty: give the word whose neighbours to list, e.g. king")
        target_ids = word_ids(tokenizer, neighbours_of)
        target_label = neighbours_of.strip()
    elif words:
        target_ids, target_label = point_ids[0], labels[0]
    else:
        target_ids, target_label = [int(ids[-1])], piece_text(tokenizer, int(ids[-1]))
    target = table[target_ids].float().mean(dim=0)  # (emb_dim,)
    neighbours = nearest_neighbours(table, target, tokenizer, k=n_neighbours, exclude=target_ids)
    return EmbeddingView(
        shapes=shapes,
        source=source,
        labels=labels,
        point_ids=point_ids,
        coords=[[round(float(x), 5) for x in row] for row in coords],
        explained_variance=shares,
        neighbours_of=target_label,
        neighbours=neighbours,
    )
