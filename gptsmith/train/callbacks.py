"""What the training loop reports: ``TrainCallbacks`` hooks (the CLI draws its progress from them)
and the ``TrainResult`` it returns."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
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
def stop_signals(trainer: Any, *, echo_s: float = 0.0) -> Iterator[None]:
    """On SIGINT/SIGTERM ``trainer.request_stop`` (the step ends, a checkpoint, stop); a 2nd Ctrl-C aborts.

    A SIGINT within ``echo_s`` seconds of the one that asked to stop is that same Ctrl-C, not a
    second: torchrun's agent forwards to its processes every signal it gets, so each process sees
    one Ctrl-C twice, the terminal's and the agent's, milliseconds apart (the trainer passes
    ``echo_s`` under torchrun; without it that echo aborted the run, its checkpoint unwritten).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop_signal_at: list[float] = []  # when the signal that asked to stop came

    def handler(signum, frame):
        now = time.monotonic()
        if trainer.stop_requested and signum == signal.SIGINT:
            if not stop_signal_at or now - stop_signal_at[0] > echo_s:
                raise KeyboardInterrupt
            return  # the same Ctrl-C, forwarded
        stop_signal_at[:] = [now]
        trainer.request_stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if echo_s > 0 and stop_signal_at:  # a tiny model can stop and save before the echo comes
            late = _late_echo_handler(stop_signal_at[0], echo_s, previous[signal.SIGINT])
            signal.signal(signal.SIGINT, late)


def _late_echo_handler(first_at: float, echo_s: float, old: Any) -> Any:
    """A SIGINT handler that drops the echo of the Ctrl-C that stopped the run (within ``echo_s``
    of ``first_at``) and otherwise does what ``old`` did, so that echo, arriving once the run has
    saved and left ``stop_signals``, does not turn a clean stop into "interrupted"."""
    old = getattr(old, "after_echo", old)  # an earlier run's: its echo window is over by now

    def handler(signum, frame):
        if time.monotonic() - first_at <= echo_s or old == signal.SIG_IGN:
            return
        if callable(old):
            old(signum, frame)
            return
        raise KeyboardInterrupt

    handler.after_echo = old  # what a later run's handler falls back to, never a chain of them
    return handler
