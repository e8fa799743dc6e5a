"""The loss curves of a training run (the trainer redraws loss.png at each evaluation).

Matplotlib runs with the non-interactive Agg backend: files are written, windows never opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Plot train and validation loss against steps, with tokens seen as a second x-axis.

    ``records`` are metrics.jsonl records: ``{"kind": "train", "step", "tokens_seen", "loss"}``
    per step and ``{"kind": "eval", "step", "tokens_seen", "train_loss", "val_loss"}`` per
    evaluation. Writes ``path`` atomically and returns it (None when there is nothing to plot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptsmith.storage import atomic_path

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        if train:
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", alpha=0.35,
                    linewidth=1, label="train loss (each step)")
        if evals:
            ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue",
                    label="train loss (eval)")
            ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s--", color="tab:orange",
                    label="validation loss")
        ax.set_xlabel("steps")
        ax.set_ylabel("cross-entropy loss")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        # A second x-axis for tokens seen: tokens grow linearly with steps, so map through that ratio.
        with_tokens = [r for r in train + evals if r.get("step")]
        if with_tokens:
            per_step = with_tokens[-1]["tokens_seen"] / with_tokens[-1]["step"]
            top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
            top.set_xlabel("tokens seen")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
