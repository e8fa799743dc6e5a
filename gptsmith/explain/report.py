"""``explain(model, tokenizer, text)``: every stage for one text, as an ``ExplainReport``.

One forward pass of the model gives the logits (stage 4) and, through hooks, the attention
weights (stage 3); stages 1 and 2 need only the tokenizer and the embedding table; stage 5 runs a
freshly initialised model of the same config once. The report holds the numbers; its pictures are
drawn on first use; ``to_text``, ``to_json`` and ``to_html`` render it (``save_html``/``save_json``
write it atomically).
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptsmith.data.tokenizer import Tokenizer, as_tokenizer
from gptsmith.device import check_seed
from gptsmith.errors import GptsmithError, NonFiniteError
from gptsmith.explain import html, text
from gptsmith.explain.attention import FocusView, focus_view, run_with_attention
from gptsmith.explain.compare import CompareView, compare_view
from gptsmith.explain.embeddings import EmbeddingView, embedding_view
from gptsmith.explain.next_token import NextTokenView, next_token_view
from gptsmith.explain.pictures import (
    Picture,
    attention_grid_picture,
    attention_layer_picture,
    compare_picture,
    embeddings_picture,
    focus_picture,
    temperature_picture,
)
from gptsmith.explain.tokens import TokenView, simple_view, token_view, without_controls
from gptsmith.generate.decoding import non_finite_message
from gptsmith.model.gpt import GPTModel
from gptsmith.storage import atomic_write_text

WHITESPACE = "\t\n\r"  # the control characters a page shows as they are (as white space)

DEFAULT_MAX_TOKENS = 128  # beyond this the per-token pictures stop being readable


@dataclass
class ExplainReport:
    """The numbers behind every stage of one explained text (pictures drawn on demand)."""

    model_name: str
    config: dict
    text: str  # the text explained (after cropping)
    notes: list[str]
    tokens: TokenView
    simple: TokenView
    embeddings: EmbeddingView
    attention: torch.Tensor  # (n_layers, n_heads, n_tokens, n_tokens)
    attention_max_error: float  # recomputed vs actual attention output, max abs difference
    layer: int  # the layer drawn with its tokens written out
    focus: FocusView
    next_token: NextTokenView
    compare: CompareView
    _pictures: list[Picture] | None = field(default=None, repr=False)

    def pictures(self) -> list[Picture]:
        """The report's PNG pictures (drawn on the first call, then kept)."""
        if self._pictures is None:
            labels = self.tokens.pieces
            self._pictures = [
                embeddings_picture(self.embeddings),
                attention_grid_picture(self.attention),
                attention_layer_picture(self.attention, labels, self.layer),
                focus_picture(self.attention, labels, self.focus.position),
                temperature_picture(self.next_token),
            ]
            if self.compare.random_losses:
                self._pictures.append(compare_picture(self.compare, labels))
            missing = sorted(set().union(*(p.missing_glyphs for p in self._pictures)))
            if missing:  # one line for the report, not matplotlib's one per label and picture
                shown = "".join(missing[:10]) + ("…" if len(missing) > 10 else "")
                warnings.warn(f"the pictures' font has no glyph for {len(missing)} character(s) ({shown}): "
                              "they are drawn as empty boxes (the page's tables show them)", stacklevel=2)
        return self._pictures

    def as_dict(self) -> dict:
        """Every number of the report as plain JSON-able values."""
        return {
            "model": self.model_name,
            "config": self.config,
            "text": self.text,
            "notes": self.notes,
            "tokens": self.tokens.as_dict(),
            "simple_tokens": self.simple.as_dict(),
            "embeddings": self.embeddings.as_dict(),
            "attention": {
                "shape": list(self.attention.shape),
                "layers_heads_query_key": _rounded(self.attention),
                "max_error_vs_model": self.attention_max_error,
                "focus": self.focus.as_dict(),
            },
            "next_token": self.next_token.as_dict(),
            "random_vs_trained": self.compare.as_dict(),
        }

    def to_json(self) -> str:
        """``as_dict()`` as a JSON document (strict JSON: a number that overflowed is null)."""
        data = self.as_dict()
        try:
            text = json.dumps(data, ensure_ascii=False, allow_nan=False)
        except ValueError:  # a perplexity of exp(loss > 709) is inf, which JSON cannot hold (jq refuses it)
            text = json.dumps(_finite_or_none(data), ensure_ascii=False, allow_nan=False)
        return text + "\n"

    def to_text(self) -> str:
        """A compact plain-text summary of every stage (what ``gptsmith explain`` prints)."""
        labels = self.tokens.pieces
        cfg = self.config
        lines = [
            f"{self.model_name}: {cfg['n_layers']} layers, {cfg['n_heads']} heads, emb_dim {cfg['emb_dim']}, "
            f"vocabulary {cfg['vocab_size']:,}, context {cfg['context_length']}"
        ]
        lines += [f"note: {note}" for note in self.notes]
        lines += text.tokens_text(self.tokens, self.simple)
        lines += text.embeddings_text(self.embeddings)
        lines += text.attention_text(self.focus, labels, self.attention_max_error, self.attention.shape)
        lines += text.next_token_text(self.next_token, labels)
        lines += text.compare_text(self.compare, labels)
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """One self-contained HTML page: pictures as embedded PNG data, no scripts, no network."""
        labels = self.tokens.pieces
        drawn = {p.name: p for p in self.pictures()}
        attention = [drawn["attention_grid"], drawn[f"attention_layer{self.layer}"], drawn["attention_focus"]]
        cfg = self.config
        facts = [
            f"model: {self.model_name} ({cfg['n_layers']} layers, {cfg['n_heads']} heads, emb_dim "
            f"{cfg['emb_dim']}, vocabulary {cfg['vocab_size']:,}, context {cfg['context_length']})",
            f"text: {without_controls(self.text, keep=WHITESPACE)}",
        ]
        sections = [
            ("1. Tokens", html.tokens_html(self.tokens, self.simple)),
            ("2. Embeddings", html.embeddings_html(self.embeddings, drawn["embeddings"])),
            ("3. Attention", html.attention_html(self.focus, labels, self.attention_max_error, attention)),
            ("4. Next token", html.next_token_html(self.next_token, labels, drawn["temperature"])),
            ("5. Random versus trained", html.compare_html(self.compare, drawn.get("random_vs_trained"))),
        ]
        return html.page_html("gptsmith explain", facts, self.notes, sections)

    def save_html(self, path: str | Path) -> Path:
        """Write ``to_html()`` to ``path`` atomically."""
        return atomic_write_text(path, self.to_html())

    def save_json(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path`` atomically."""
        return atomic_write_text(path, self.to_json())


def _finite_or_none(value: object) -> object:
    """``value`` with every float that is not finite (inf, nan) replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def _rounded(weights: torch.Tensor) -> list:
    return torch.round(weights, decimals=5).tolist()


def _check_options(model: GPTModel, top_k: int, max_tokens: int, layer: int) -> None:
    if not isinstance(model, GPTModel):
        raise GptsmithError(
            f"explain needs a gptsmith GPTModel, got {type(model).__name__} (load it with load_model)"
        )
    for name, value in (("top_k", top_k), ("max_tokens", max_tokens), ("layer", layer)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GptsmithError(f"{name} must be a whole number, got {value!r}")
    if not 1 <= top_k <= model.cfg.vocab_size:  # as generate's top_k
        raise GptsmithError(f"top_k must be at least 1 and at most the vocabulary size "
                            f"{model.cfg.vocab_size}, got {top_k}")
    if max_tokens < 1:
        raise GptsmithError(f"max_tokens must be at least 1, got {max_tokens}")
    n_layers = model.cfg.n_layers
    if not -n_layers <= layer < n_layers:
        raise GptsmithError(
            f"layer {layer} does not exist: the model has {n_layers} layers (0..{n_layers - 1})"
        )


def encode_text(tokenizer: Tokenizer, text: str, limit: int) -> tuple[list[int], list[str]]:
    """The ids of ``text``, cropped to the first ``limit`` (with a note saying so)."""
    ids = tokenizer.encode(text)
    if not ids:
        what = ("empty" if not text else "only white space, which the tokenizer drops" if not text.strip()
                else "only characters the tokenizer drops")
        raise GptsmithError(f'the text is {what}: give some text to explain, e.g. "Every effort moves you"')
    notes = []
    if len(ids) > limit:
        notes.append(
            f"the text has {len(ids)} tokens; only the first {limit} are explained "
            "(the model's context or max_tokens)"
        )
        ids = ids[:limit]
    return ids, notes


def check_focus(focus: int | None, n_tokens: int) -> int:
    """The position ``focus`` names (default: the last token; negative counts from the end)."""
    if focus is None:
        return n_tokens - 1
    if isinstance(focus, bool) or not isinstance(focus, numbers.Integral):  # True was position 1
        raise GptsmithError(f"focus must be a token position (a whole number), got {focus!r:.40}")
    focus = int(focus)  # (numpy's integers too)
    if not -n_tokens <= focus < n_tokens:
        raise GptsmithError(
            f"focus position {focus} is not in the text: it has {n_tokens} tokens "
            f"(use 0..{n_tokens - 1}, or -1 for the last)"
        )
    return focus % n_tokens


def _check_words(words: Sequence[str] | None, neighbours_of: str | None) -> None:
    """``words`` must be a list of strings (one string would be drawn letter by letter), and
    ``neighbours_of`` a string."""
    if isinstance(words, str):
        raise GptsmithError(f"words takes a list of words, not one string (wrap it: [{words!r}])")
    bad = next((w for w in words or () if not isinstance(w, str)), None)
    if bad is not None:
        raise GptsmithError(f"words must be strings, got {type(bad).__name__} {bad!r}")
    if neighbours_of is not None and not isinstance(neighbours_of, str):
        raise GptsmithError(f"neighbours_of must be a word (a str), got {type(neighbours_of).__name__}")


@torch.no_grad()
def explain(
    model: GPTModel,
    tokenizer: Tokenizer | str,
    text: str,
    *,
    words: Sequence[str] | None = None,
    neighbours_of: str | None = None,
    focus: int | None = None,
    layer: int = -1,
    top_k: int = 5,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    model_name: str = "model",
) -> ExplainReport:
    """Run ``text`` through ``model`` and collect the numbers of every stage.

    - ``words``: draw these words' embeddings instead of the text's tokens; ``neighbours_of``:
      the word whose nearest neighbours are listed (default: the first word, or the last token).
    - ``focus``: the position whose attention is broken down per head (default: the last).
    - ``layer``: the layer drawn with its tokens written out (default: the last).
    - ``top_k``: next-token candidates listed at each position.
    - ``max_tokens``: longer texts are cropped to their first tokens (also to the context), with a note.
    - ``seed``: the seed of the random model of stage 5.
    """
    _check_options(model, top_k, max_tokens, layer)
    check_seed(seed)
    tokenizer = as_tokenizer(tokenizer)  # a name ("gpt2") works too, as in generate
    if not isinstance(text, str):
        raise GptsmithError(f"text must be a str, got {type(text).__name__}")
    _check_words(words, neighbours_of)
    limit = min(max_tokens, model.cfg.context_length)
    id_list, notes = encode_text(tokenizer, text, limit)
    position = check_focus(focus, len(id_list))
    device = model.tok_emb.weight.device
    ids = torch.tensor(id_list, device=device)  # (n_tokens,)
    logits, capture = run_with_attention(model, ids.unsqueeze(0))  # logits (1, n_tokens, vocab)
    logits = logits[0]
    if not bool(torch.isfinite(logits).all()):  # broken weights: every number below would be nan
        raise NonFiniteError(non_finite_message(logits))
    weights = capture.weights.float().cpu()  # (n_layers, n_heads, n_tokens, n_tokens)
    return ExplainReport(
        model_name=model_name,
        config=model.cfg.to_dict(),
        text=tokenizer.decode(id_list) if notes else text,
        notes=notes,
        tokens=token_view(tokenizer, id_list),
        simple=simple_view(tokenizer.decode(id_list)),
        embeddings=embedding_view(model, tokenizer, id_list, words=words, neighbours_of=neighbours_of),
        attention=weights,
        attention_max_error=capture.max_error,
        layer=layer % model.cfg.n_layers,
        focus=focus_view(weights, position),
        next_token=next_token_view(logits, ids, tokenizer, k=top_k),
        compare=compare_view(model, ids, logits, seed=seed),
    )
