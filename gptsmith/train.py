"""Pretraining: loss and evaluation, ``TrainConfig`` and the training loop.

The loop knows nothing of the model's internals: it feeds (inputs, targets) windows of token
ids, minimises next-token cross-entropy, and reports through ``TrainCallbacks`` hooks (the CLI
draws its progress bar from them). Around that core:

- AdamW with weight decay on matrices only, linear warm-up then cosine decay (``schedule.py``);
- gradient accumulation up to a target batch in tokens, gradient clipping;
- bf16 autocast where it is faster, optional ``torch.compile``, seeds, device auto-selection;
- periodic evaluation, sample text, checkpoints with exact resume (``checkpointing.py``);
- data parallelism over processes started by ``torchrun`` (``distributed.py``);
- a clean stop on Ctrl-C / SIGTERM (a checkpoint is written first) and on a non-finite loss.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptsmith.device import autocast
from gptsmith.errors import DataError, NonFiniteError
from gptsmith.train_config import TrainConfig, flag  # noqa: F401 (part of this module's API)

# --- Loss and evaluation ------------------------------------------------------------------------


def calc_loss_batch(
    input_batch: torch.Tensor,
    target_batch: torch.Tensor,
    model: torch.nn.Module,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch (scalar tensor; its exp is the perplexity).

    ``input_batch`` and ``target_batch`` are (batch, n_tokens) token ids; the targets are the
    inputs shifted left by one. The logits (batch, n_tokens, vocab) are flattened to
    (batch·n_tokens, vocab) so every position is one classification over the vocabulary.
    """
    if device is not None:
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, n_tokens, vocab_size)
    return F.cross_entropy(logits.flatten(0, 1).float(), target_batch.flatten())


def calc_loss_loader(
    loader,
    model: torch.nn.Module,
    device: torch.device | str | None = None,
    num_batches: int | None = None,
) -> float:
    """Average ``calc_loss_batch`` over the first ``num_batches`` batches of ``loader`` (all if None).

    Call it in eval mode under ``torch.no_grad()`` (``evaluate`` does both).
    """
    total, count = 0.0, 0
    for i, (input_batch, target_batch) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
        count += 1
    if count == 0:
        raise DataError("the data loader yielded no batches (the split is shorter than one batch)")
    return total / count


def evaluate(
    model: torch.nn.Module,
    train_loader,
    val_loader,
    eval_iter: int | None = None,
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """(train loss, val loss) over ``eval_iter`` batches each, in eval mode under ``no_grad``.

    Eval mode turns dropout off, so the numbers measure the model rather than the noise; the
    model is put back in training mode afterwards if it was in it.
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        with torch.no_grad(), autocast(dev, amp_dtype):
            train_loss = calc_loss_loader(train_loader, model, device, eval_iter)
            val_loss = calc_loss_loader(val_loader, model, device, eval_iter)
    finally:
        model.train(was_training)
    return train_loss, val_loss


def outputs_are_finite(model: torch.nn.Module, batches, *, device: torch.device | str | None = None,
                       amp_dtype: torch.dtype | None = None) -> bool:
    """Whether the logits of the first batch of ``batches`` are all finite (eval mode, no dropout,
    no RNG drawn): weights can be finite and still give NaN, and such a model must not be saved."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        inputs, _ = next(iter(batches))
        with torch.no_grad(), autocast(dev, amp_dtype):
            return bool(torch.isfinite(model(inputs.to(dev))).all())
    finally:
        model.train(was_training)


def perplexity(loss: float) -> float:
    """exp(loss): the effective number of tokens the model hesitates between (inf on overflow)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite; training stopped before the bad update."""


class TrainCallbacks:
    """Hooks the loop calls (all optional; only rank 0 calls them). The CLI subclasses this."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first step: start_step, max_steps, tokens_per_step, device, dtype, ..."""

    def on_step(self, info: dict[str, Any]) -> None:
        """After each optimizer step: step, loss, lr, tokens_seen, tokens_per_s, grad_norm."""

    def on_eval(self, info: dict[str, Any]) -> None:
        """After each evaluation: step, tokens_seen, train_loss, val_loss, val_ppl, best."""

    def on_sample(self, step: int, text: str) -> None:
        """After each sample continuation of the fixed prompt."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint is on disk and ``latest`` points to it."""


@dataclass
class TrainResult:
    step: int  # optimizer steps completed
    tokens_seen: int
    stopped: str  # "max_steps" | "interrupted"
    last_checkpoint: Path | None = None
    best_val_loss: float | None = None
    losses: list[float] = field(default_factory=list)  # train loss of each step run in this call
    evals: list[dict[str, Any]] = field(default_factory=list)


def environment_info() -> dict[str, str]:
    """Versions recorded in run.json so a result can be traced to its software."""
    import gptsmith

    return {"gptsmith": gptsmith.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def prepare_splits(
    data: str,
    tokenizer: Any,
    val_fraction: float = 0.1,
    *,
    cache_dir: str | None = None,
    progress: Any = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Tokenize corpus ``data`` (cached as a token shard) and cut it into (train, val, info).

    The validation split is the last ``val_fraction`` of the corpus (snapped to a document
    boundary when there are several documents), so it is never trained on.
    """
    from gptsmith.data import prepare_corpus, resolve_corpus, split_tokens

    source = resolve_corpus(data)
    shard = prepare_corpus(source, tokenizer.name, out_dir=cache_dir, progress=progress, tokenizer=tokenizer)
    splits = split_tokens(shard, (1.0 - val_fraction, val_fraction))
    info = {"data": data, "source": shard.meta.get("source"), "n_tokens": len(shard.tokens),
            "n_train_tokens": len(splits["train"]), "n_val_tokens": len(splits["val"]),
            "checksum": shard.meta.get("checksum"), "tokenizer": tokenizer.name}
    return splits["train"], splits["val"], info


def train(model: torch.nn.Module, cfg: TrainConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
          **kwargs: Any):
    """Train ``model`` with ``cfg`` (a shortcut for ``Trainer(...).fit()``; see ``gptsmith.trainer``)."""
    from gptsmith.trainer import Trainer

    return Trainer(model, cfg, train_tokens, val_tokens, **kwargs).fit()
