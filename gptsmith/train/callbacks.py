"""What the training loop reports: ``TrainCallbacks`` hooks (the CLI draws its progress from them)
and the ``TrainResult`` it returns."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


@dataclass
class TrainResult:
    step: int  # optimizer steps completed
    tokens_seen: int
    stopped: str  # "max_steps" | "interrupted"
    last_checkpoint: Path | None = None
    best_val_loss: float | None = None
    losses: list[float] = field(default_factory=list)  # train loss of each step run in this call
    evals: list[dict[str, Any]] = field(default_factory=list)


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
