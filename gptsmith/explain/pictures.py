"""The pictures of the explain report, drawn with matplotlib's Agg backend into PNG bytes.

Every function takes the numbers of one stage and returns a ``Picture``: PNG bytes of a fixed
pixel size (no "tight" cropping, so the size is known before drawing) and a caption. Matplotlib is
imported only inside the functions that draw, and only its object API is used (no pyplot, no
global figure state, no window ever opened).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gptsmith.explain.compare import CompareView
from gptsmith.explain.embeddings import EmbeddingView
from gptsmith.explain.next_token import NextTokenView

DPI = 100


@dataclass(frozen=True)
class Picture:
    """One PNG image of the report: ``width`` x ``height`` pixels."""

    name: str
    title: str
    caption: str
    png: bytes
    width: int
    height: int
    missing_glyphs: frozenset[str] = field(default=frozenset())  # characters drawn as empty boxes


def draw(name: str, title: str, caption: str, size: tuple[int, int], paint: Callable[[Any], None]) -> Picture:
    """A ``size`` (width, height) pixel PNG of what ``paint(figure)`` draws on a fresh Agg figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # Matplotlib warns of a character its font lacks every time it lays a label out (24 lines for
    # a short Japanese text): collected here, and said once for the whole report (ExplainReport).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paint(figure)
        # No "Software" entry: the default names matplotlib's web site, and the report carries no URLs.
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    missing = set()
    for warning in caught:
        glyph = _MISSING_GLYPH.search(str(warning.message))
        if glyph:
            missing.add(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return Picture(name, title, caption, buffer.getvalue(), width, height, frozenset(missing))


_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def _tick_labels(ax: Any, labels: Sequence[str], axis: str, most: int = 40) -> None:
    """Label an axis with token pieces, thinned to at most ``most`` labels."""
    step = max(1, -(-len(labels) // most))
    where = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(where, [labels[i] for i in where], rotation=90, fontsize=7)
    else:
        ax.set_yticks(where, [labels[i] for i in where], fontsize=7)


def embeddings_picture(view: EmbeddingView) -> Picture:
    """The 2-D PCA scatter of token (or word) vectors, labelled."""
    coords = np.asarray(view.coords, dtype=float).reshape(-1, 2)

    def paint(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.scatter(coords[:, 0], coords[:, 1], color="tab:blue", s=18)
        for (x, y), label in zip(coords, view.labels, strict=True):
            ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)
        share = view.explained_variance
        ax.set_xlabel(f"principal component 1 ({share[0]:.0%} of the variance)")
        ax.set_ylabel(f"principal component 2 ({share[1]:.0%})")
        ax.grid(alpha=0.3)
        fig.tight_layout()

    what = "the words you chose" if view.source == "words" else "the distinct tokens of the text"
    return draw(
        "embeddings",
        "Token embeddings, 2-D PCA",
        f"Rows of the model's token-embedding table for {what}, projected onto their first two "
        "principal components: tokens used alike end up close together.",
        (700, 550),
        paint,
    )


def attention_grid_picture(weights: torch.Tensor) -> Picture:
    """Every layer (rows) and head (columns) as a small heatmap; empty upper triangles: the causal mask."""
    n_layers, n_heads, n, _ = weights.shape
    gap = max(1, n // 8)
    mosaic = np.full((n_layers * (n + gap) - gap, n_heads * (n + gap) - gap), np.nan)
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    for layer in range(n_layers):
        for head in range(n_heads):
            cell = weights[layer, head].numpy().astype(float).copy()
            cell[future] = np.nan
            top, left = layer * (n + gap), head * (n + gap)
            mosaic[top : top + n, left : left + n] = cell
    width = 900
    height = int(min(1800, max(300, width * mosaic.shape[0] / mosaic.shape[1] + 80)))

    def paint(fig: Any) -> None:
        from matplotlib import colormaps
        from matplotlib.colors import PowerNorm

        cmap = colormaps["viridis"].with_extremes(bad="white")
        ax = fig.add_subplot()
        image = ax.imshow(
            mosaic, cmap=cmap, norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest", aspect="auto"
        )
        ax.set_xticks(
            [h * (n + gap) + n / 2 for h in range(n_heads)], [f"h{h}" for h in range(n_heads)], fontsize=7
        )
        ax.set_yticks(
            [la * (n + gap) + n / 2 for la in range(n_layers)],
            [f"layer {la}" for la in range(n_layers)],
            fontsize=7,
        )
        ax.tick_params(length=0)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="attention weight")
        fig.tight_layout()

    return draw(
        "attention_grid",
        "Attention weights of every layer and head",
        f"{n_layers} layers x {n_heads} heads. In each square, row i is the query token i and column j "
        "the key token j it attends to; each row sums to 1. The empty upper triangles are the causal "
        "mask: no token sees the future.",
        (width, height),
        paint,
    )


def attention_layer_picture(weights: torch.Tensor, labels: Sequence[str], layer: int) -> Picture:
    """One layer's attention averaged over its heads, with the tokens on both axes."""
    mean = weights[layer].mean(dim=0).numpy().astype(float)  # (n, n)
    mean[np.triu(np.ones_like(mean, dtype=bool), k=1)] = np.nan

    def paint(fig: Any) -> None:
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="white")
        ax = fig.add_subplot()
        image = ax.imshow(mean, cmap=cmap, vmin=0, interpolation="nearest")
        _tick_labels(ax, labels, "x")
        _tick_labels(ax, labels, "y")
        ax.set_xlabel("key (attended-to) token")
        ax.set_ylabel("query token")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        fig.tight_layout()

    return draw(
        f"attention_layer{layer}",
        f"Layer {layer}, mean over heads",
        "The same weights with the tokens written out (mean of the layer's heads).",
        (720, 680),
        paint,
    )


def focus_picture(weights: torch.Tensor, labels: Sequence[str], position: int) -> Picture:
    """For one query position: its attention row in every layer and head (rows) over the earlier tokens."""
    n_layers, n_heads = weights.shape[:2]
    rows = weights[:, :, position, : position + 1].reshape(n_layers * n_heads, position + 1).numpy()
    height = int(min(1400, max(320, 12 * n_layers * n_heads + 160)))

    def paint(fig: Any) -> None:
        ax = fig.add_subplot()
        image = ax.imshow(rows, cmap="magma_r", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        _tick_labels(ax, list(labels[: position + 1]), "x")
        every = max(1, (n_layers * n_heads) // 48)
        names = [f"L{la} h{h}" for la in range(n_layers) for h in range(n_heads)]
        ax.set_yticks(range(0, len(names), every), names[::every], fontsize=6)
        ax.set_xlabel("earlier token")
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
        fig.tight_layout()

    return draw(
        "attention_focus",
        f"What token {position} ({labels[position]}) attends to",
        "Each row is one head's attention from the chosen token to itself and every earlier token.",
        (800, height),
        paint,
    )


def temperature_picture(view: NextTokenView) -> Picture:
    """The distribution after the last token at each temperature, side by side."""
    labels = view.last_pieces[::-1]

    def paint(fig: Any) -> None:
        axes = fig.subplots(1, len(view.temperatures), sharey=True)
        highest = max(max(probs) for probs in view.last_probabilities.values())
        colours = {True: "tab:orange", False: "tab:green"}
        for ax, t in zip(np.atleast_1d(axes), view.temperatures, strict=True):
            probs = view.last_probabilities[str(t)][::-1]
            ax.barh(range(len(labels)), probs, color="tab:blue" if t == 1 else colours[t < 1])
            for y, p in enumerate(probs):
                ax.annotate(
                    f"{p:.2g}", (p, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7
                )
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(0, min(1.0, highest * 1.3))
            ax.set_title(f"T = {t:g}  (entropy {view.entropies[str(t)]:.2f})", fontsize=9)
            ax.set_xlabel("probability")
        fig.tight_layout()

    return draw(
        "temperature",
        "Next token after the text, at three temperatures",
        "softmax(logits / T): T < 1 sharpens the distribution, T > 1 flattens it "
        "(the bars are the tokens most likely at T = 1).",
        (960, 400),
        paint,
    )


def compare_picture(view: CompareView, labels: Sequence[str]) -> Picture:
    """Per-token loss of the random and the trained model along the text."""
    targets = list(labels[1:])

    def paint(fig: Any) -> None:
        ax = fig.add_subplot()
        x = range(len(targets))
        ax.plot(
            x,
            view.random_losses,
            "o-",
            color="tab:gray",
            markersize=3,
            label=f"random weights (mean {view.random_loss:.2f})"
            if view.random_loss is not None
            else "random",
        )
        ax.plot(
            x,
            view.trained_losses,
            "o-",
            color="tab:blue",
            markersize=3,
            label=f"this model (mean {view.trained_loss:.2f})" if view.trained_loss is not None else "model",
        )
        ax.axhline(
            view.uniform_loss,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"ln(vocab size) = {view.uniform_loss:.2f}",
        )
        _tick_labels(ax, targets, "x")
        ax.set_ylabel("loss of the token (-log p)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()

    return draw(
        "random_vs_trained",
        "Random versus trained weights",
        "The loss of each token of the text (x axis: the token being predicted) under freshly initialised "
        "weights of the same size and under the model's weights.",
        (900, 420),
        paint,
    )
