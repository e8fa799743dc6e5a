"""What ``gptsmith train`` prints while it runs: log lines on stdout (evaluations, samples), and
the progress (step, loss, lr, tokens seen, tokens/s) on stderr, as ``cli/progress.py`` shows it.
Only rank 0 prints under torchrun."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path


def rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def say(message: str) -> None:
    """Print one line above the progress bar (rank 0 only)."""
    from tqdm import tqdm

    if rank() == 0:
        tqdm.write(message, file=sys.stdout)


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an s unless it is one: ``1 step``, ``2 steps``, ``1,000 steps``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


class ProgressPrinter:
    """Shows the progress (step, loss, lr, tokens seen, tokens/s) and prints evals and samples."""

    # Implements every hook of gptsmith.trainer.TrainCallbacks (not imported here: keeps `--help` fast).

    def __init__(self, show_bar: bool = True) -> None:
        self.show_bar = show_bar
        self.bar = None
        self.said_steps: int | None = None  # the schedule's length as last printed

    def on_start(self, info: dict) -> None:
        from gptsmith.cli.progress import Progress

        say(f"model: {info['parameters'] / 1e6:.1f}M parameters on {info['device']} ({info['dtype']}, "
            f"{info['world_size']} process(es)); {info['tokens_per_step']:,} tokens per step "
            f"({info['accum_steps']} micro-batch(es))")
        if info.get("trim_vocab"):
            trim = info["trim_vocab"]
            say(f"head trained on the {trim['used_tokens']:,} tokens the training split uses; the other "
                f"{trim['vocab_size'] - trim['used_tokens']:,} share one row (--no-trim-vocab: all rows)")
        if self.show_bar and rank() == 0:
            self.bar = Progress(info["max_steps"], initial=info["start_step"], unit="step")

    def on_step(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(info["step"], f"loss {info['loss']:.3f} lr {info['lr']:.2e} tokens "
                            f"{info['tokens_seen']:,} {info['tokens_per_s']:,.0f} tok/s")

    def on_eval(self, info: dict) -> None:
        ppl = f"{info['val_ppl']:,.1f}" if math.isfinite(info["val_ppl"]) else "inf"
        say(f"step {info['step']:>5} | train loss {info['train_loss']:.3f} | "
            f"val loss {info['val_loss']:.3f} (ppl {ppl}) | tokens seen {info['tokens_seen']:,}")

    def on_sample(self, step: int, text: str) -> None:
        say(f"sample: {text!r}")

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def on_schedule(self, info: dict) -> None:
        if info.get("resized"):
            last = info["resized"][-1]
            said = self.said_steps
            if said is not None and 0.9 * said < info["max_steps"] < 1.1 * said:
                self._set_total(info["max_steps"])  # a small change after a printed size: the bar says it
                return
            if said is not None and info["max_steps"] > said:
                say(f"time budget: ahead of schedule at step {last['at_step']:,} (steps take "
                    f"{last['step_s']:.3f} s), so the schedule grows to {info['max_steps']:,} steps (the "
                    "decay ends at the new last step)")
            else:
                say(f"time budget: behind schedule at step {last['at_step']:,} (steps take "
                    f"{last['step_s']:.3f} s), so the schedule shrinks to {info['max_steps']:,} steps (the "
                    "decay ends at the new last step)")
        else:
            budget_s, spent_s = info["budget_s"], info.get("spent_s", 0.0)
            over = ""
            # Too short for even one more step, evaluation and checkpoint: the run takes them, late.
            if spent_s + info["step_s"] + info["eval_s"] + info["checkpoint_s"] > budget_s:
                over = (f"; the timed part alone took {spent_s:.1f} s, so the run ends over its budget "
                        "(raise --time-budget, or lower --eval-batches)")
            budget = f"{budget_s:,.0f}" if budget_s >= 10 else f"{budget_s:g}"  # 0.5 s must not read "0 s"
            say(f"time budget {budget} s: {plural(info['measured_steps'], 'step')} timed at "
                f"{info['step_s']:.3f} s, evaluation {info['eval_s']:.1f} s, sample "
                f"{info['sample_s']:.1f} s, checkpoint ~{info['checkpoint_s']:.1f} s -> schedule sized to "
                f"{plural(info['max_steps'], 'step')} (warm-up {info['warmup_steps']}, cosine decay to the "
                f"floor at the last step){over}")
        self.said_steps = info["max_steps"]
        self._set_total(info["max_steps"])

    def _set_total(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.set_total(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
