"""Measuring a classifier: loss, accuracy and confusion matrix over a set, and the training plot."""

from __future__ import annotations

import unicodedata
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptsmith.finetune.class_model import EncodedTexts, GPTClassifier, iterate_batches


@dataclass
class EvalResult:
    """Mean loss, accuracy (0-1) and confusion matrix (rows: true class, columns: predicted)."""

    loss: float
    accuracy: float
    n: int
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "accuracy": self.accuracy, "n": self.n, "confusion": self.confusion}


@torch.no_grad()
def evaluate(model: GPTClassifier, data: EncodedTexts, *, batch_size: int = 32,
             autocast: AbstractContextManager | None = None) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on ``data`` (batches sorted by length)."""
    n_classes = model.n_classes
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    if not len(data):
        return EvalResult(float("nan"), float("nan"), 0, confusion.tolist())
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss = 0.0
    for ids, lengths, labels in iterate_batches(data, batch_size, shuffle=False):
        with autocast or nullcontext():
            logits = model(ids.to(device), lengths.to(device)).float()  # (batch, n_classes)
        labels = labels.to(device)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        predicted = logits.argmax(dim=-1)
        confusion += torch.bincount((labels * n_classes + predicted).cpu(),
                                    minlength=n_classes * n_classes).view(n_classes, n_classes)
    model.train(was_training)
    n = len(data)
    return EvalResult(total_loss / n, float(confusion.diag().sum()) / n, n, confusion.tolist())


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text: str) -> str:
    r"""``text`` on one line with no tab: a backslash, newline, carriage return or tab becomes
    ``\\``, ``\n``, ``\r``, ``\t``, and every other control character or Unicode line break
    (U+0085, U+2028, U+2029, ...) its ``\xNN`` or ``\uNNNN`` escape, as in a Python string.

    What ``gptsmith classify`` prints and the confusion matrix shows: a text or label that spans
    lines would otherwise split one output line in two (or a table row), and a tab would add a
    field; the escapes read back unambiguously.
    """
    if text.isprintable() and "\\" not in text:  # the common case: nothing to escape
        return text
    out = []
    for char in text:
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def display_width(text: str) -> int:
    """How many terminal columns ``text`` takes: 2 for each East Asian wide or full-width character
    (CJK, most emoji), 0 for combining marks and invisible format characters (a zero-width joiner),
    1 for the rest. ``len`` counts characters, which misaligns a table of such labels."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _pad(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` display columns (on the left when ``right``)."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def format_confusion(confusion: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as an aligned text table (rows: true label, columns: predicted).

    Columns are measured in display columns (``display_width``), so wide labels (CJK, emoji) and
    combining marks line up; a label's line breaks and tabs are shown escaped (``escape_text``).
    """
    names = [escape_text(str(label)) for label in labels]
    width = max([display_width(n) for n in names] + [len(str(v)) for row in confusion for v in row] + [4])
    corner = "true \\ predicted"
    first = max(len(corner), *(display_width(n) for n in names))
    lines = [_pad(corner, first) + "  " + "  ".join(_pad(n, width, right=True) for n in names)]
    for name, row in zip(names, confusion, strict=True):
        lines.append(_pad(name, first) + "  " + "  ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def plot_classifier_metrics(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss (left) and accuracy (right) of train and validation against steps, from metrics records.

    ``records`` are metrics.jsonl records; ``{"kind": "eval", "step", "train_loss", "val_loss",
    "train_accuracy", "val_accuracy"}`` ones are drawn. Writes ``path`` atomically and returns it
    (None when there is nothing to plot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptsmith.storage import atomic_path

    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        return None
    steps = [r["step"] for r in evals]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "accuracy", "accuracy")):
            ax.plot(steps, [r[f"train_{key}"] for r in evals], "o-", color="tab:blue", label=f"train {key}")
            if any(r.get(f"val_{key}") is not None for r in evals):
                ax.plot(steps, [r.get(f"val_{key}") for r in evals], "s--", color="tab:orange",
                        label=f"validation {key}")
            ax.set_xlabel("steps")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
