"""Measuring a classifier: loss, accuracy and confusion matrix over a set, and the training plot."""

from __future__ import annotations

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


def format_confusion(confusion: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as an aligned text table (rows: true label, columns: predicted)."""
    names = [str(label) for label in labels]
    width = max([len(n) for n in names] + [len(str(v)) for row in confusion for v in row] + [4])
    corner = "true \\ predicted"
    first = max(len(corner), *(len(n) for n in names))
    lines = [f"{corner:<{first}}  " + "  ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, confusion, strict=True):
        lines.append(f"{name:<{first}}  " + "  ".join(f"{v:>{width}}" for v in row))
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
