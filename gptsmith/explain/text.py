"""The terminal view of each stage: a few compact lines per stage (``gptsmith explain`` prints them)."""

from __future__ import annotations

from collections.abc import Sequence

from gptsmith.explain.attention import FocusView
from gptsmith.explain.compare import CompareView
from gptsmith.explain.embeddings import EmbeddingView
from gptsmith.explain.next_token import Candidate, NextTokenView
from gptsmith.explain.tokens import TokenView

MAX_ROWS = 16  # per-position lists longer than this show their first and last rows


def _clip(line: str, width: int = 110) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _rows(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_ROWS:
        return lines
    half = MAX_ROWS // 2
    return [*lines[:half], f"   … {len(lines) - 2 * half} more (see --html or --json)", *lines[-half:]]


def tokens_text(tokens: TokenView, simple: TokenView) -> list[str]:
    return [
        f"1. Tokens: {len(tokens.ids)} {tokens.tokenizer} tokens (│ marks the boundaries, ␣ a space)",
        _clip("   " + tokens.line()),
        _clip("   ids: " + " ".join(map(str, tokens.ids))),
        f"   simple word tokenizer, {len(simple.ids)} pieces: {simple.tokenizer}",
        _clip("   " + simple.line()),
        _clip("   ids: " + " ".join(map(str, simple.ids))),
    ]


def embeddings_text(view: EmbeddingView) -> list[str]:
    n, dim = view.shapes["input_embeddings"]
    shares = " + ".join(f"{s:.0%}" for s in view.explained_variance)
    what = "words" if view.source == "words" else "distinct tokens"
    near = ", ".join(f"{nb.piece} {nb.cosine:.2f}" for nb in view.neighbours)
    return [
        f"2. Embeddings: token ({n}, {dim}) + position ({n}, {dim}) = input ({n}, {dim})",
        f"   2-D PCA of {len(view.labels)} {what} keeps {shares} of their variance",
        _clip(f"   nearest to {view.neighbours_of!r} by cosine: {near}"),
    ]


def attention_text(
    focus: FocusView, labels: Sequence[str], max_error: float, shape: Sequence[int]
) -> list[str]:
    n_layers, n_heads = shape[:2]
    lines = [
        f"3. Attention: {n_layers} layers x {n_heads} heads; the recomputed weights reproduce the model's "
        f"attention output within {max_error:.1e}",
        f"   token {focus.position} ({labels[focus.position]}) attends most to, per layer and head:",
    ]
    for layer, heads in enumerate(focus.top):
        best = " ".join(f"h{h}:{labels[top[0][0]]}({top[0][1]:.2f})" for h, top in enumerate(heads))
        lines.append(_clip(f"   L{layer} {best}"))
    return _rows(lines[:2]) + _rows(lines[2:])


def probability(p: float) -> str:
    """``0.42``, or ``3e-05`` for the tiny probabilities of an untrained model."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def _candidates(row: Sequence[Candidate]) -> str:
    return ", ".join(f"{c.piece} {probability(c.probability)}" for c in row)


def next_token_text(view: NextTokenView, labels: Sequence[str]) -> list[str]:
    lines = [f"4. Next token: the top {len(view.top_k[0])} after each position"]
    lines += _rows(
        [_clip(f"   {i:>3} {labels[i]:<12} → {_candidates(row)}") for i, row in enumerate(view.top_k)]
    )
    for t in view.temperatures:
        probs = view.last_probabilities[str(t)]
        best = ", ".join(
            f"{p} {probability(q)}" for p, q in list(zip(view.last_pieces, probs, strict=True))[:4]
        )
        lines.append(_clip(f"   after the text at T={t:g}: {best} (entropy {view.entropies[str(t)]:.2f})"))
    if view.loss is not None:
        lines.append(f"   cross-entropy of the text {view.loss:.3f}, perplexity {view.perplexity:.1f}")
    else:
        lines.append("   one token: nothing to predict, so no loss")
    return lines


def compare_text(view: CompareView, labels: Sequence[str]) -> list[str]:
    if view.random_loss is None or view.trained_loss is None:
        return ["5. Random versus trained: one token, nothing to score"]
    gains = sorted(
        range(len(view.trained_losses)), key=lambda i: view.trained_losses[i] - view.random_losses[i]
    )
    gains = [i for i in gains if view.trained_losses[i] < view.random_losses[i]][:5]  # improvements only
    learned = ", ".join(
        f"{labels[i + 1]} {view.random_losses[i]:.1f}→{view.trained_losses[i]:.1f}" for i in gains
    )
    return [
        f"5. Random versus trained: loss {view.random_loss:.3f} with random weights "
        f"(ln(vocab) = {view.uniform_loss:.3f}), {view.trained_loss:.3f} with this model's",
        _clip(f"   best learned tokens: {learned}" if gains else "   no token is predicted better than at "
              "random"),
    ]
