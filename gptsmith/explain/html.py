"""The explain report as one self-contained HTML page.

Pictures are embedded as ``data:image/png;base64`` URIs and the style sheet is inline: the page
loads no script, font, style or image from anywhere, so it opens offline and can be mailed as one
file. Every text from the model or the user is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from gptsmith.explain.attention import FocusView
from gptsmith.explain.compare import CompareView
from gptsmith.explain.embeddings import EmbeddingView
from gptsmith.explain.next_token import NextTokenView
from gptsmith.explain.pictures import Picture
from gptsmith.explain.tokens import TokenView

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.note { background: #fff4d6; padding: .4em .8em; border-left: 4px solid #e0a800; }
.tokens { line-height: 2.6; } .tok { display: inline-block; border: 1px solid #89a; border-radius: 3px;
  padding: 0 .25em; margin: 1px; background: #eef3fa; font-family: monospace; white-space: pre;
  line-height: 1.3; }
.tok small { display: block; color: #667; font-size: .7em; text-align: center; }
.simple .tok { background: #f3f7ee; border-color: #9a8; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
td, th { border: 1px solid #ddd; padding: .15em .45em; text-align: left; font-family: monospace; }
th { background: #f4f4f4; } figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
""".strip()


def picture_html(picture: Picture) -> str:
    """An ``<img>`` with the PNG inline, and its caption."""
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f'<figure><img alt="{escape(picture.title)}" width="{picture.width}" height="{picture.height}" '
        f'src="data:image/png;base64,{data}"><figcaption><b>{escape(picture.title)}.</b> '
        f"{escape(picture.caption)}</figcaption></figure>"
    )


def table_html(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def tokens_html(tokens: TokenView, simple: TokenView) -> str:
    def boxes(view: TokenView) -> str:
        return "".join(
            f'<span class="tok">{escape(p)}<small>{i}</small></span>'
            for p, i in zip(view.pieces, view.ids, strict=True)
        )

    return (
        f"<p>{len(tokens.ids)} tokens of the model's tokenizer <code>{escape(tokens.tokenizer)}</code> "
        "(each box is one token, its id below; ␣ is a space, ↵ a newline):</p>"
        f'<div class="tokens">{boxes(tokens)}</div>'
        f"<p>The simple word tokenizer ({escape(simple.tokenizer)}) cuts the same text into "
        f"{len(simple.ids)} words and punctuation marks, dropping the spaces:</p>"
        f'<div class="tokens simple">{boxes(simple)}</div>'
    )


def embeddings_html(view: EmbeddingView, picture: Picture) -> str:
    n, dim = view.shapes["input_embeddings"]
    neighbours = table_html(
        ["token", "id", "cosine"], [(nb.piece, nb.token_id, f"{nb.cosine:.3f}") for nb in view.neighbours]
    )
    return (
        f"<p>Each token id picks a row of the token-embedding table, each position a row of the "
        f"position-embedding table; their sum is the model's input. For this text: token embeddings "
        f"({n}, {dim}) + position embeddings ({n}, {dim}) = input embeddings ({n}, {dim}).</p>"
        f"{picture_html(picture)}"
        f"<p>Nearest neighbours of <code>{escape(view.neighbours_of)}</code> in the embedding table "
        f"(cosine similarity):</p>{neighbours}"
    )


def attention_html(
    focus: FocusView, labels: Sequence[str], max_error: float, pictures: Sequence[Picture]
) -> str:
    rows = [
        (f"layer {layer}", f"head {head}", ", ".join(f"{p} {labels[p]} ({w:.2f})" for p, w in top))
        for layer, heads in enumerate(focus.top)
        for head, top in enumerate(heads)
    ]
    return (
        f"<p>The weights were recomputed from each attention module's own projections on the input it "
        f"received, and reproduce the module's real output within {max_error:.1e}.</p>"
        + "".join(picture_html(p) for p in pictures)
        + f"<p>Token {focus.position} (<code>{escape(labels[focus.position])}</code>) attends most to:</p>"
        + table_html(["layer", "head", "earlier tokens (position piece (weight))"], rows)
    )


def next_token_html(view: NextTokenView, labels: Sequence[str], picture: Picture) -> str:
    rows = [
        (
            i,
            labels[i],
            ", ".join(f"{c.piece} {c.probability:.3f}" for c in row),
            labels[i + 1] if i + 1 < len(labels) else "",
        )
        for i, row in enumerate(view.top_k)
    ]
    loss = (
        f"<p>Cross-entropy of the text: <b>{view.loss:.3f}</b> nats per token, perplexity "
        f"<b>{view.perplexity:.1f}</b>.</p>"
        if view.loss is not None
        else "<p>One token: no loss.</p>"
    )
    return (
        table_html(["position", "token", f"top {len(view.top_k[0])} next tokens", "actual next"], rows)
        + picture_html(picture)
        + loss
    )


def compare_html(view: CompareView, picture: Picture | None) -> str:
    if view.random_loss is None or view.trained_loss is None or picture is None:
        return "<p>One token: nothing to score.</p>"
    return (
        f"<p>Loss with random weights: <b>{view.random_loss:.3f}</b> (ln of the vocabulary size is "
        f"{view.uniform_loss:.3f}: a model that knows nothing spreads its bets evenly). With this model's "
        f"weights: <b>{view.trained_loss:.3f}</b>.</p>" + picture_html(picture)
    )


def page_html(
    title: str, facts: Sequence[str], notes: Sequence[str], sections: Sequence[tuple[str, str]]
) -> str:
    """The whole page: a title, a list of facts, notes, then one ``<h2>`` section per (heading, html)."""
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>",
    ]
    parts += [f'<p class="note">{escape(n)}</p>' for n in notes]
    parts += [f"<h2>{escape(heading)}</h2>{body}" for heading, body in sections]
    return "".join(parts) + "</body></html>\n"
