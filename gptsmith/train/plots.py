"""The loss curves of training runs: the trainer's loss.png, and ``gptsmith plot`` over several runs.

Matplotlib runs with the non-interactive Agg backend: files are written, windows never opened.
``plot_losses`` draws one run the way the trainer shows it (loss against steps, tokens seen on a
second axis) or, given several labelled runs or ``learning_rate=True``, one panel per x-axis:
loss against steps, loss against tokens seen (runs with different batch sizes line up there), and
the learning rate against steps, each run in its own colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gptsmith.errors import GptsmithError
from gptsmith.train.run_log import METRICS_FILE, read_metrics

Records = list[dict[str, Any]]


PICTURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}  # by the file name's suffix


def _split(records: Records) -> tuple[Records, Records]:
    return [r for r in records if r.get("kind") == "train"], [r for r in records if r.get("kind") == "eval"]


def _draw_losses(ax: Any, records: Records, x: str, colour: str, label: str | None) -> None:
    """One run's train loss (every logged step, faint), train loss at evaluations and validation loss."""
    train, evals = _split(records)
    prefix = f"{label}: " if label else ""
    if train:
        ax.plot(
            [r[x] for r in train],
            [r["loss"] for r in train],
            color=colour,
            alpha=0.35,
            linewidth=1,
            label=f"{prefix}train loss (each step)",
        )
    if evals:
        ax.plot(
            [r[x] for r in evals],
            [r["train_loss"] for r in evals],
            "o-",
            color=colour,
            markersize=4,
            label=f"{prefix}train loss (eval)",
        )
        ax.plot(
            [r[x] for r in evals],
            [r["val_loss"] for r in evals],
            "s--",
            color=colour,
            markersize=4,
            alpha=0.8 if label else 1.0,
            label=f"{prefix}validation loss",
        )


def plot_losses(
    records: Records | Mapping[str, Records], path: str | Path, *, learning_rate: bool = False
) -> Path | None:
    """Plot train and validation loss against steps and tokens seen; returns ``path`` (None: nothing to plot).

    ``records`` are one run's metrics.jsonl records, or ``{label: records}`` for several runs drawn
    over each other: ``{"kind": "train", "step", "tokens_seen", "loss", "lr"}`` per logged step and
    ``{"kind": "eval", "step", "tokens_seen", "train_loss", "val_loss"}`` per evaluation.
    ``learning_rate`` adds a panel of the learning rate. Writes ``path`` atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gptsmith.storage import atomic_path

    runs = dict(records) if isinstance(records, Mapping) else {"": list(records)}
    if not any(_split(r)[0] or _split(r)[1] for r in runs.values()):
        return None
    single = len(runs) == 1 and not learning_rate
    panels = ["step"] if single else ["step", "tokens_seen"] + (["lr"] if learning_rate else [])
    fig = Figure(figsize=(7, 4) if single else (8, 3.2 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    colours = [
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:gray",
        "tab:olive",
        "tab:cyan",
    ]
    for index, (label, run) in enumerate(runs.items()):
        colour = colours[index % len(colours)] if not single else "tab:blue"
        for ax, panel in zip(axes, panels, strict=True):
            if panel == "lr":
                train = [r for r in _split(run)[0] if "lr" in r]
                ax.plot(
                    [r["step"] for r in train], [r["lr"] for r in train], color=colour, label=label or None
                )
            else:
                _draw_losses(ax, run, panel, colour, label or None)
    if single:  # the trainer's picture: validation loss in its own colour, tokens seen on top
        lines = axes[0].get_lines()
        if lines and lines[-1].get_label() == "validation loss":
            lines[-1].set_color("tab:orange")
    names = {"step": "steps", "tokens_seen": "tokens seen", "lr": "steps"}
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_xlabel(names[panel])
        ax.set_ylabel("learning rate" if panel == "lr" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7 if len(runs) > 1 else 9)
    if single:
        _tokens_axis(axes[0], runs[""])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=PICTURE_FORMATS.get(path.suffix.lower(), "png"), dpi=100)
    return path


def _tokens_axis(ax: Any, records: Records) -> None:
    """A second x-axis for tokens seen: tokens grow linearly with steps, so map through that ratio."""
    with_tokens = [r for r in records if r.get("step") and r.get("tokens_seen")]
    if with_tokens:
        per_step = with_tokens[-1]["tokens_seen"] / with_tokens[-1]["step"]
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
        top.set_xlabel("tokens seen")


def plot_runs(
    run_dirs: Sequence[str | Path], path: str | Path, *, labels: Sequence[str] | None = None
) -> Path:
    """``gptsmith plot``: the curves of one or more run directories overlaid, with the learning rate.

    Each run is labelled with its directory name unless ``labels`` are given (one per run).
    """
    if Path(path).suffix.lower() not in PICTURE_FORMATS:
        raise GptsmithError(f"--out {path}: the picture's name must end in {', '.join(PICTURE_FORMATS)} "
                            "(the format follows it)")
    if labels is not None and len(labels) != len(run_dirs):
        raise GptsmithError(f"{len(labels)} labels for {len(run_dirs)} runs (give one --label per run)")
    runs: dict[str, Records] = {}
    for index, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        if not (run_dir / METRICS_FILE).is_file():
            what = ("does not exist" if not run_dir.exists() else "is a file" if run_dir.is_file()
                    else f"has no {METRICS_FILE}")
            raise GptsmithError(
                f"run directory {run_dir} {what} (pass a directory written by `gptsmith train`)"
            )
        label = labels[index] if labels is not None else (run_dir.resolve().name or str(run_dir))
        # A folder name may hold bytes that are not UTF-8 (lone surrogates here), which the
        # legend's font cannot draw: show them as U+FFFD, as a terminal would.
        label = label.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        while label in runs:
            label += "'"
        records = read_metrics(run_dir)
        if any(r.get("kind") in ("train", "eval") and "tokens_seen" not in r for r in records):
            raise GptsmithError(f"{run_dir / METRICS_FILE} is not a pretraining run's log (its records have "
                                "no tokens_seen): pass a directory written by `gptsmith train` (a `finetune "
                                "classify` output draws its own, training.png)")
        runs[label] = records
    written = plot_losses(runs, path, learning_rate=True)
    if written is None:
        raise GptsmithError(
            f"{METRICS_FILE} of {', '.join(map(str, run_dirs))} holds no records yet (nothing to plot)"
        )
    return written
