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

import contextlib
import math
import platform
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptsmith.config import from_dict, replace
from gptsmith.device import DTYPES, autocast, parse_device
from gptsmith.errors import ConfigError, DataError, GptsmithError
from gptsmith.time_budget import parse_duration


@dataclass
class TrainConfig:
    """Everything about *how* to train (the model's sizes live in ``GPTConfig``)."""

    data: str = "builtin"  # corpus name or path (see gptsmith.data.resolve_corpus)
    tokenizer: str = "gpt2"
    val_fraction: float = 0.1  # the last 10% of the corpus is the validation split
    batch_size: int = 8  # sequences per micro-batch per process
    context_length: int | None = None  # tokens per sequence; None = the model's context_length
    target_batch_tokens: int | None = None  # accumulate gradients until a step sees this many tokens
    max_steps: int = 300  # optimizer steps (with time_budget: sized by the trainer instead)
    time_budget: float | str | None = None  # seconds, or "90s"/"10m"/"1h": size max_steps to end within it
    lr: float = 2e-3  # peak learning rate
    min_lr: float | None = None  # floor of the cosine decay; None = lr / 10
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    eval_every: int = 50  # steps between evaluations (0 = only at the end)
    eval_batches: int = 10  # batches per split per evaluation
    checkpoint_every: int | None = None  # None = at every evaluation; 0 = only at the end
    keep_last: int = 2  # checkpoints kept (plus the best one)
    sample_every: int | None = None  # None = at every evaluation; 0 = never
    sample_prompt: str = "The"
    sample_tokens: int = 40
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40
    log_every: int = 1  # steps between train-loss records in metrics.jsonl
    seed: int = 123
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | bf16 | fp32 (bf16 = autocast; weights and optimizer stay fp32)
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in run.json

    def check(self) -> None:
        """Raise ``ConfigError`` for values that cannot work, naming the flag to change."""
        def number(name: str, value: Any, *, whole: bool = False) -> None:
            kinds = int if whole else int | float
            if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value):
                kind = "whole" if whole else "finite"
                raise ConfigError(f"{flag(name)} must be a {kind} number, got {value!r}")

        def positive(name: str, value: Any, *, whole: bool = False) -> None:
            number(name, value, whole=whole)
            if value <= 0:
                raise ConfigError(f"{flag(name)} must be > 0, got {value!r}")

        positive("lr", self.lr)
        for name in ("batch_size", "max_steps", "eval_batches", "keep_last"):
            positive(name, getattr(self, name), whole=True)
        for name in ("context_length", "target_batch_tokens"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), whole=True)
        if self.min_lr is not None:
            number("min_lr", self.min_lr)
            if not 0 <= self.min_lr <= self.lr:
                raise ConfigError(f"--min-lr must be between 0 and --lr ({self.lr}), got {self.min_lr}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "sample_every", "log_every"):
            value = getattr(self, name)
            if value is not None:
                number(name, value, whole=True)
                if value < 0:
                    raise ConfigError(f"{flag(name)} must be a whole number >= 0, got {value!r}")
        for name in ("weight_decay", "grad_clip"):
            number(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        number("val_fraction", self.val_fraction)
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        parse_device(self.device)  # a typo is an error here, before any work
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def intervals(self) -> tuple[int, int, int]:
        """(eval_every, checkpoint_every, sample_every) in steps, defaults resolved; sample 0 = never."""
        eval_every = self.eval_every or self.max_steps
        checkpoint_every = eval_every if self.checkpoint_every is None else self.checkpoint_every
        sample_every = eval_every if self.sample_every is None else self.sample_every
        return eval_every, checkpoint_every or self.max_steps, sample_every

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return from_dict(cls, data, source=source)

    def replace(self, **overrides: Any) -> TrainConfig:
        cfg = replace(self, **overrides)
        cfg.betas = tuple(cfg.betas)
        return cfg


def flag(field_name: str) -> str:
    """The command-line flag of a ``TrainConfig`` field (``keep_last`` -> ``--keep-last``)."""
    return "--" + field_name.replace("_", "-")


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


def perplexity(loss: float) -> float:
    """exp(loss): the effective number of tokens the model hesitates between (inf on overflow)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class NonFiniteLossError(GptsmithError):
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

    def on_schedule(self, info: dict[str, Any]) -> None:
        """With a time budget, once the schedule is sized: max_steps, warmup_steps, step_s... (BudgetPlan)."""


@contextlib.contextmanager
def stop_signals(trainer: Any) -> Iterator[None]:
    """On SIGINT/SIGTERM ``trainer.request_stop`` (the step ends, a checkpoint, stop); a 2nd Ctrl-C aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
